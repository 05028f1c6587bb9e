"""Batch-friendly image transforms on uint8 tensors, producing floats in [-1, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def fit_images(images: Tensor, image_size: int, channels: int) -> Tensor:
    """Bring uint8 ``[N, C, H, W]`` to ``[N, channels, image_size, image_size]`` (still uint8).

    Pads symmetrically with black when the target is larger by an even margin (MNIST 28 -> 32, as in
    the DDPM code), else resizes bilinearly; converts grayscale <-> RGB by repeating / averaging.
    """
    n, c, h, w = images.shape
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    if (h, w) != (image_size, image_size):
        dh, dw = image_size - h, image_size - w
        if dh >= 0 and dw >= 0 and dh % 2 == 0 and dw % 2 == 0:
            images = F.pad(images, (dw // 2, dw // 2, dh // 2, dh // 2))
        else:
            resized = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear", antialias=True)
            images = resized.round().clamp(0, 255).to(torch.uint8)
    if channels != c:
        if c == 1 and channels == 3:
            images = images.expand(-1, 3, -1, -1)
        elif c == 3 and channels == 1:
            images = images.float().mean(1, keepdim=True).round().to(torch.uint8)
        else:
            raise ValueError(f"cannot convert {c}-channel images to {channels} channels; use 1 or 3")
    return images.contiguous()


NATIVE_SIZE = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32}


def to_native_size(images: Tensor, dataset: str) -> Tensor:
    """Undo :func:`fit_images`' size change on ``[N, C, H, W]`` images (any dtype): center-crop what padding
    added (MNIST 32 -> 28), else resize back, so samples are compared with the real split at its own size."""
    size = NATIVE_SIZE.get(dataset)
    h = images.shape[-1]
    if size is None or h == size:
        return images
    margin = h - size
    if margin > 0 and margin % 2 == 0:
        m = margin // 2
        return images[..., m : m + size, m : m + size]
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True).to(images.dtype)
