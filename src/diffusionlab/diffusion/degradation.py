"""The super-resolution degradation: high-resolution images -> their low-resolution inputs, and back up by bicubic.

SR3 (Saharia et al. 2021) trains on pairs made from high-resolution images alone: the low-resolution image is
the high-resolution one downscaled with an antialiased bicubic filter (PIL's ``Image.resize(BICUBIC)``, which
``F.interpolate(..., antialias=True)`` reproduces), rounded to 8-bit levels as a PNG would hold it, and the
network sees it bicubic-upsampled to the full size, concatenated to ``x_t``. Everything here is deterministic.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _check(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim != 4:
        raise ValueError(
            f"{what} must be a floating-point tensor [B, C, H, W] in [-1, 1], got "
            f"{getattr(x, 'dtype', type(x).__name__)} {list(getattr(x, 'shape', []))}"
        )


def _resize(x: Tensor, size: int, antialias: bool) -> Tensor:
    out = F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=antialias)
    return out.clamp(-1.0, 1.0)


def quantize_signed(x: Tensor) -> Tensor:
    """Round images in [-1, 1] to the 256 levels of an 8-bit image (what saving and reading a PNG gives)."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0


def downscale(x: Tensor, size: int, quantize: bool = True) -> Tensor:
    """High-resolution ``x [B, C, H, H]`` in [-1, 1] -> low-resolution ``[B, C, size, size]`` in [-1, 1].

    Antialiased bicubic (PIL's bicubic resize), clamped to [-1, 1], then (``quantize``) rounded to 8-bit
    levels, so training inputs look like the PNGs a user gives ``sample.py``.
    """
    _check(x, "the high-resolution images")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size < x.shape[-1]:
        raise ValueError(
            f"low-resolution size must be an integer in [1, {x.shape[-1]}) for {x.shape[-1]}px images, got {size!r}"
        )
    low = _resize(x, size, antialias=True)
    return quantize_signed(low) if quantize else low


def upsample(low: Tensor, size: int) -> Tensor:
    """Low-resolution ``[B, C, h, h]`` in [-1, 1] -> bicubic ``[B, C, size, size]`` clamped to [-1, 1]: the
    conditioning image of the network and the bicubic baseline."""
    _check(low, "the low-resolution images")
    if not isinstance(size, int) or isinstance(size, bool) or size < low.shape[-1]:
        raise ValueError(f"upsampled size must be an integer >= {low.shape[-1]}, got {size!r}")
    return _resize(low, size, antialias=False)


def sr_condition(x: Tensor, low_res_size: int) -> Tensor:
    """The conditioning image of a super-resolution model trained on ``x [B, C, H, H]``: ``x`` downscaled to
    ``low_res_size`` and upsampled back to ``H`` (``[B, C, H, H]`` in [-1, 1])."""
    return upsample(downscale(x, low_res_size), x.shape[-1])
