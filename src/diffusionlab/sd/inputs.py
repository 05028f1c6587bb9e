"""Pipeline inputs: images and masks from paths, PIL images, arrays or tensors, their sizes and batches.

Images are ``[B, 3, H, W]`` float32 in [0, 1]; masks ``[B, 1, H, W]`` in {0, 1}, 1 = repaint.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def load_image(image, mode: str = "RGB") -> Tensor:
    """A path, PIL image, uint8 array or float tensor in [0, 1] -> ``[B, C, H, W]`` float32 in [0, 1]."""
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"image {str(path)!r} does not exist")
        with Image.open(path) as im:
            image = im.convert(mode)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert(mode))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 [H, W(, C)], got {image.dtype}")
        arr = image[..., None] if image.ndim == 2 else image
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0
    if not isinstance(image, Tensor):
        raise TypeError(f"expected an image path, PIL image, uint8 array or tensor, got {type(image).__name__}")
    image = image.float()
    while image.ndim < 4:
        image = image.unsqueeze(0)
    if image.min() < 0 or image.max() > 1:
        raise ValueError(f"image tensors must hold values in [0, 1], got [{image.min():.3g}, {image.max():.3g}]")
    return image


def load_mask(mask, size: tuple[int, int]) -> Tensor:
    """A mask in any :func:`load_image` form (one channel used) -> ``[B, 1, H, W]`` in {0, 1}, thresholded
    at 0.5 (white = repaint). ``size``: the image's ``(H, W)``, which the mask must have."""
    m = load_image(mask, mode="L")[:, :1]
    if tuple(m.shape[-2:]) != tuple(size):
        raise ValueError(f"mask size {tuple(m.shape[-2:])} differs from image size {tuple(size)}")
    return (m >= 0.5).float()


def check_size(height: int, width: int, factor: int = 8) -> None:
    """Both sides must be positive multiples of the VAE's downsampling ``factor``."""
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % factor:
            lower = max(factor, (v // factor) * factor) if isinstance(v, int) and v > 0 else 512
            raise ValueError(
                f"{name} must be a positive multiple of {factor} (the VAE works on {factor}x{factor} "
                f"patches), got {v!r}; for example {lower} or {lower + factor}"
            )


def match_batch(t: Tensor, batch: int, what: str) -> Tensor:
    """``t`` with batch 1 (expanded) or ``batch`` -> batch ``batch``; ``what`` names it in the error."""
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    raise ValueError(f"{what} has batch {t.shape[0]}; give 1 or {batch} (prompts x n)")
