"""Building blocks of the DDPM-style :class:`~diffusionlab.nets.unet.UNet`.

All blocks take and return ``[B, C, H, W]`` tensors, keep the input's memory format (channels_last stays
channels_last) and never cast dtypes, so they run unchanged under ``torch.autocast(dtype=bfloat16)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusionlab.nets import fused_group_norm, upsample_conv
from diffusionlab.nets.conv_weight_grad import Conv2d


class _GroupNormNCHWBackward(torch.autograd.Function):
    """GroupNorm (optionally followed by SiLU) of a channels_last tensor whose backward runs the NCHW kernel.

    PyTorch's CPU GroupNorm kernels for channels_last bfloat16 are several times slower than the NCHW ones, in
    the backward and (measured 2026-12-02, 2 threads, ``[128, 32..64, 7..28, 7..28]``) in the forward too:
    2.3-4.5x including the layout copies. So both run on an NCHW copy of the input (kept for the backward),
    and the output and the input gradient are returned channels_last (an NCHW tensor would meet
    channels_last ones in the residual sums, and mixed-layout adds are slow).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float, silu: bool) -> Tensor:
        b, c, h, w = x.shape
        x = x.contiguous()  # NCHW
        y, mean, rstd = torch.native_group_norm(x, weight, bias, b, c, h * w, groups, eps)
        y = y.contiguous(memory_format=torch.channels_last)
        ctx.save_for_backward(x, weight, mean, rstd, y if silu else None)
        ctx.groups, ctx.silu = groups, silu
        return F.silu(y) if silu else y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, mean, rstd, y = ctx.saved_tensors
        b, c, h, w = x.shape
        if ctx.silu:
            grad = torch.ops.aten.silu_backward(grad, y)
        gx, gw, gb = torch.ops.aten.native_group_norm_backward(
            grad.contiguous(),
            x,
            mean,
            rstd,
            weight,
            b,
            c,
            h * w,
            ctx.groups,
            list(ctx.needs_input_grad[:3]),
        )
        if gx is not None:
            gx = gx.contiguous(memory_format=torch.channels_last)
        return gx, gw, gb, None, None, None


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state-dict keys), optionally followed by SiLU (``silu=True``),
    with CPU fast paths for bfloat16 channels_last inputs (training and sampling).

    First choice: the fused C++ kernel of :mod:`diffusionlab.nets.fused_group_norm` (GroupNorm + SiLU in two
    passes over NHWC, forward and backward). Where it cannot be built: the NCHW detour
    (:class:`_GroupNormNCHWBackward`, :func:`_group_norm_nchw`; +11% images/s over PyTorch's channels_last
    kernels in the unet_small training step). Neither is used under ``torch.compile`` (inductor generates its
    own GroupNorm + SiLU kernels).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, silu: bool = False):
        super().__init__(num_groups, num_channels, eps=eps)
        self.silu = silu

    def forward(self, x: Tensor, offset: Tensor | None = None) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``: GroupNorm (+ SiLU) of ``x + offset[:, :, None, None]``; ``offset``
        ``[B, C]`` (a UNet's time-embedding projection) is added inside the fused kernel when it runs, so the
        sum is never stored."""
        if self.fuses(x):
            return fused_group_norm.fused_group_norm(
                x, self.num_groups, self.weight, self.bias, self.eps, self.silu, offset
            )
        if offset is not None:
            x = x + offset[:, :, None, None]
        # inductor fuses GroupNorm + SiLU itself, in any layout; float32: the native kernels are as fast (measured)
        if not torch.compiler.is_compiling() and fused_group_norm.applies(x):
            if torch.is_grad_enabled():
                return _GroupNormNCHWBackward.apply(x, self.weight, self.bias, self.num_groups, self.eps, self.silu)
            return _group_norm_nchw(x, self.num_groups, self.weight, self.bias, self.eps, self.silu)
        y = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.silu(y) if self.silu else y

    @staticmethod
    def fuses(x: Tensor) -> bool:
        """Whether ``forward(x)`` runs the fused kernel (CPU bf16 channels_last, kernel built, not compiling)."""
        return not torch.compiler.is_compiling() and fused_group_norm.applies(x) and fused_group_norm.available()

    def extra_repr(self) -> str:
        return super().extra_repr() + (", silu=True" if self.silu else "")


def _group_norm_nchw(x: Tensor, groups: int, weight: Tensor, bias: Tensor, eps: float, silu: bool) -> Tensor:
    """GroupNorm (+ SiLU) of a channels_last ``[B, C, H, W]`` tensor computed on an NCHW copy, returned
    channels_last: 2.3-4.5x faster than the channels_last kernel in bfloat16 on CPU (see above)."""
    y = F.group_norm(x.contiguous(), groups, weight, bias, eps)
    y = F.silu(y, inplace=True) if silu else y
    return y.contiguous(memory_format=torch.channels_last)


class ResBlock(nn.Module):
    """DDPM residual block: ``GN -> SiLU -> conv3x3 -> + proj(temb) -> GN -> SiLU -> dropout -> conv3x3``,
    plus the input (through a 1x1 conv when the channel count changes).

    ``forward(x [B, in_ch, H, W], temb [B, temb_dim]) -> [B, out_ch, H, W]`` where ``temb`` is the time
    (+ class) embedding *after* its SiLU (the UNet applies it once for all blocks). ``conv2`` starts at zero,
    as in DDPM, so a fresh block is the identity (or its 1x1 shortcut).
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, groups: int, eps: float):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_ch, eps=eps, silu=True)
        self.conv1 = Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = GroupNorm(groups, out_ch, eps=eps, silu=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.shortcut = Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h, offset = self.conv1(self.norm1(x)), self.temb_proj(temb)  # [B, out_ch, H, W], [B, out_ch]
        if not self.norm2.fuses(h):  # add it here, in place where that pays; the kernel adds it on the fly
            h, offset = _add(h, offset[:, :, None, None]), None
        h = self.conv2(self.dropout(self.norm2(h, offset=offset)))
        return _add(h, x if self.shortcut is None else self.shortcut(x))


def _add(a: Tensor, b: Tensor) -> Tensor:
    """``a + b`` where ``a`` is a conv output nothing else holds (so autograd allows writing into it).

    In place for float32 (saves an allocation: 1.35 ms vs 3.7 ms on ``[128, 32, 32, 32]``), out of place for
    other dtypes (PyTorch's in-place bfloat16 add on CPU is slower than the out-of-place one: 5.2 vs 3.2 ms).
    """
    return a.add_(b) if a.dtype == torch.float32 else a + b


class Downsample(nn.Module):
    """Halve H and W with a stride-2 conv3x3 (padding 1): ``[B, C, H, W] -> [B, C, H/2, W/2]``."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour interpolation then conv3x3: ``[B, C, H, W] -> [B, C, 2H, 2W]``.
    On the CPU in channels_last both run as one convolution of the small image with 4 instead of 9 taps per
    output (:mod:`diffusionlab.nets.upsample_conv`; same parameters)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if upsample_conv.applies(x):
            return upsample_conv.nearest2x_conv3x3(x, self.conv.weight, self.conv.bias)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
