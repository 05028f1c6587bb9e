"""Sample-quality metrics: FID, KID, precision/recall, Inception Score, reference features, domain classifier;
paired PSNR / SSIM for super-resolution.

Entry points: :class:`Evaluator` / :func:`evaluate_samples` (generated samples vs a real split) and
:func:`compare_datasets` (real vs real: the floor at a given n).
"""

from diffusionlab.metrics.classifier import (
    ClassifierFeatures,
    DomainClassifier,
    classifier_path,
    load_classifier,
    load_classifier_extractor,
    train_classifier,
)
from diffusionlab.metrics.datasets import load_split, parse_split
from diffusionlab.metrics.evaluate import Evaluator, compare_datasets, evaluate_samples
from diffusionlab.metrics.features import (
    FeatureExtractor,
    FeatureSet,
    FoldedInception,
    TorchFidelityInception,
    TorchScriptInception,
    extract_features,
    load_inception,
)
from diffusionlab.metrics.fidelity import psnr_ssim
from diffusionlab.metrics.preprocess import inception_input, quantize
from diffusionlab.metrics.reference import Reference, reference_features, reference_key
from diffusionlab.metrics.scores import class_accuracy, fid, inception_score, kid, precision_recall

__all__ = [
    "ClassifierFeatures",
    "DomainClassifier",
    "Evaluator",
    "FeatureExtractor",
    "FeatureSet",
    "Reference",
    "TorchFidelityInception",
    "FoldedInception",
    "TorchScriptInception",
    "class_accuracy",
    "classifier_path",
    "compare_datasets",
    "evaluate_samples",
    "extract_features",
    "fid",
    "inception_score",
    "inception_input",
    "kid",
    "load_classifier",
    "load_classifier_extractor",
    "load_inception",
    "load_split",
    "parse_split",
    "precision_recall",
    "psnr_ssim",
    "quantize",
    "reference_features",
    "reference_key",
    "train_classifier",
]
