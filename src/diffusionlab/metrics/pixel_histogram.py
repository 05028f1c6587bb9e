"""Intensity histograms: a cheap statistic that FID hides, e.g. faint noise ("grain") left in a background.

A sample set whose every digit looks right can still put 16% of its pixels at uint8 1-31 where MNIST has 2%:
FID moves with it, but does not say so. :class:`PixelHistogram` is a feature extractor (same interface and
reference cache as Inception) whose feature per image is its 256-bin intensity histogram; the score is the
total-variation distance between the mean histograms of samples and reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusionlab.metrics.features import FeatureExtractor
from diffusionlab.metrics.preprocess import check_images

NUM_BINS = 256


class PixelHistogram(FeatureExtractor):
    """uint8 images ``[B, C, H, W]`` -> ``([B, 256] fraction of the image's values (all channels) at each
    intensity 0..255, None)``: each row sums to 1."""

    name = "pixel-histogram-256"
    source = "diffusionlab.metrics.pixel_histogram"
    num_features = NUM_BINS

    def preprocessing(self) -> dict:
        return {"input": "uint8 values as generated, all channels pooled", "bins": NUM_BINS}

    def forward(self, images: Tensor) -> tuple[Tensor, None]:
        check_images(images)
        flat = images.reshape(images.shape[0], -1).long()
        counts = torch.zeros(flat.shape[0], NUM_BINS, dtype=torch.float32, device=flat.device)
        counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
        return counts / flat.shape[1], None


def histogram_tv(real: Tensor, fake: Tensor) -> float:
    """Total-variation distance in [0, 1] between the mean intensity histograms of ``real [N, 256]`` and
    ``fake [M, 256]`` (rows from :class:`PixelHistogram`): the fraction of pixel mass that would have to
    change intensity for the two sets to have the same histogram. 0 = identical."""
    if real.shape[1:] != (NUM_BINS,) or fake.shape[1:] != (NUM_BINS,):
        raise ValueError(f"expected [N, {NUM_BINS}] histograms, got {tuple(real.shape)} and {tuple(fake.shape)}")
    return 0.5 * (real.double().mean(0) - fake.double().mean(0)).abs().sum().item()


def dark_fraction(hist: Tensor, low: int = 1, high: int = 31) -> float:
    """Mean fraction of pixels with intensity in ``[low, high]`` (uint8): faint background values."""
    return hist[:, low : high + 1].double().sum(1).mean().item()
