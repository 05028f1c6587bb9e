"""Attention layers: spatial self-attention over the H*W positions of a feature map (DDPM's attention block),
and multi-head (cross-)attention over tokens (the KL autoencoder, SD's CLIP and UNet)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusionlab.nets.blocks import GroupNorm

# Without gradients, the matmul + softmax route in bf16 on CPU wins where heads are wide and the N x N weights
# small (measured 2026-12-06, AMD Zen 5, one thread, [B, heads, N, d]: [128, 1, 64, 64] 0.74 ms against
# PyTorch's flash kernel's 2.17, [64, 1, 256, 128] 10.8 against 21.8; but [32, 4, 256, 32] 19.1 against 14.0 and
# [8, 8, 1024, 40] 155 against 124): head_dim >= 64, at most 256 positions on either side.
MATMUL_MIN_HEAD_DIM = 64
MATMUL_MAX_POSITIONS = 256


def _matmul_route(q: Tensor, k: Tensor) -> bool:
    if q.device.type != "cpu" or q.dtype != torch.bfloat16:
        return False
    if torch.is_grad_enabled():
        return True
    return q.shape[-1] >= MATMUL_MIN_HEAD_DIM and max(q.shape[-2], k.shape[-2]) <= MATMUL_MAX_POSITIONS


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention ``[B, heads, N, d] -> [B, heads, N, d]`` with scale ``d^-0.5``.

    :func:`~torch.nn.functional.scaled_dot_product_attention`, except in bfloat16 on CPU when training, or when
    sampling with heads of at least 64 channels over at most 256 positions: there two matmuls and a softmax
    are faster. Training: PyTorch's flash-attention backward is slower than theirs (measured fwd+bwd on
    ``[128, 1, N, 64]``: N=64 26 ms vs 7 ms, N=256 83 ms vs 63 ms), and the N x N weights are small at the
    feature-map sizes these nets attend over (at most 16x16). Sampling: see ``MATMUL_MIN_HEAD_DIM`` (the DDPM
    U-Nets' one-head attention at 8x8 is 2.9x faster).
    """
    if _matmul_route(q, k):
        weights = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2), dim=-1)
        return weights.to(v.dtype) @ v
    return F.scaled_dot_product_attention(q, k, v)


class SelfAttention2d(nn.Module):
    """``x + proj(attention(GN(x)))`` over the ``H*W`` positions, ``[B, C, H, W] -> [B, C, H, W]``.

    One fused ``qkv`` projection (``C -> 3C``) and :func:`attention` (scaled dot-product, scale
    ``head_dim^-0.5``). With a channels_last input the ``[B, C, H, W] <-> [B, H*W, C]`` reshapes are
    free views. ``proj`` starts at zero (DDPM), so a fresh block is the identity.
    """

    def __init__(self, ch: int, num_heads: int, groups: int, eps: float):
        super().__init__()
        if num_heads < 1 or ch % num_heads:
            raise ValueError(
                f"attention over {ch} channels cannot use num_heads={num_heads}: num_heads must divide {ch}"
            )
        self.num_heads = num_heads
        self.norm = GroupNorm(groups, ch, eps=eps)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, ch)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n, heads = h * w, self.num_heads
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, n, c)
        q, k, v = self.qkv(tokens).view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v)  # [B, heads, N, head_dim]
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        return x + out.view(b, h, w, c).permute(0, 3, 1, 2)


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
