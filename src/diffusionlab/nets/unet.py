"""The DDPM-style U-Net (Ho et al. 2020, appendix B) for 28/32-pixel images.

``UNet(in_channels=3)`` with the defaults is the DDPM CIFAR-10 network (35.7M parameters): channels
``base_channels * channel_mult`` per resolution, ``num_res_blocks`` residual blocks per resolution on the way
down and ``num_res_blocks + 1`` on the way up (each fed a skip connection), self-attention after the residual
blocks at the resolutions in ``attention_resolutions`` and in the middle, stride-2 conv downsampling and
nearest + conv upsampling. Time (sinusoidal -> MLP to ``4 * base_channels``) and, when ``num_classes`` is set,
a learned class embedding (``num_classes + 1`` rows, the last is the null class for classifier-free guidance)
are summed and injected into every residual block.

``cond_channels`` makes it an image-conditioned network (SR3-style super-resolution, Saharia et al. 2021): the
``cond`` image ``[B, cond_channels, H, W]`` (e.g. the bicubic-upsampled low-resolution input) is concatenated to
``x_t`` before the first convolution, as diffusers' ``UNet2DModel`` with ``in_channels = C + cond_channels``
is used for upscaling.

Same architecture, parameter count and (after
:func:`~diffusionlab.nets.diffusers_compat.convert_unet2d_state_dict`) outputs as diffusers' ``UNet2DModel``
with ``DownBlock2D``/``AttnDownBlock2D`` blocks; faster on CPU because it keeps channels_last throughout and
fuses the q/k/v projections.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusionlab.nets.attention import SelfAttention2d
from diffusionlab.nets.blocks import Downsample, GroupNorm, ResBlock, Upsample
from diffusionlab.nets.conv_weight_grad import Conv2d
from diffusionlab.nets.embeddings import TimeEmbedding
from diffusionlab.nets.inputs import check_image, concat_condition, prepare_labels, prepare_timesteps
from diffusionlab.nets.skip_concat import cat_channels


class _Level(nn.Module):
    """One resolution of the down or up path: residual blocks, each optionally followed by attention, then an
    optional resampling (``Downsample``/``Upsample``). Holds modules only; the UNet wires the skips."""

    def __init__(self, res: list[ResBlock], attn: list[SelfAttention2d] | None, resample: nn.Module | None):
        super().__init__()
        self.res = nn.ModuleList(res)
        self.attn = nn.ModuleList(attn) if attn else None
        self.resample = resample


class _Middle(nn.Module):
    """``res1 -> attn -> res2`` at the lowest resolution (``attn`` is ``None`` when disabled)."""

    def __init__(self, ch: int, temb_dim: int, dropout: float, groups: int, eps: float, heads: int, attention: bool):
        super().__init__()
        self.res1 = ResBlock(ch, ch, temb_dim, dropout, groups, eps)
        self.attn = SelfAttention2d(ch, heads, groups, eps) if attention else None
        self.res2 = ResBlock(ch, ch, temb_dim, dropout, groups, eps)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        x = self.res1(x, temb)
        if self.attn is not None:
            x = self.attn(x)
        return self.res2(x, temb)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class UNet(nn.Module):
    """DDPM U-Net: ``net(x_t [B, C, H, W], t [B] long/float, y [B] long or None, cond=None) -> [B, C_out, H, W]``.

    Args:
        in_channels: image channels C.
        out_channels: output channels (default ``in_channels``).
        base_channels: channels at full resolution; level ``i`` has ``base_channels * channel_mult[i]``.
        channel_mult: one multiplier per resolution; ``len(channel_mult) - 1`` downsamplings, so H and W must
            be divisible by ``2 ** (len(channel_mult) - 1)``.
        num_res_blocks: residual blocks per resolution on the way down (one more on the way up).
        attention_resolutions: feature-map sizes (for ``image_size`` inputs) that get self-attention.
        dropout: dropout inside the residual blocks.
        num_classes: number of classes for class conditioning, or ``None`` for an unconditional net.
        image_size: the training image size; fixes where attention goes and is checked at construction.
        num_heads: attention heads (ignored when ``head_dim`` is set).
        head_dim: channels per attention head (heads = channels // head_dim, diffusers' convention).
        norm_groups, norm_eps: GroupNorm groups and epsilon (DDPM: 32 and 1e-6).
        mid_attention: self-attention in the middle block (DDPM: yes).
        cond_channels: channels of a conditioning image ``cond [B, cond_channels, H, W]`` concatenated to
            ``x_t`` (super-resolution); ``None``: no image conditioning (``cond`` must not be given).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_classes: int | None = None,
        image_size: int = 32,
        num_heads: int = 1,
        head_dim: int | None = None,
        norm_groups: int = 32,
        norm_eps: float = 1e-6,
        mid_attention: bool = True,
        cond_channels: int | None = None,
    ):
        super().__init__()
        self.in_channels = _check_positive_int("in_channels", in_channels)
        self.out_channels = _check_positive_int("out_channels", out_channels or in_channels)
        self.cond_channels = None if cond_channels is None else _check_positive_int("cond_channels", cond_channels)
        channel_mult = tuple(channel_mult)
        if not channel_mult:
            raise ValueError("channel_mult must list at least one multiplier, got ()")
        for m in channel_mult:
            _check_positive_int("every channel_mult entry", m)
        _check_positive_int("base_channels", base_channels)
        _check_positive_int("num_res_blocks", num_res_blocks)
        if num_classes is not None:
            _check_positive_int("num_classes", num_classes)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        widths = [base_channels * m for m in channel_mult]
        bad = [w for w in widths if w % norm_groups]
        if bad:
            raise ValueError(
                f"norm_groups={norm_groups} must divide every level's channel count, got channels {widths}"
            )
        self.num_classes = num_classes
        self.image_size = image_size
        self.num_levels = len(channel_mult)
        self.downsample_factor = 2 ** (self.num_levels - 1)
        self._check_size(image_size, "image_size")
        resolutions = [image_size // 2**i for i in range(len(channel_mult))]
        attention_resolutions = tuple(attention_resolutions)
        missing = [r for r in attention_resolutions if r not in resolutions]
        if missing:
            raise ValueError(
                f"attention_resolutions {list(missing)} are not reached: with image_size={image_size} and "
                f"{len(channel_mult)} levels the feature maps are {resolutions}; choose among those "
                f"(or pad the images, e.g. 28 -> 32)"
            )

        def heads(ch: int) -> int:
            if head_dim is None:
                return num_heads
            if ch % head_dim:
                raise ValueError(f"head_dim={head_dim} must divide every attention layer's channels, got {ch}")
            return ch // head_dim

        temb_dim = 4 * base_channels
        self.time_embed = TimeEmbedding(base_channels, temb_dim)
        self.class_embed = nn.Embedding(num_classes + 1, temb_dim) if num_classes is not None else None
        self.conv_in = Conv2d(in_channels + (cond_channels or 0), base_channels, 3, padding=1)

        def block(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, temb_dim, dropout, norm_groups, norm_eps)

        def attn(ch: int, use: bool, n: int) -> list[SelfAttention2d] | None:
            return [SelfAttention2d(ch, heads(ch), norm_groups, norm_eps) for _ in range(n)] if use else None

        ch, skips = base_channels, [base_channels]
        self.down = nn.ModuleList()
        for i, (width, res) in enumerate(zip(widths, resolutions)):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(block(ch, width))
                ch = width
                skips.append(ch)
            last = i == len(widths) - 1
            self.down.append(
                _Level(
                    blocks,
                    attn(ch, res in attention_resolutions, num_res_blocks),
                    None if last else Downsample(ch),
                )
            )
            if not last:
                skips.append(ch)
        self.mid = _Middle(ch, temb_dim, dropout, norm_groups, norm_eps, heads(ch), mid_attention)
        self.up = nn.ModuleList()
        for i in reversed(range(len(widths))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(block(ch + skips.pop(), widths[i]))
                ch = widths[i]
            self.up.append(
                _Level(
                    blocks,
                    attn(ch, resolutions[i] in attention_resolutions, num_res_blocks + 1),
                    Upsample(ch) if i > 0 else None,
                )
            )
        self.norm_out = GroupNorm(norm_groups, ch, eps=norm_eps, silu=True)
        self.conv_out = Conv2d(ch, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _check_size(self, size: int, what: str) -> None:
        """Raise ``ValueError`` unless ``size`` is a positive multiple of the total downsampling factor."""
        f, levels = self.downsample_factor, self.num_levels
        if isinstance(size, int) and not isinstance(size, bool) and size >= f and size % f == 0:
            return
        if isinstance(size, int) and size > 0:
            pad = -(-size // f) * f
            fits = max(k for k in range(1, levels + 1) if size % 2 ** (k - 1) == 0)
            hint = (
                f"pad the images to {pad} (MNIST: data.image_size=32) or use a channel_mult with at most {fits} levels"
            )
        else:
            hint = f"use a positive multiple of {f}"
        raise ValueError(
            f"{what}={size!r} is not divisible by {f} = 2**{levels - 1} (channel_mult has {levels} levels): {hint}"
        )

    def forward(
        self, x: Tensor, t: Tensor | int | float, y: Tensor | None = None, cond: Tensor | None = None
    ) -> Tensor:
        check_image(x, self.in_channels)
        x = concat_condition(x, cond, self.cond_channels)
        if not torch.compiler.is_compiling():
            for size, what in ((x.shape[2], "input height"), (x.shape[3], "input width")):
                self._check_size(int(size), what)
        b = x.shape[0]
        emb = self.time_embed(prepare_timesteps(t, b, x.device))
        labels = prepare_labels(y, b, self.num_classes, x.device)
        if self.class_embed is not None:
            emb = emb + self.class_embed(labels)
        emb = F.silu(emb)

        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            for j, res in enumerate(level.res):
                h = res(h, emb)
                if level.attn is not None:
                    h = level.attn[j](h)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)
        h = self.mid(h, emb)
        for level in self.up:
            for j, res in enumerate(level.res):
                h = res(cat_channels(h, skips.pop()), emb)
                if level.attn is not None:
                    h = level.attn[j](h)
            if level.resample is not None:
                h = level.resample(h)
        return self.conv_out(self.norm_out(h))
