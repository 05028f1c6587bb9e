"""Image helpers: [-1, 1] tensors to uint8, labelled grids, PNG and GIF writing (all atomic)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from diffusionlab.utils.io import atomic_path


def to_uint8(x: Tensor) -> Tensor:
    """``[B, C, H, W]`` floats in [-1, 1] -> uint8 in [0, 255], rounded exactly as a saved PNG would be."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def uint8_to_signed(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the inverse of :func:`to_uint8` on its outputs."""
    return images.float().div_(127.5).sub_(1.0)


def make_grid(images: Tensor, nrow: int | None = None, padding: int = 2, pad_value: int = 255) -> np.ndarray:
    """``[B, C, H, W]`` uint8 (C = 1 or 3) -> one ``[H', W', C]`` uint8 array, ``nrow`` images per row."""
    if images.dtype != torch.uint8:
        raise TypeError(f"make_grid expects uint8 images, got {images.dtype}; use to_uint8 first")
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    grid = np.full((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value, np.uint8)
    arr = images.permute(0, 2, 3, 1).numpy()
    for i in range(b):
        r, q = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


def to_pil(array: np.ndarray) -> Image.Image:
    """``[H, W, C]`` uint8 (C = 1 or 3) -> PIL image."""
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_png(array_or_image, path: str | Path, scale: int = 1) -> Path:
    """Write an ``[H, W, C]`` uint8 array (or PIL image) as PNG atomically, optionally upscaled (nearest)."""
    img = array_or_image if isinstance(array_or_image, Image.Image) else to_pil(array_or_image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def labelled_grid(images: Tensor, labels: Sequence[str] | None, nrow: int, scale: int = 2) -> Image.Image:
    """Grid of ``[B, C, H, W]`` images in [-1, 1] with one text label per row (written left of the row)."""
    grid = to_pil(make_grid(to_uint8(images), nrow=nrow)).convert("RGB")
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    if not labels:
        return grid
    margin = 8 * max(len(s) for s in labels) + 8
    out = Image.new("RGB", (grid.width + margin, grid.height), "white")
    out.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(out)
    rows = math.ceil(images.shape[0] / nrow)
    for r, text in enumerate(labels[:rows]):
        draw.text((4, int((r + 0.5) * grid.height / rows) - 5), text, fill="black")
    return out


def save_gif(frames: Sequence[np.ndarray], path: str | Path, duration_ms: int = 80, scale: int = 1) -> Path:
    """Write ``[H, W, C]`` uint8 frames as an animated GIF (last frame held longer), atomically."""
    imgs = [to_pil(f).convert("RGB") for f in frames]
    if scale > 1:
        imgs = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in imgs]
    durations = [duration_ms] * (len(imgs) - 1) + [max(1000, duration_ms)]
    with atomic_path(path) as tmp:
        imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:], duration=durations, loop=0)
    return Path(path)
