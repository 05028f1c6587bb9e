"""Validation of a denoising network's inputs ``(x_t, t, y, cond)``, shared by every net in this package.

The checks run eagerly and are skipped while ``torch.compile`` traces, so compiled graphs have no breaks.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def check_image(x: Tensor, in_channels: int) -> None:
    """``x`` must be a floating ``[B, in_channels, H, W]`` tensor, else ``ValueError``/``TypeError``."""
    if _tracing():
        return
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(
            f"x_t must be a floating-point tensor [B, C, H, W], got {type(x).__name__} {getattr(x, 'dtype', '')}"
        )
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"x_t must have shape [B, {in_channels}, H, W], got {list(x.shape)}")


def prepare_timesteps(t: Tensor | int | float, batch: int, device: torch.device) -> Tensor:
    """Return timesteps as a ``[batch]`` tensor on ``device`` (long or float kept as given).

    Accepts a number, a 0-d tensor or a ``[1]`` tensor (broadcast to the batch) or a ``[batch]`` tensor.
    """
    if not isinstance(t, Tensor):
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise TypeError(f"timesteps must be a tensor or a number, got {type(t).__name__}")
        t = torch.tensor(t, device=device)
    if not _tracing():
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"timesteps must be an integer or floating tensor, got dtype {t.dtype}")
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
            raise ValueError(f"timesteps must have shape [B]={[batch]} (or be a scalar), got {list(t.shape)}")
    return t.to(device).reshape(-1).expand(batch)


def prepare_labels(y: Tensor | None, batch: int, num_classes: int | None, device: torch.device) -> Tensor | None:
    """Return class labels as a ``[batch]`` long tensor with values in ``[0, num_classes]``.

    ``num_classes`` is the null class (classifier-free guidance); ``y=None`` means the null class for
    every sample. For an unconditional net (``num_classes=None``) ``y`` must be ``None`` and ``None`` is
    returned.
    """
    if num_classes is None:
        if y is not None:
            raise ValueError(
                "this network is unconditional (num_classes=None) but class labels y were given; "
                "pass y=None or build the network with num_classes set"
            )
        return None
    if y is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    if not _tracing():
        if not isinstance(y, Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
            raise TypeError(
                f"class labels y must be an integer tensor [B], got {getattr(y, 'dtype', type(y).__name__)}"
            )
        if y.ndim != 1 or y.shape[0] != batch:
            raise ValueError(f"class labels y must have shape [{batch}], got {list(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > num_classes):
            raise ValueError(
                f"class labels must lie in [0, {num_classes}] ({num_classes} = null class), "
                f"got values in [{int(y.min())}, {int(y.max())}]"
            )
    return y.to(device=device, dtype=torch.long)


def concat_condition(x: Tensor, cond: Tensor | None, cond_channels: int | None) -> Tensor:
    """``x [B, C, H, W]`` with the conditioning image ``cond [B, cond_channels, H, W]`` appended along the
    channels (``[B, C + cond_channels, H, W]``); ``x`` itself for a network without image conditioning
    (``cond_channels=None``, ``cond`` must be None). Wrong or missing ``cond``: ``ValueError``."""
    if cond_channels is None:
        if cond is not None:
            raise ValueError(
                "this network takes no conditioning image (cond_channels=None) but cond was given; "
                "pass cond=None or build the network with cond_channels set"
            )
        return x
    if cond is None:
        raise ValueError(
            f"this network is conditioned on an image of {cond_channels} channels (cond_channels={cond_channels}): "
            f"pass cond [B, {cond_channels}, H, W], e.g. the upsampled low-resolution image"
        )
    if not _tracing():
        if not isinstance(cond, Tensor) or not cond.is_floating_point():
            raise TypeError(f"cond must be a floating-point tensor, got {getattr(cond, 'dtype', type(cond).__name__)}")
        want = [x.shape[0], cond_channels, *x.shape[2:]]
        if list(cond.shape) != want:
            raise ValueError(f"cond must have shape {want} (x_t's batch and size), got {list(cond.shape)}")
    return torch.cat([x, cond.to(x.dtype)], dim=1)
