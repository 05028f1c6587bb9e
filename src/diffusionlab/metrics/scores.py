"""FID, KID, precision/recall and Inception Score from feature vectors, using the ecosystem's implementations.

- FID, KID: torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` with a pass-through
  "feature extractor" module, so they receive the features we extracted (and cached) ourselves; features are
  fed in float64. ``sync_on_compute=False``: in DDP the features are gathered before these functions run.
- precision / recall: torch-fidelity's ``prc_features_to_metric`` (k-NN manifolds, Kynkaanniemi et al. 2019).
- Inception Score: torch-fidelity's ``isc_features_to_metric`` on the Inception's unbiased logits.

All functions take CPU or GPU tensors ``[N, D]``; ``real`` and ``fake`` may have different N.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


class _Precomputed(nn.Module):
    """Identity "feature extractor" for torchmetrics: input is already ``[B, num_features]`` features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def _check_pair(real: Tensor, fake: Tensor, min_n: int = 2) -> None:
    for name, t in (("real", real), ("fake", fake)):
        if not isinstance(t, Tensor) or t.dim() != 2:
            raise ValueError(f"{name} features must be a [N, D] tensor, got {getattr(t, 'shape', type(t))}")
        if t.shape[0] < min_n:
            raise ValueError(f"{name} features: need at least {min_n} samples, got {t.shape[0]}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape[1]}, fake {fake.shape[1]}")


def fid(real: Tensor, fake: Tensor) -> float:
    """Frechet distance between Gaussians fitted to ``real [N, D]`` and ``fake [M, D]`` (torchmetrics)."""
    _check_pair(real, fake)
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), sync_on_compute=False)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid(
    real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float, int]:
    """Kernel Inception Distance (torchmetrics, cubic polynomial kernel): ``(mean, std, subset_size used)``.

    ``subset_size`` is clipped to the smaller of N and M; with ``subset_size = N = M`` every subset is the
    whole set and ``std = 0``. The subsets are drawn from the RNG seeded with ``seed`` (global RNG restored).
    """
    _check_pair(real, fake)
    size = min(subset_size, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():  # "will save all extracted features": that is the point here
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size, sync_on_compute=False
        )
    # float64: MMD^2 is a difference of large kernel sums; float32 loses ~1e-4 of it (measured vs torch-fidelity)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size


def precision_recall(real: Tensor, fake: Tensor, neighborhood: int = 3, batch_size: int = 1000) -> tuple[float, float]:
    """Improved precision and recall (torch-fidelity): share of fake in the real manifold, and vice versa."""
    _check_pair(real, fake, min_n=neighborhood + 1)
    out = prc_features_to_metric(
        fake.float(),
        real.float(),
        prc_neighborhood=neighborhood,
        prc_batch_size=batch_size,
        save_cpu_ram=True,
        verbose=False,
    )
    return float(out["precision"]), float(out["recall"])


def inception_score(logits: Tensor, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """Inception Score (torch-fidelity) from logits ``[N, K]``: ``(mean, std)`` over ``splits`` chunks."""
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be a [N, K] tensor, got {getattr(logits, 'shape', type(logits))}")
    if logits.shape[0] < splits:
        raise ValueError(f"need at least splits={splits} samples for the Inception Score, got {logits.shape[0]}")
    out = isc_features_to_metric(logits.cpu(), splits=splits, shuffle=True, rng_seed=seed)
    return float(out["inception_score_mean"]), float(out["inception_score_std"])


def class_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of samples whose argmax class equals the label they were generated for."""
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"got {logits.shape[0]} predictions for {labels.shape[0]} labels")
    return float((logits.argmax(dim=1).cpu() == labels.cpu()).float().mean())
