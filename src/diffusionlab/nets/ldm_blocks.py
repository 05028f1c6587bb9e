"""Convolutional building blocks of the CompVis latent-diffusion networks, shared by the KL autoencoder
(:mod:`diffusionlab.nets.vae`) and Stable Diffusion's UNet (:mod:`diffusionlab.sd.unet`).

Feature maps are ``[B, C, H, W]``; time embeddings ``[B, time_dim]``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from diffusionlab.nets import upsample_conv
from diffusionlab.nets.blocks import GroupNorm
from diffusionlab.nets.conv_weight_grad import Conv2d


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice with a residual; ``in_ch -> out_ch`` (1x1 conv on the skip when they
    differ). With ``time_dim`` set, ``Linear(SiLU(temb))`` is added per channel after the first conv."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        time_dim: int | None = None,
        groups: int = 32,
        eps: float = 1e-6,
        dropout: float = 0.0,
    ):
        super().__init__()
        out_ch = out_ch or in_ch
        self.norm1 = GroupNorm(groups, in_ch, eps=eps, silu=True)
        self.conv1 = Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, out_ch) if time_dim else None
        self.norm2 = GroupNorm(groups, out_ch, eps=eps, silu=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.conv1(self.norm1(x))
        offset = None
        if self.time_proj is not None:
            if temb is None:
                raise ValueError("this block was built with a time embedding; pass temb [B, time_dim]")
            offset = self.time_proj(F.silu(temb))  # [B, out_ch], added to h inside norm2
        h = self.conv2(self.dropout(self.norm2(h, offset=offset)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv: ``[B, C, H, W] -> [B, C, ceil(H/2), ceil(W/2)]``. ``asymmetric`` pads only
    right/bottom by one (the autoencoder's convention); otherwise one pixel on every side (the UNet's)."""

    def __init__(self, channels: int, asymmetric: bool = False):
        super().__init__()
        self.asymmetric = asymmetric
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=0 if asymmetric else 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.asymmetric:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling (x2, or to ``size``) followed by a 3x3 conv; x2 on channels_last CPU tensors
    as one convolution of the small image (:mod:`diffusionlab.nets.upsample_conv`, same parameters)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        if size is None and upsample_conv.applies(x):
            return upsample_conv.nearest2x_conv3x3(x, self.conv.weight, self.conv.bias)
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
