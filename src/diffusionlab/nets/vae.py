"""KL-regularised autoencoder (Rombach et al. 2022; SD's KL-f8 and small ones for MNIST latents).

The architecture of CompVis' ``ldm.models.autoencoder.AutoencoderKL`` with its parameter names kept, so SD 1.x
checkpoints load into it (:mod:`diffusionlab.sd.vae`); :mod:`diffusionlab.nets.autoencoder` builds small ones.

``encode(x [B, in_channels, H, W] in [-1, 1]) -> DiagonalGaussian`` over ``[B, z_channels, H/f, W/f]``
(``f = 2^(len(ch_mult) - 1)``); ``decode(z) -> [B, out_channels, H, W]`` (approximately in [-1, 1]).
Diffusion runs on ``scale_factor * z`` (``AutoencoderConfig.scale_factor``; 0.18215 for SD 1.x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffusionlab.nets.attention import Attention
from diffusionlab.nets.blocks import GroupNorm
from diffusionlab.nets.conv_weight_grad import Conv2d
from diffusionlab.nets.ldm_blocks import Downsample, ResnetBlock, Upsample
from diffusionlab.utils.seeding import randn


@dataclass(frozen=True)
class AutoencoderConfig:
    """KL autoencoder (``AutoencoderKL``; SD's KL-f8 by default, small sizes for MNIST latents).

    The encoder maps ``[B, in_channels, H, W]`` in [-1, 1] to a diagonal Gaussian over
    ``[B, z_channels, H / 2^(L-1), W / 2^(L-1)]`` (L = ``len(ch_mult)``); the decoder maps back.
    ``scale_factor`` multiplies latents before diffusion (0.18215 for SD 1.x).
    """

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    mid_attention: bool = True
    norm_groups: int = 32
    scale_factor: float = 0.18215

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


class DiagonalGaussian:
    """``N(mean, exp(logvar))`` per latent element; ``mean``, ``logvar`` are ``[B, C, h, w]``.

    Built from the encoder's ``[B, 2C, h, w]`` moments (mean first); ``logvar`` clamped to [-30, 20].
    """

    def __init__(self, moments: Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """``mean + std * eps``; eps is drawn on the CPU from ``generator`` so it is device independent."""
        if generator is None:
            eps = torch.randn_like(self.mean)
        else:
            eps = randn(self.mean.shape, generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """``KL(q || N(0, I))`` summed over all but the batch dimension: ``[B]``."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(1)

    def nll(self, x: Tensor) -> Tensor:
        """Negative log-likelihood of ``x`` under this Gaussian, summed per sample: ``[B]``."""
        log2pi = torch.log(torch.tensor(2 * torch.pi, dtype=x.dtype, device=x.device))
        return 0.5 * (log2pi + self.logvar + (x - self.mean).pow(2) / self.var).flatten(1).sum(1)


class SpatialSelfAttention(Attention):
    """Single-head self-attention over the ``H*W`` positions of ``[B, C, H, W]``; GroupNorm, residual."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__(channels, heads=1, qkv_bias=True)
        self.norm = GroupNorm(groups, channels, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        return x + super().forward(tokens).transpose(1, 2).reshape(b, c, h, w)


class MidBlock(nn.Module):
    """ResnetBlock, optional self-attention, ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, attention: bool, groups: int):
        super().__init__()
        self.res1 = ResnetBlock(channels, groups=groups)
        self.attn = SpatialSelfAttention(channels, groups) if attention else None
        self.res2 = ResnetBlock(channels, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        x = self.res1(x)
        if self.attn is not None:
            x = self.attn(x)
        return self.res2(x)


class Level(nn.Module):
    """One resolution level: ``res`` blocks, then an optional ``downsample`` or ``upsample``."""

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, groups: int, resample: str | None):
        super().__init__()
        self.res = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups=groups) for i in range(n_blocks)
        )
        self.downsample = Downsample(out_ch, asymmetric=True) if resample == "down" else None
        self.upsample = Upsample(out_ch) if resample == "up" else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.res:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class Encoder(nn.Module):
    """``[B, in_channels, H, W] -> [B, 2 * z_channels (or z_channels), H/f, W/f]`` (moments)."""

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        z_channels: int = 4,
        double_z: bool = True,
        mid_attention: bool = True,
        groups: int = 32,
    ):
        super().__init__()
        self.conv_in = Conv2d(in_channels, ch, 3, padding=1)
        widths = [ch * m for m in ch_mult]
        last = len(widths) - 1
        self.down = nn.ModuleList(
            Level(widths[i - 1] if i else ch, w, num_res_blocks, groups, "down" if i < last else None)
            for i, w in enumerate(widths)
        )
        self.mid = MidBlock(widths[-1], mid_attention, groups)
        self.norm_out = GroupNorm(groups, widths[-1], eps=1e-6, silu=True)
        self.conv_out = Conv2d(widths[-1], 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        x = self.mid(x)
        return self.conv_out(self.norm_out(x))


class Decoder(nn.Module):
    """``[B, z_channels, h, w] -> [B, out_channels, h*f, w*f]``; levels run from the lowest resolution up,
    each with ``num_res_blocks + 1`` residual blocks."""

    def __init__(
        self,
        out_channels: int = 3,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        z_channels: int = 4,
        mid_attention: bool = True,
        groups: int = 32,
    ):
        super().__init__()
        widths = [ch * m for m in reversed(ch_mult)]
        last = len(widths) - 1
        self.conv_in = Conv2d(z_channels, widths[0], 3, padding=1)
        self.mid = MidBlock(widths[0], mid_attention, groups)
        self.up = nn.ModuleList(
            Level(widths[max(k - 1, 0)], w, num_res_blocks + 1, groups, "up" if k < last else None)
            for k, w in enumerate(widths)
        )
        self.norm_out = GroupNorm(groups, widths[-1], eps=1e-6, silu=True)
        self.conv_out = Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid(self.conv_in(z))
        for level in self.up:
            x = level(x)
        return self.conv_out(self.norm_out(x))


class AutoencoderKL(nn.Module):
    """Encoder + 1x1 ``quant_conv`` to Gaussian moments; 1x1 ``post_quant_conv`` + decoder back."""

    def __init__(self, cfg: AutoencoderConfig | None = None):
        super().__init__()
        cfg = cfg or AutoencoderConfig()
        self.config = cfg
        common = dict(ch=cfg.ch, ch_mult=tuple(cfg.ch_mult), num_res_blocks=cfg.num_res_blocks)
        common.update(z_channels=cfg.z_channels, mid_attention=cfg.mid_attention, groups=cfg.norm_groups)
        self.encoder = Encoder(in_channels=cfg.in_channels, **common)
        self.decoder = Decoder(out_channels=cfg.out_channels, **common)
        self.quant_conv = Conv2d(2 * cfg.z_channels, 2 * cfg.z_channels, 1)
        self.post_quant_conv = Conv2d(cfg.z_channels, cfg.z_channels, 1)

    @property
    def scale_factor(self) -> float:
        return self.config.scale_factor

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """``x [B, in_channels, H, W]`` in [-1, 1] -> posterior over unscaled latents."""
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents ``[B, z_channels, h, w]`` -> ``[B, out_channels, h*f, w*f]``."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, DiagonalGaussian]:
        """Reconstruction from a posterior sample, and the posterior (for the KL term)."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior

    def encode_scaled(self, x: Tensor, generator: torch.Generator | None = None, sample: bool = False):
        """Diffusion-space latents ``scale_factor * z`` (posterior mean, or a sample when ``sample``)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return z * self.config.scale_factor

    def decode_scaled(self, z: Tensor) -> Tensor:
        """Inverse of ``encode_scaled``: decode ``z / scale_factor``."""
        return self.decode(z / self.config.scale_factor)
