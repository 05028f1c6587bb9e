"""Spatial self-attention over the H*W positions of a feature map (DDPM's attention block)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention2d(nn.Module):
    """``x + proj(attention(GN(x)))`` over the ``H*W`` positions, ``[B, C, H, W] -> [B, C, H, W]``.

    One fused ``qkv`` projection (``C -> 3C``) and :func:`torch.nn.functional.scaled_dot_product_attention`
    with scale ``head_dim^-0.5``. With a channels_last input the ``[B, C, H, W] <-> [B, H*W, C]`` reshapes are
    free views. ``proj`` starts at zero (DDPM), so a fresh block is the identity.
    """

    def __init__(self, ch: int, num_heads: int, groups: int, eps: float):
        super().__init__()
        if num_heads < 1 or ch % num_heads:
            raise ValueError(
                f"attention over {ch} channels cannot use num_heads={num_heads}: num_heads must divide {ch}"
            )
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, ch, eps=eps)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, ch)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n, heads = h * w, self.num_heads
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, n, c)
        q, k, v = self.qkv(tokens).view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, head_dim]
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        return x + out.view(b, h, w, c).permute(0, 3, 1, 2)
