"""Paired fidelity metrics of restored images against their ground truth: PSNR and SSIM (torchmetrics).

Both images of a pair are taken as 8-bit images (what a saved PNG holds, :func:`quantize`) mapped to [0, 1],
``data_range = 1``. PSNR is computed per image and averaged over images (``dim=(1, 2, 3)``); SSIM is
torchmetrics' default (Gaussian window 11, sigma 1.5, mean over images).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from diffusionlab.metrics.preprocess import quantize

IMPLEMENTATION = {
    "psnr": "torchmetrics PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)): per image, mean over images",
    "ssim": "torchmetrics StructuralSimilarityIndexMeasure(data_range=1.0): gaussian 11x11, sigma 1.5",
    "inputs": "8-bit images in [0, 1]",
}


def unit_images(x: Tensor) -> Tensor:
    """``[B, C, H, W]`` uint8 or floats in [-1, 1] -> float32 in [0, 1] on 8-bit levels."""
    return quantize(x).float() / 255.0


def psnr_ssim(pairs: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over all pairs ``(restored [B, C, H, W], truth [B, C, H, W])``, each uint8 or
    floats in [-1, 1]."""
    psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
    n = 0
    for restored, truth in pairs:
        if restored.shape != truth.shape:
            raise ValueError(f"restored images {list(restored.shape)} and ground truth {list(truth.shape)} differ")
        a, b = unit_images(restored.cpu()), unit_images(truth.cpu())
        psnr.update(a, b)
        ssim.update(a, b)
        n += len(a)
    if n == 0:
        raise ValueError("no image pairs to score")
    with torch.no_grad():
        return {"psnr": float(psnr.compute()), "ssim": float(ssim.compute())}
