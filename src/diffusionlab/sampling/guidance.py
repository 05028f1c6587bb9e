"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper turning a conditional net into a ``model_fn``.

Two conventions exist; each has its own name here:

- :func:`classifier_free_guidance` (Stable Diffusion): ``out = out_u + scale (out_c - out_u)``;
  ``scale = 1`` is the plain conditional model, ``scale = 0`` the unconditional one.
- :func:`seed_guidance` (the seed paper, Ho & Salimans eq. 6): ``out = (1 + w) out_c - w out_u``,
  i.e. ``scale = 1 + w``; ``w = 0`` is the plain conditional model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

NetFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def _batched(c: Tensor, batch: int, what: str) -> Tensor:
    if c.shape[0] == batch:
        return c
    if c.shape[0] == 1:
        return c.expand(batch, *c.shape[1:])
    raise ValueError(f"{what} has batch size {c.shape[0]}, expected 1 or {batch} (the batch of x)")


def classifier_free_guidance(net_fn: NetFn, cond: Tensor, uncond: Tensor, scale: float):
    """``model_fn(x [B, ...], t [B])`` returning ``out_u + scale (out_c - out_u)``.

    ``net_fn(x, t, c)`` is called once on the doubled batch ``[x; x]`` with ``[uncond; cond]`` (class labels
    ``[B]`` or text embeddings ``[B, 77, 768]``; a batch of 1 is broadcast). ``scale == 1`` calls the
    conditional model only and ``scale == 0`` the unconditional one.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"guidance scale must be a number, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"guidance scale must be finite (1 = the conditional model), got {scale!r}")
    if not isinstance(cond, Tensor) or not isinstance(uncond, Tensor):
        raise TypeError("cond and uncond must be tensors (class labels [B] or embeddings [B, ...])")
    if cond.shape[1:] != uncond.shape[1:]:
        raise ValueError(f"cond {tuple(cond.shape)} and uncond {tuple(uncond.shape)} differ beyond the batch dim")
    scale = float(scale)

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        if scale in (0.0, 1.0):
            c = cond if scale == 1.0 else uncond
            return net_fn(x, t, _batched(c, x.shape[0], "cond" if scale == 1.0 else "uncond"))
        both = torch.cat([_batched(uncond, x.shape[0], "uncond"), _batched(cond, x.shape[0], "cond")])
        out_u, out_c = net_fn(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return out_u + scale * (out_c - out_u)

    return model_fn


def seed_guidance(net_fn: NetFn, cond: Tensor, uncond: Tensor, w: float):
    """The seed paper's ``(1 + w) out_c - w out_u``: :func:`classifier_free_guidance` at ``1 + w``."""
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise TypeError(f"guidance weight w must be a number, got {type(w).__name__}")
    return classifier_free_guidance(net_fn, cond, uncond, 1.0 + w)
