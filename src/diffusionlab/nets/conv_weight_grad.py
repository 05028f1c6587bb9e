"""3x3 convolutions whose weight gradient comes from our AVX512-BF16 kernel when training bf16 on a CPU without AMX.

Without AMX, oneDNN computes a convolution's weight gradient with an older kernel at 55-75% of the rate of its
forward pass; ``kernels/conv_weight_grad_nhwc.cpp`` runs the same sums 1.2-1.5x faster (vdpbf16ps over
pairs of images, float32 accumulation, see its header). :class:`Conv2d` is ``nn.Conv2d`` with the same
parameters, ``state_dict`` and outputs; in a training forward of a 3x3, stride-1, padding-1 convolution with at
least 16 input channels (a multiple of 16), bf16 (autocast or bf16 weights) and a channels_last input, its
backward takes the input gradient from oneDNN as before and the weight and bias gradients from the kernel, in
float32 (autocast's route rounds them to bf16 first).

``DIFFUSIONLAB_CONV_WEIGHT_GRAD``: ``auto`` (default) uses the kernel on CPUs with ``avx512_bf16`` and no AMX
(with AMX, oneDNN's own kernel is the faster one); ``1`` wherever the CPU has ``avx512_bf16``; ``0`` never. The
kernel is built once per machine (~15 s, :mod:`diffusionlab.utils.cpp_kernels`); without a compiler a warning
says so once and oneDNN's route is kept.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from diffusionlab.utils import cpp_kernels

SOURCE = Path(__file__).with_name("kernels") / "conv_weight_grad_nhwc.cpp"
PREFIX = "diffusionlab_conv"
CFLAGS = list(cpp_kernels.CFLAGS)
ENV_SWITCH = "DIFFUSIONLAB_CONV_WEIGHT_GRAD"


def wanted(setting: str, avx512_bf16: bool, amx: bool) -> bool:
    """Whether the kernel should run for ``setting`` (the switch's value) on a CPU with these features."""
    if setting not in ("auto", "0", "1"):
        raise ValueError(f"{ENV_SWITCH}={setting!r}: expected auto, 0 or 1")
    return avx512_bf16 and (setting == "1" or (setting == "auto" and not amx))


@cache
def available() -> bool:
    """True when the kernel is wanted here (see :func:`wanted`), built and loaded, and this build has
    AVX512-BF16; builds it on first call. False (with the reason printed once if the build fails) otherwise."""
    setting = os.environ.get(ENV_SWITCH, "auto")
    if not wanted(setting, torch.cpu._is_avx512_bf16_supported(), torch.cpu._is_amx_tile_supported()):
        return False
    loaded = cpp_kernels.load_kernel(
        SOURCE,
        PREFIX,
        "convolution weight-gradient kernel",
        ENV_SWITCH,
        "oneDNN computes the weight gradients instead (slower without AMX)",
        CFLAGS,
    )
    if not (loaded and torch.ops.diffusionlab_conv.supported()):
        return False
    _register_flop_formula()
    return True


def _register_flop_formula() -> None:
    """Teach ``torch.utils.flop_counter`` the kernel's multiply-adds (the benchmarks' achieved FLOP/s)."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    if torch.ops.diffusionlab_conv.weight_grad in flop_registry:
        return

    @register_flop_formula(torch.ops.diffusionlab_conv.weight_grad)
    def weight_grad_flops(dy_shape, x_shape, k: int, *args, out_shape=None, **kwargs) -> int:
        n, co, h, w = dy_shape
        return 2 * n * h * w * co * x_shape[1] * k * k


def _bf16_compute(x: Tensor, weight: Tensor) -> bool:
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu") == torch.bfloat16
    return x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16


def applies(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether ``conv(x)`` is a case the kernel serves: a training forward (grad enabled, weight trainable) of a
    3x3 stride-1 padding-1 convolution without groups, on a CPU, in bf16, with a channels_last ``x`` whose
    channels are a multiple of 16; not while ``torch.compile`` traces."""
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and torch.is_grad_enabled()
        and conv.weight.requires_grad
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.shape[1] % 16 == 0
        and x.is_contiguous(memory_format=torch.channels_last)
        and _bf16_compute(x, conv.weight)
        and not torch.compiler.is_compiling()
    )


class _Conv3x3OwnWeightGrad(torch.autograd.Function):
    """``conv2d(x, weight, bias, padding=1)`` in bf16 (what autocast would run); backward: the input gradient from
    oneDNN, the weight and bias gradients from the kernel (float32, cast to the parameters' dtype)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        xb, wb = x.to(torch.bfloat16), weight.to(torch.bfloat16)
        with torch.autocast("cpu", enabled=False):
            y = F.conv2d(xb, wb, None if bias is None else bias.to(torch.bfloat16), 1, 1)
        ctx.save_for_backward(xb, wb)
        ctx.dtypes = x.dtype, weight.dtype, None if bias is None else bias.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor):
        xb, wb = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        dy = dy.to(torch.bfloat16)
        if dy.shape[1] > 1 and dy.stride(1) != 1:
            dy = dy.contiguous(memory_format=torch.channels_last)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            mask = [True, False, False]
            dx = torch.ops.aten.convolution_backward(dy, xb, wb, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
            dx = dx[0].to(x_dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dw, db = torch.ops.diffusionlab_conv.weight_grad(dy, xb, 3)
            if dw.stride() != wb.stride():  # the parameter's own layout, which DDP's gradient buckets expect
                dw = torch.empty_like(wb, dtype=dw.dtype).copy_(dw)  # (a 1-channel one differs in stride(0))
            dw, db = dw.to(w_dtype), None if b_dtype is None else db.to(b_dtype)
        return dx, dw, db


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, ``state_dict``, outputs) whose weight gradient comes from the kernel where
    :func:`applies` and :func:`available`; everything else runs ``nn.Conv2d``'s own forward."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if applies(self, x) and available():
            return _Conv3x3OwnWeightGrad.apply(x, weight, bias)
        return super()._conv_forward(x, weight, bias)
