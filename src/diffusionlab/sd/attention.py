"""Attention layers of SD 1.x: multi-head (cross-)attention on ``scaled_dot_product_attention``,
the GEGLU feed-forward, the transformer block and the spatial transformer of the UNet.

Token tensors are ``[B, N, C]``; feature maps ``[B, C, H, W]``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention: ``x [B, N, dim]`` attends to ``context [B, M, context_dim]`` (or itself).

    ``qkv_bias``: CLIP uses biases on q/k/v, the UNet does not. ``causal``: mask future tokens (CLIP).
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, qkv_bias: bool = False, causal=False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by the number of heads {heads}")
        context_dim = context_dim or dim
        self.heads = heads
        self.causal = causal
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.v = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q, k, v = self._split(self.q(x)), self._split(self.k(context)), self._split(self.v(context))
        h = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(h.transpose(1, 2).flatten(2))


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
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.blocks = nn.ModuleList(TransformerBlock(channels, heads, context_dim) for _ in range(depth))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))
