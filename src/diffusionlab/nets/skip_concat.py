"""Channel concatenation for U-Net skip connections whose backward hands each input a dense gradient.

``torch.cat``'s backward returns channel slices of the concatenation's gradient. In channels_last they are
strided views (``[B, C_i, H, W]`` with the channel stride of the whole ``C``), and every op that meets one
pays for it: the skip tensor's gradient is summed with its other consumer's, and PyTorch's bfloat16 add over
a strided channel slice runs 5-9x slower than over a dense tensor (2.5-2.7 ms against 0.3 ms for
``[128, 64, 16, 16]``, one thread); the GroupNorm kernel and oneDNN copy it first. :func:`cat_channels`
copies each slice into a dense channels_last tensor once, in the concatenation's backward.
Measured 2026-12-06 (Zen 5, one thread, ``unet_small`` bf16 training step, batch 128, ``torch.profiler``,
alternating): the step's ``aten::add`` time 25.0 -> 8.4 ms; the step 1.02x (``unet_small_28`` 1.03x,
``benchmarks/bench_step_switches.py --switches skip_concat``). The seed's ``ContextUnet`` keeps ``torch.cat``:
there the copies cost more than they save (0.98-0.99x).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _channels_last(t: Tensor) -> bool:
    return t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


class _CatChannels(torch.autograd.Function):
    """``torch.cat(tensors, dim=1)``; backward: the gradient split by channels, each part dense channels_last."""

    @staticmethod
    def forward(ctx, *tensors: Tensor) -> Tensor:
        ctx.channels = [t.shape[1] for t in tensors]
        return torch.cat(tensors, dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return tuple(g.contiguous(memory_format=torch.channels_last) for g in grad.split(ctx.channels, dim=1))


def cat_channels(*tensors: Tensor) -> Tensor:
    """``[B, C_1, H, W], ..., [B, C_n, H, W] -> [B, C_1 + ... + C_n, H, W]``, equal to ``torch.cat(dim=1)``.

    When gradients are recorded and every input is channels_last, the backward gives each input a dense
    channels_last gradient (see the module docstring). Otherwise, and under ``torch.compile`` (inductor plans
    its own layouts), it is ``torch.cat``.
    """
    if (
        torch.is_grad_enabled()
        and any(t.requires_grad for t in tensors)
        and all(_channels_last(t) for t in tensors)
        and not torch.compiler.is_compiling()
    ):
        return _CatChannels.apply(*tensors)
    return torch.cat(tensors, dim=1)
