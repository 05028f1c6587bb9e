"""Image preprocessing shared by every feature extractor.

Pipeline (the order matters and is recorded in ``metrics.json``):
1. generated images ``[B, C, H, W]`` float in [-1, 1] -> uint8, rounded exactly as
   :func:`diffusionlab.utils.images.save_png` writes them (so a metric on saved PNGs gives the same number);
2. grayscale ``C = 1`` repeated to three channels for Inception;
3. resize to 299 x 299 with torch-fidelity's TensorFlow-1.x-compatible bilinear interpolation
   (``interpolate_bilinear_2d_like_tensorflow1x``, ``align_corners=False``, no antialiasing): the resize done
   inside the original TensorFlow FID graph and by torch-fidelity. (torchmetrics' own Inception defaults to
   ``antialias=True``, a slightly different resize; we follow torch-fidelity.)
4. scale to ``uint8 / 128 - 1``, the input range of the 2015-12-05 Inception graph.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from diffusionlab.utils.images import to_uint8

INCEPTION_SIZE = 299
PREPROCESS_VERSION = 1


def check_images(x: Tensor, name: str = "images") -> Tensor:
    """Raise a clear error unless ``x`` is a ``[B, C, H, W]`` tensor with C in (1, 3)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, C, H, W], got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have shape [B, C, H, W] with C in (1, 3), got {tuple(x.shape)}")
    return x


def quantize(x: Tensor) -> Tensor:
    """Float ``[B, C, H, W]`` in [-1, 1] (clamped) -> uint8 in [0, 255] on the CPU, as a saved PNG holds.

    uint8 input is returned unchanged (moved to the CPU): real data needs no quantisation.
    """
    check_images(x)
    if x.dtype == torch.uint8:
        return x.cpu()
    if not x.is_floating_point():
        raise TypeError(f"images must be float in [-1, 1] or uint8 in [0, 255], got dtype {x.dtype}")
    return to_uint8(x)


def to_rgb(x: Tensor) -> Tensor:
    """``[B, 1, H, W]`` -> ``[B, 3, H, W]`` by repeating the channel; 3-channel input is returned as is."""
    check_images(x)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def resize_tf1_bilinear(x: Tensor, size: int = INCEPTION_SIZE) -> Tensor:
    """Float ``[B, C, H, W]`` -> float ``[B, C, size, size]``, TensorFlow-1.x bilinear (torch-fidelity's)."""
    if x.shape[-2:] == (size, size):
        return x
    return interpolate_bilinear_2d_like_tensorflow1x(x, size=(size, size), align_corners=False)


def inception_input(x: Tensor) -> Tensor:
    """uint8 ``[B, 1|3, H, W]`` -> float32 ``[B, 3, 299, 299]`` in [-1, 0.9921875] (``uint8 / 128 - 1``)."""
    check_images(x)
    if x.dtype != torch.uint8:
        raise TypeError(f"inception_input expects uint8 images (use quantize first), got {x.dtype}")
    x = resize_tf1_bilinear(to_rgb(x).float(), INCEPTION_SIZE)
    return (x - 128) / 128


def describe_inception_preprocessing() -> dict:
    """What :func:`inception_input` does, for ``metrics.json`` and for the reference-statistics cache key."""
    return {
        "version": PREPROCESS_VERSION,
        "quantize": "uint8 = round((clamp(x, -1, 1) + 1) * 127.5), as saved PNGs",
        "grayscale": "repeated to 3 channels",
        "resize": f"bilinear to {INCEPTION_SIZE}x{INCEPTION_SIZE}, TensorFlow-1.x compatible "
        "(torch_fidelity interpolate_bilinear_2d_like_tensorflow1x, align_corners=False, no antialias)",
        "scale": "uint8 / 128 - 1",
    }
