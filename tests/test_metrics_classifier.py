"""Domain classifier: trained through its CLI on a subset of real MNIST, cached, reloaded, used for a domain FID.

The full-budget accuracies (>= 99% MNIST, >= 90% Fashion-MNIST) come from `make classifier`; here a short
budget (6000 images, 2 epochs) must still reach 95% on the first 2000 MNIST test images.
"""

from __future__ import annotations

import pytest
import torch

from diffusionlab.cli.classifier import main
from diffusionlab.metrics import scores
from diffusionlab.metrics.classifier import (
    accuracy,
    classifier_path,
    load_classifier,
    load_classifier_extractor,
)
from diffusionlab.metrics.datasets import load_split
from diffusionlab.metrics.reference import reference_features


def ensure_mnist_classifier(data_dir, cache_dir) -> None:
    """Train the short-budget MNIST classifier into ``cache_dir`` through the CLI unless it is there."""
    if not classifier_path("mnist", cache_dir).is_file():
        argv = ["--dataset", "mnist", "--data-dir", str(data_dir), "--cache-dir", str(cache_dir)]
        code = main([*argv, "--epochs", "2", "--max-train", "6000", "--max-test", "2000", "--min-accuracy", "0.95"])
        assert code == 0, "the short-budget classifier did not reach 95% test accuracy"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "metrics-cache"  # shared by the metrics test modules


@pytest.fixture(scope="module")
def mnist_classifier(data_dir, cache_dir):
    ensure_mnist_classifier(data_dir, cache_dir)
    return load_classifier("mnist", cache_dir)


def test_cli_trained_classifier_reaches_95_percent_and_reloads_exactly(mnist_classifier, data_dir, cache_dir):
    model, info = mnist_classifier
    assert info["train_size"] == 6000 and info["test_size"] == 2000
    assert info["test_accuracy"] >= 0.95
    images, labels = load_split("mnist", "test", data_dir)
    images, labels = images[:2000], labels[:2000]
    assert accuracy(model, images, labels) == info["test_accuracy"]  # the reloaded weights are the trained ones
    assert len(info["sha256"]) == 64
    # the CLI finds the cached checkpoint and does not retrain
    before = classifier_path("mnist", cache_dir).stat().st_mtime_ns
    argv = ["--dataset", "mnist", "--data-dir", str(data_dir), "--cache-dir", str(cache_dir)]
    assert main([*argv, "--min-accuracy", "0.95"]) == 0
    assert classifier_path("mnist", cache_dir).stat().st_mtime_ns == before
    assert main([*argv, "--min-accuracy", "0.9999"]) == 1  # below the asked bar: failure exit code


def test_domain_fid_separates_datasets(mnist_classifier, data_dir, cache_dir):
    ext, _ = load_classifier_extractor("mnist", cache_dir)
    kw = {"data_dir": data_dir, "cache_dir": cache_dir, "progress": False, "batch_size": 500}
    train = reference_features("mnist:train", ext, 500, **kw)
    test = reference_features("mnist:test", ext, 500, **kw)
    fashion = reference_features("fashion_mnist:test", ext, 500, **kw)
    assert train.features.features.shape == (500, 128) and train.features.logits.shape == (500, 10)
    same, cross = (
        scores.fid(train.features.features, test.features.features),
        scores.fid(test.features.features, fashion.features.features),
    )
    assert 0 < same < 0.1 * cross, (same, cross)
    assert scores.class_accuracy(test.features.logits, test.labels) >= 0.95


def test_missing_or_unsupported_classifier_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m diffusionlab.cli.classifier --dataset fashion_mnist"):
        load_classifier("fashion-mnist", tmp_path)
    with pytest.raises(ValueError, match="no domain classifier for dataset 'cifar10'"):
        classifier_path("cifar10", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        classifier_path("svhn", tmp_path)


def test_classifier_takes_only_28x28_grayscale(mnist_classifier, cache_dir):
    ext, _ = load_classifier_extractor("mnist", cache_dir)
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\]"):
        ext(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        ext(torch.zeros(2, 1, 28, 28))


def test_unsaved_classifiers_get_distinct_cache_keys():
    """ClassifierFeatures without a file checksum hashes its weights (incl. 0-d int buffers), so reference
    features of two different unsaved classifiers are never shared."""
    import torch

    from diffusionlab.metrics.classifier import ClassifierFeatures, DomainClassifier

    torch.manual_seed(0)
    a, b = DomainClassifier(), DomainClassifier()
    ka, kb = ClassifierFeatures(a, "mnist").info()["sha256"], ClassifierFeatures(b, "mnist").info()["sha256"]
    assert ka != kb and len(ka) == 64
    assert ClassifierFeatures(a, "mnist").info()["sha256"] == ka  # same weights, same key
