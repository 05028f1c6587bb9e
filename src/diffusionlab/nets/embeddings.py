"""Timestep and class embeddings.

* :func:`sinusoidal_embedding` and :class:`TimeEmbedding`: the DDPM (Ho et al. 2020) embedding, sines then
  cosines of ``t * 10000^(-i / (half - 1))``, followed by an MLP ``Linear -> SiLU -> Linear``.
* :class:`EmbedFC`: the seed paper's ``Linear -> GELU -> Linear`` embedding of a vector (normalised time or a
  one-hot class vector).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of timesteps ``t [B]`` (long or float, any range) -> float32 ``[B, dim]``.

    Layout ``[sin(t * f_0..f_{h-1}), cos(t * f_0..f_{h-1})]`` with ``h = dim // 2`` and
    ``f_i = max_period^(-i / (h - 1))`` (DDPM's convention; diffusers: ``flip_sin_to_cos=False,
    freq_shift=1``). An odd ``dim`` gets a zero last column.
    """
    if dim < 4:
        raise ValueError(f"sinusoidal embedding dim must be >= 4, got {dim}")
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(max_period) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimeEmbedding(nn.Module):
    """``t [B] -> [B, out_dim]``: sinusoidal embedding of size ``dim`` then ``Linear -> SiLU -> Linear``."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.dim = dim
        self.linear1 = nn.Linear(dim, out_dim)
        self.linear2 = nn.Linear(out_dim, out_dim)

    def forward(self, t: Tensor) -> Tensor:
        emb = sinusoidal_embedding(t, self.dim).to(self.linear1.weight.dtype)  # no-op unless the net is cast
        return self.linear2(F.silu(self.linear1(emb)))


class EmbedFC(nn.Module):
    """The seed paper's embedding MLP: ``[B, in_dim] -> Linear -> GELU -> Linear -> [B, emb_dim]``."""

    def __init__(self, in_dim: int, emb_dim: int):
        super().__init__()
        self.in_dim = in_dim
        self.model = nn.Sequential(nn.Linear(in_dim, emb_dim), nn.GELU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.reshape(-1, self.in_dim))
