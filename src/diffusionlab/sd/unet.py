"""SD 1.x's conditional UNet: ``unet(z [B, C, h, w], t [B], context [B, M, ctx]) -> [B, C_out, h, w]``.

Residual blocks conditioned on a sinusoidal timestep embedding, spatial transformers (self-attention,
cross-attention on the text context, GEGLU) at the levels flagged in ``UNetConfig.attention_levels``,
skip connections from every down-path block to the matching up-path block. Any ``h, w`` works: the up
path resizes to the size of the skip it joins.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusionlab.nets.blocks import GroupNorm
from diffusionlab.nets.ldm_blocks import Downsample, ResnetBlock, Upsample
from diffusionlab.sd.attention import SpatialTransformer
from diffusionlab.sd.config import UNetConfig

UNET_NORM_EPS = 1e-5


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``t [B] -> [B, dim]`` float32: ``[cos(t f_k), sin(t f_k)]``, ``f_k = max_period^(-k / (dim/2))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimeEmbedding(nn.Module):
    """Sinusoidal features ``[B, in_dim]`` -> ``Linear, SiLU, Linear`` -> ``[B, out_dim]``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(in_dim, out_dim)
        self.linear2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(F.silu(self.linear1(x)))


class UNetLevel(nn.Module):
    """Residual blocks (each optionally followed by a spatial transformer) and an optional resampler."""

    def __init__(self, in_chs: list[int], out_ch: int, cfg: UNetConfig, attention: bool, resample: str | None):
        super().__init__()
        groups, tdim = cfg.norm_groups, cfg.time_embed_dim
        self.res = nn.ModuleList(
            ResnetBlock(c, out_ch, time_dim=tdim, groups=groups, eps=UNET_NORM_EPS) for c in in_chs
        )
        self.attn = nn.ModuleList(
            SpatialTransformer(out_ch, cfg.num_heads, cfg.context_dim, cfg.transformer_depth, groups)
            for _ in in_chs
            if attention
        )
        self.downsample = Downsample(out_ch) if resample == "down" else None
        self.upsample = Upsample(out_ch) if resample == "up" else None

    def block(self, j: int, x: Tensor, temb: Tensor, context: Tensor) -> Tensor:
        x = self.res[j](x, temb)
        return self.attn[j](x, context) if len(self.attn) else x


class MidBlock(nn.Module):
    def __init__(self, ch: int, cfg: UNetConfig):
        super().__init__()
        kw = dict(time_dim=cfg.time_embed_dim, groups=cfg.norm_groups, eps=UNET_NORM_EPS)
        self.res1 = ResnetBlock(ch, ch, **kw)
        self.attn = SpatialTransformer(ch, cfg.num_heads, cfg.context_dim, cfg.transformer_depth, cfg.norm_groups)
        self.res2 = ResnetBlock(ch, ch, **kw)

    def forward(self, x: Tensor, temb: Tensor, context: Tensor) -> Tensor:
        return self.res2(self.attn(self.res1(x, temb), context), temb)


class UNet(nn.Module):
    """The denoiser of SD 1.x (eps-prediction): see the module docstring for shapes."""

    def __init__(self, cfg: UNetConfig | None = None):
        super().__init__()
        cfg = cfg or UNetConfig()
        self.config = cfg
        mc, levels = cfg.model_channels, len(cfg.channel_mult)
        self.time_embed = TimeEmbedding(mc, cfg.time_embed_dim)
        self.conv_in = nn.Conv2d(cfg.in_channels, mc, 3, padding=1)

        skips, ch = [mc], mc
        self.down = nn.ModuleList()
        for i in range(levels):
            out = cfg.level_channels(i)
            in_chs = [ch] + [out] * (cfg.num_res_blocks - 1)
            last = i == levels - 1
            self.down.append(UNetLevel(in_chs, out, cfg, cfg.attention_levels[i], None if last else "down"))
            ch = out
            skips += [out] * cfg.num_res_blocks + ([] if last else [out])

        self.mid = MidBlock(ch, cfg)

        self.up = nn.ModuleList()
        for i in reversed(range(levels)):
            out = cfg.level_channels(i)
            in_chs = []
            for _ in range(cfg.num_res_blocks + 1):
                in_chs.append(ch + skips.pop())
                ch = out
            self.up.append(UNetLevel(in_chs, out, cfg, cfg.attention_levels[i], "up" if i else None))

        self.norm_out = GroupNorm(cfg.norm_groups, ch, eps=UNET_NORM_EPS, silu=True)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor, t: Tensor, context: Tensor) -> Tensor:
        if z.ndim != 4 or z.shape[1] != self.config.in_channels:
            raise ValueError(f"z must be [B, {self.config.in_channels}, h, w], got {tuple(z.shape)}")
        t = torch.as_tensor(t, device=z.device)
        if t.ndim == 0:
            t = t.expand(z.shape[0])
        temb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(z.dtype))

        x = self.conv_in(z)
        skips = [x]
        for level in self.down:
            for j in range(len(level.res)):
                x = level.block(j, x, temb, context)
                skips.append(x)
            if level.downsample is not None:
                x = level.downsample(x)
                skips.append(x)

        x = self.mid(x, temb, context)

        for level in self.up:
            for j in range(len(level.res)):
                x = level.block(j, torch.cat([x, skips.pop()], dim=1), temb, context)
            if level.upsample is not None:
                x = level.upsample(x, size=skips[-1].shape[-2:])
        return self.conv_out(self.norm_out(x))
