"""Evaluate generated samples against a held-out real split: FID, KID, precision/recall, IS, class accuracy,
intensity-histogram distance.

Library side of ``evaluate.py`` and of the training-time evaluation callback. Build an :class:`Evaluator` once
(it loads the feature networks), then call :meth:`Evaluator.evaluate` with any iterable of sample batches::

    ev = Evaluator("mnist:test", data_dir="../shared/datasets",
                   inception_weights="../shared/weights/inception-2015-12-05-pool3.torchscript.pt")
    metrics = ev.evaluate(batches, num_samples=10_000, protocol={"sampler": "ddim", "steps": 50, "seed": 0})

A batch is ``[B, C, H, W]`` float in [-1, 1] (or uint8), or ``(images, labels)`` for class-conditional
samples. Under DDP every rank passes its own share; features are gathered before any statistic.
FID is biased at small n: the reference subset has the same n as the samples by default, and n is recorded.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

import torch
import torch_fidelity
import torchmetrics
from torch import Tensor

from diffusionlab.metrics import distributed, scores
from diffusionlab.metrics.classifier import CLASSIFIER_DATASETS, load_classifier_extractor
from diffusionlab.metrics.datasets import load_split, parse_split
from diffusionlab.metrics.features import FeatureExtractor, FeatureSet, extract_features, load_inception
from diffusionlab.metrics.pixel_histogram import PixelHistogram, dark_fraction, histogram_tv
from diffusionlab.metrics.reference import Reference, reference_features, reference_images
from diffusionlab.utils.images import uint8_to_signed

_CLASSIFIER_CHOICES = ("auto", True, False)


class Evaluator:
    """Feature networks + settings for one reference split (e.g. ``'mnist:test'``).

    ``inception_weights``: None downloads the standard weights through torch-fidelity (online); a path loads
    a local file (:func:`~diffusionlab.metrics.features.load_inception`). ``extractor`` replaces Inception by
    any :class:`FeatureExtractor`. ``classifier``: ``'auto'`` uses the cached domain classifier of the
    reference dataset if there is one, ``True`` requires it, ``False`` skips it.
    """

    def __init__(
        self,
        reference: str,
        *,
        data_dir: str | os.PathLike,
        cache_dir: str | os.PathLike | None = None,
        inception_weights: str | os.PathLike | None = None,
        extractor: FeatureExtractor | None = None,
        classifier: bool | str = "auto",
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        prc_neighborhood: int = 3,
        is_splits: int = 10,
        reference_seed: int = 0,
        batch_size: int = 50,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> None:
        self.dataset, self.split = parse_split(reference)
        self.reference = f"{self.dataset}:{self.split}"
        if classifier not in _CLASSIFIER_CHOICES:
            raise ValueError(f"classifier must be one of {_CLASSIFIER_CHOICES}, got {classifier!r}")
        self.data_dir, self.cache_dir = data_dir, cache_dir
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.prc_neighborhood, self.is_splits = prc_neighborhood, is_splits
        self.reference_seed, self.batch_size, self.progress = reference_seed, batch_size, progress
        self.notes: list[str] = []
        self.extractor = extractor.to(device) if extractor is not None else load_inception(inception_weights, device)
        self.classifier_mode = classifier
        self.classifier, self.classifier_info = self._load_classifier(classifier, device)
        self.pixel_histogram = PixelHistogram().to(device)

    def _load_classifier(self, mode, device):
        if mode is False:
            return None, None
        if self.dataset not in CLASSIFIER_DATASETS:
            if mode is True:
                raise ValueError(f"no domain classifier for {self.dataset!r}; one exists for {CLASSIFIER_DATASETS}")
            return None, None
        try:
            return load_classifier_extractor(self.dataset, self.cache_dir, device, data_dir=self.data_dir)
        except FileNotFoundError as err:
            if mode is True:
                raise
            self.notes.append(f"domain classifier not available: {err}")
            return None, None

    @property
    def extractors(self) -> dict[str, FeatureExtractor]:
        out = {"inception": self.extractor}
        if self.classifier is not None:
            out["domain"] = self.classifier
        out["pixels"] = self.pixel_histogram
        return out

    def reference_features(self, n: int, offset: int = 0) -> dict[str, Reference]:
        """Reference features for every extractor (rank 0 computes and caches them first under DDP)."""

        def compute() -> dict[str, Reference]:
            return {
                name: reference_features(
                    self.reference,
                    ext,
                    n,
                    data_dir=self.data_dir,
                    cache_dir=self.cache_dir,
                    seed=self.reference_seed,
                    offset=offset,
                    batch_size=self.batch_size,
                    progress=self.progress,
                )
                for name, ext in self.extractors.items()
            }

        if distributed.rank() == 0:
            refs = compute()
            distributed.barrier()
        else:
            distributed.barrier()
            refs = compute()
        return refs

    def evaluate(
        self,
        samples: Iterable,
        *,
        num_samples: int | None = None,
        reference_n: int | None = None,
        protocol: dict | None = None,
    ) -> dict:
        """Metrics of the samples against the reference split.

        ``num_samples`` only sizes this rank's progress bar. ``reference_n`` defaults to the number of samples
        (all ranks together), capped at the split size. ``protocol`` (sampler, steps, guidance, seed, ...) is
        merged into the returned ``protocol`` dict.
        """
        sets, labels = extract_features(
            samples, self.extractors, total=num_samples, progress=self.progress, desc="sample features"
        )
        sets = {
            k: FeatureSet(distributed.gather_cat(v.features), distributed.gather_cat(v.logits)) for k, v in sets.items()
        }
        labels = distributed.gather_cat(labels)
        return self.score(sets, labels, reference_n=reference_n, protocol=protocol)

    def score(
        self,
        fake: dict[str, FeatureSet],
        labels: Tensor | None = None,
        *,
        reference_n: int | None = None,
        reference_offset: int = 0,
        protocol: dict | None = None,
    ) -> dict:
        """Metrics from already extracted (and gathered) features ``{'inception': ..., 'domain': ...}``."""
        n = len(fake["inception"])
        split_size = len(load_split(self.dataset, self.split, self.data_dir, self.cache_dir)[0]) - reference_offset
        n_ref = min(n, split_size) if reference_n is None else reference_n
        refs = self.reference_features(n_ref, reference_offset)
        notes = list(self.notes)
        out, kid_size = self._scores(fake["inception"], refs["inception"].features.features, prefix="")
        out["inception_score"] = out["inception_score_std"] = None
        if fake["inception"].logits is not None:
            out["inception_score"], out["inception_score_std"] = scores.inception_score(
                fake["inception"].logits, splits=min(self.is_splits, n)
            )
        else:
            notes.append(
                f"inception_score: absent, the feature extractor ({self.extractor.source}) gives no classifier "
                "logits (the pool3-only FID port); the standard weights (inception_weights=null, downloaded by "
                "torch-fidelity) or a TorchScript file whose forward returns (features, logits) give it"
            )
        out["class_accuracy"] = None
        out["domain_fid"] = out["domain_kid_mean"] = out["domain_kid_std"] = None
        if "domain" in fake:
            d, _ = self._scores(fake["domain"], refs["domain"].features.features, prefix="domain_", full=False)
            out.update(d)
        if labels is None:
            notes.append(
                "class_accuracy: absent, the samples carry no labels (an unconditional model, or real images "
                "of another dataset than the classifier's)"
            )
        elif "domain" in fake:
            out["class_accuracy"] = scores.class_accuracy(fake["domain"].logits, labels)
        elif self.classifier_mode is not False:
            notes.append(f"class_accuracy: no domain classifier for {self.dataset!r} (see make classifier)")
        else:
            notes.append("class_accuracy: off (classifier=false)")
        out.update(_pixel_scores(fake.get("pixels"), refs.get("pixels")))
        for note in notes:
            warnings.warn(note, stacklevel=2)
        out["num_samples"] = n
        out["protocol"] = self._protocol(n, refs, kid_size, notes, protocol)
        return out

    def _scores(self, fake: FeatureSet, real: Tensor, prefix: str, full: bool = True) -> tuple[dict, int]:
        out = {f"{prefix}fid": scores.fid(real, fake.features)}
        kid_mean, kid_std, kid_size = scores.kid(
            real, fake.features, subsets=self.kid_subsets, subset_size=self.kid_subset_size, seed=0
        )
        out[f"{prefix}kid_mean"], out[f"{prefix}kid_std"] = kid_mean, kid_std
        if full:
            out["precision"], out["recall"] = scores.precision_recall(real, fake.features, self.prc_neighborhood)
        return out, kid_size

    def _protocol(self, n: int, refs: dict[str, Reference], kid_size: int, notes: list[str], extra) -> dict:
        meta = refs["inception"].meta
        proto = {
            "num_samples": n,
            "reference": {
                "split": self.reference,
                "n": meta["n"],
                "seed": meta["seed"],
                "offset": meta["offset"],
                "data_sha256": meta["data_sha256"],
            },
            "feature_extractor": self.extractor.info(),
            "kid": {"subsets": self.kid_subsets, "subset_size": kid_size, "kernel": "poly3"},
            "precision_recall": {"neighborhood": self.prc_neighborhood},
            "inception_score": {"splits": min(self.is_splits, n)} if self.extractor.has_logits else None,
            "classifier": None,
            "implementations": {
                "fid": "torchmetrics FrechetInceptionDistance (float64)",
                "kid": "torchmetrics KernelInceptionDistance",
                "precision_recall": "torch_fidelity prc_features_to_metric",
                "inception_score": "torch_fidelity isc_features_to_metric",
                "pixel_histogram_tv": "diffusionlab: 0.5 * L1 between mean 256-bin uint8 intensity histograms",
                "faint_pixel_fraction": "diffusionlab: mean fraction of pixel values in uint8 1-31",
            },
            "versions": {
                "torch": torch.__version__,
                "torchmetrics": torchmetrics.__version__,
                "torch_fidelity": torch_fidelity.__version__,
            },
            "world_size": distributed.world_size(),
            "notes": notes,
        }
        if self.classifier is not None:
            proto["classifier"] = {
                "name": self.classifier.name,
                "sha256": self.classifier.sha256,
                "test_accuracy": self.classifier_info.get("test_accuracy"),
                "feature_dim": self.classifier.num_features,
            }
        proto.update(extra or {})
        return proto


def _pixel_scores(fake: FeatureSet | None, ref: Reference | None) -> dict:
    """Intensity-histogram scores (:mod:`.pixel_histogram`); None where the pixel histograms were not taken."""
    if fake is None or ref is None:
        return dict.fromkeys(("pixel_histogram_tv", "faint_pixel_fraction", "reference_faint_pixel_fraction"))
    real = ref.features.features
    return {
        "pixel_histogram_tv": histogram_tv(real, fake.features),
        "faint_pixel_fraction": dark_fraction(fake.features),
        "reference_faint_pixel_fraction": dark_fraction(real),
    }


def evaluate_samples(
    samples: Iterable,
    reference: str,
    *,
    num_samples: int | None = None,
    reference_n: int | None = None,
    protocol: dict | None = None,
    **evaluator_kw,
) -> dict:
    """One-shot :meth:`Evaluator.evaluate` (builds the :class:`Evaluator` from ``evaluator_kw``)."""
    ev = Evaluator(reference, **evaluator_kw)
    return ev.evaluate(samples, num_samples=num_samples, reference_n=reference_n, protocol=protocol)


def compare_datasets(a: str, b: str, n: int, noise_std: float = 0.0, noise_seed: int = 0, **evaluator_kw) -> dict:
    """Metrics of ``n`` real images of split ``a`` against ``n`` of split ``b``: the floor for a model at n.

    With ``a == b`` the two subsets are disjoint (b starts where a ends). The images of ``a`` carry their
    labels, so ``class_accuracy`` is the classifier's accuracy on them. ``noise_std > 0`` adds Gaussian noise
    of that std (data space [-1, 1], seeded by ``noise_seed``; then clamped and quantised to uint8 like
    samples) to a's images before their features are taken: what a residual noise no eye sees costs in FID.
    """
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0 (a standard deviation in data space [-1, 1]), got {noise_std}")
    ev = evaluator_kw.pop("evaluator", None) or Evaluator(b, **evaluator_kw)
    dataset_a, split_a = parse_split(a)
    offset = n if (dataset_a, split_a) == (ev.dataset, ev.split) else 0
    protocol = {"mode": "data", "a": a, "b": b}
    if noise_std > 0:
        protocol["noise"] = {"std": noise_std, "seed": noise_seed}
        sets, labels = _noisy_split_features(f"{dataset_a}:{split_a}", n, noise_std, noise_seed, ev)
    else:
        sets, labels = {}, None
        for name, ext in ev.extractors.items():
            ref = reference_features(
                f"{dataset_a}:{split_a}",
                ext,
                n,
                data_dir=ev.data_dir,
                cache_dir=ev.cache_dir,
                seed=ev.reference_seed,
                batch_size=ev.batch_size,
                progress=ev.progress,
            )
            sets[name], labels = ref.features, ref.labels
    if dataset_a != ev.dataset:  # b's classifier cannot judge a's labels
        labels = None
    return ev.score(sets, labels, reference_n=n, reference_offset=offset, protocol=protocol)


def _noisy_split_features(
    split: str, n: int, std: float, seed: int, ev: Evaluator
) -> tuple[dict[str, FeatureSet], Tensor]:
    """Features of the ``n`` images of ``split`` that :func:`reference_features` takes, with noise ``std`` added."""
    images, labels = reference_images(split, n, data_dir=ev.data_dir, cache_dir=ev.cache_dir, seed=ev.reference_seed)
    gen = torch.Generator().manual_seed(seed)

    def batches():
        for i in range(0, n, ev.batch_size):
            x = uint8_to_signed(images[i : i + ev.batch_size])
            yield (x + std * torch.randn(x.shape, generator=gen)).clamp(-1, 1), labels[i : i + ev.batch_size]

    sets, _ = extract_features(batches(), ev.extractors, total=n, progress=ev.progress, desc=f"{split} + noise")
    return sets, labels
