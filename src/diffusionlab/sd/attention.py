"""Attention layers of SD 1.x's UNet: the GEGLU feed-forward, the transformer block and the spatial transformer,
on the multi-head (cross-)attention of :class:`diffusionlab.nets.attention.Attention`.

Token tensors are ``[B, N, C]``; feature maps ``[B, C, H, W]``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from diffusionlab.nets.attention import Attention
from diffusionlab.nets.blocks import GroupNorm


class GEGLUFeedForward(nn.Module):
    """``Linear(dim, 2 * inner)`` split into value and gate; ``value * gelu(gate)``; ``Linear(inner, dim)``.

    ``[B, N, dim] -> [B, N, dim]``, ``inner = mult * dim``.
    """

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.proj = nn.Linear(dim, 2 * inner)
        self.out = nn.Linear(inner, dim)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(value * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention on the context, GEGLU feed-forward; residuals."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim=context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """``[B, C, H, W]`` -> GroupNorm, 1x1 conv in, ``depth`` transformer blocks over the H*W tokens
    (cross-attending to ``context [B, M, context_dim]``), 1x1 conv out, plus the input."""

    def __init__(self, channels: int, heads: int, context_dim: int, depth: int = 1, groups: int = 32):
        super().__init__()
        self.norm = GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.blocks = nn.ModuleList(TransformerBlock(channels, heads, context_dim) for _ in range(depth))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))
