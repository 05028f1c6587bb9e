"""Building blocks of the DDPM-style :class:`~diffusionlab.nets.unet.UNet`.

All blocks take and return ``[B, C, H, W]`` tensors, keep the input's memory format (channels_last stays
channels_last) and never cast dtypes, so they run unchanged under ``torch.autocast(dtype=bfloat16)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ResBlock(nn.Module):
    """DDPM residual block: ``GN -> SiLU -> conv3x3 -> + proj(temb) -> GN -> SiLU -> dropout -> conv3x3``,
    plus the input (through a 1x1 conv when the channel count changes).

    ``forward(x [B, in_ch, H, W], temb [B, temb_dim]) -> [B, out_ch, H, W]`` where ``temb`` is the time
    (+ class) embedding *after* its SiLU (the UNet applies it once for all blocks). ``conv2`` starts at zero,
    as in DDPM, so a fresh block is the identity (or its 1x1 shortcut).
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        # In-place adds are safe for autograd here (conv backward does not need its output) and save
        # one full-size allocation each.
        h.add_(self.temb_proj(temb)[:, :, None, None])
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h.add_(x if self.shortcut is None else self.shortcut(x))


class Downsample(nn.Module):
    """Halve H and W with a stride-2 conv3x3 (padding 1): ``[B, C, H, W] -> [B, C, H/2, W/2]``."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour interpolation then conv3x3: ``[B, C, H, W] -> [B, C, 2H, 2W]``."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
