"""Nearest-neighbour 2x upsampling followed by a 3x3 convolution, computed on the small image.

``conv3x3(interpolate(x, scale_factor=2, mode="nearest"))`` (the U-Net's ``Upsample``, diffusers' ``Upsample2D``)
repeats every input pixel four times before a 3x3 kernel reads them, so each output pixel is a 2x2 window of
the *input* weighted by sums of the 3x3 taps. Along one axis, output ``2i`` reads input rows ``i - 1, i`` with
taps ``(w0, w1 + w2)`` and output ``2i + 1`` reads rows ``i, i + 1`` with ``(w0 + w1, w2)`` (:data:`TAPS`).
Computed that way the layer does 4 multiply-adds per output and input channel instead of 9, with the same
weights (``state_dict`` unchanged) and the same function up to rounding (the tap sums are formed in the
weights' precision, float32 for autocast). Two ways to run it, whichever oneDNN runs faster on this CPU:

- training (:func:`nearest2x_conv3x3` with gradients): one 2x2 convolution of the input padded by 1 with the
  four output phases stacked as ``4 * C_out`` channels, ``[B, C_in, H, W] -> [B, 4 C_out, H + 1, W + 1]``, then
  the phases interleaved into ``[B, C_out, 2H, 2W]`` (:class:`_InterleavePhases`, backward: the reverse);
- without gradients: one transposed convolution (kernel 4, stride 2, padding 1) whose 4 taps per axis are
  ``(w2, w1 + w2, w0 + w1, w0)``: no interleaving pass at all.

Measured (2026-12-06, AMD EPYC Zen 5, one thread, bf16 autocast, channels_last, batch 128, 64 channels; a
one-off probe alternating the three): 16x16 -> 32x32 forward + backward 58.3 ms as interpolate + conv, 38.3 ms
as phases, 55.9 ms as a transposed convolution (its backward is slow); forward alone 19.3 / 13.5 / 10.8 ms.
8x8 -> 16x16: 13.9 / 10.4 / 13.9 ms, forward 4.5 / 3.7 / 2.9 ms. The ``unet_small`` training step
1.033-1.040x, ``unet_small_28`` 0.998-1.029x (its 7x7 and 14x14 inputs pay for the extra phase row and column;
``benchmarks/bench_step_switches.py --switches upsample_conv``, three runs). Off the CPU, for NCHW tensors and
under ``torch.compile`` ``Upsample`` runs the two ops as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Along one axis: rows = the transposed convolution's 4 taps, columns = the 3x3 kernel's taps (w0, w1, w2)
TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
# Output phase a (output row 2i + a) reads input rows (i - 1 + a, i + a) with these taps: phase 0 (w0, w1 + w2),
# phase 1 (w0 + w1, w2); rows of TAPS, since the transposed convolution places them the other way round
PHASE_TAPS = TAPS[torch.tensor([[3, 1], [2, 0]])]  # [phase, tap of the 2x2 window, 3x3 tap]


def applies(x: Tensor) -> bool:
    """Whether :func:`nearest2x_conv3x3` serves ``x``: a 4-d CPU tensor stored channels_last (where it was
    measured), outside ``torch.compile`` (inductor plans the original ops itself)."""
    return (
        x.device.type == "cpu"
        and x.ndim == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.compiler.is_compiling()
    )


def _combined(weight: Tensor, taps: Tensor, equation: str) -> Tensor:
    """``taps`` applied to both spatial axes of ``weight [C_out, C_in, 3, 3]`` (``equation`` names the layout),
    in the weight's own dtype and outside autocast (so float32 sums stay float32)."""
    with torch.autocast(weight.device.type, enabled=False):
        t = taps.to(device=weight.device, dtype=weight.dtype)
        return torch.einsum(equation, t, t, weight)


def phase_weights(weight: Tensor) -> Tensor:
    """``[C_out, C_in, 3, 3] -> [4 C_out, C_in, 2, 2]``: the 2x2 kernels of the output phases, ordered
    (row phase, column phase, output channel)."""
    k = _combined(weight, PHASE_TAPS, "apk,bql,oikl->aboipq")
    return k.reshape(4 * weight.shape[0], weight.shape[1], 2, 2)


def transposed_weights(weight: Tensor) -> Tensor:
    """``[C_out, C_in, 3, 3] -> [C_in, C_out, 4, 4]``: the weight of the equivalent stride-2 transposed
    convolution (``F.conv_transpose2d``'s layout)."""
    return _combined(weight, TAPS, "pk,ql,oikl->iopq")


def _phase_views(full: Tensor, phases: Tensor, h: int, w: int) -> list[tuple[Tensor, Tensor]]:
    """For each output phase (a, b): the views ``full[:, :, 2i + a, 2j + b]`` of ``full [B, C, 2h, 2w]`` and
    ``phases[:, (a, b, :), i + a, j + b]`` of ``phases [B, 4 C, h + 1, w + 1]`` (i < h, j < w), both
    channels_last, as ``[B, C, h, w]`` pairs to copy one way (forward) or the other (backward)."""
    b, c = full.shape[:2]
    f, p = full.view(b, c, h, 2, w, 2), phases.view(b, 2, 2, c, h + 1, w + 1)
    return [(f[:, :, :, a, :, a2], p[:, a, a2, :, a : a + h, a2 : a2 + w]) for a in (0, 1) for a2 in (0, 1)]


class _InterleavePhases(torch.autograd.Function):
    """``[B, 4 C, H + 1, W + 1]`` (phases (a, b) stacked over channels, channels_last) ->
    ``[B, C, 2H, 2W]`` channels_last, ``out[:, :, 2i + a, 2j + b] = y[:, (a, b, :), i + a, j + b]``."""

    @staticmethod
    def forward(ctx, y: Tensor, h: int, w: int) -> Tensor:
        y = y.contiguous(memory_format=torch.channels_last)
        out = torch.empty(y.shape[0], y.shape[1] // 4, 2 * h, 2 * w, dtype=y.dtype, memory_format=torch.channels_last)
        for full, phase in _phase_views(out, y, h, w):
            full.copy_(phase)
        ctx.size = h, w
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, w = ctx.size
        grad = grad.contiguous(memory_format=torch.channels_last)
        b, c = grad.shape[:2]
        dy = torch.empty(b, 4 * c, h + 1, w + 1, dtype=grad.dtype, memory_format=torch.channels_last).zero_()
        for full, phase in _phase_views(grad, dy, h, w):
            phase.copy_(full)
        return dy, None, None


def nearest2x_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` without forming the
    upsampled image: ``[B, C_in, H, W] -> [B, C_out, 2H, 2W]`` channels_last, for ``x`` where :func:`applies`;
    differentiable in all three. Phases with gradients, a transposed convolution without (see above)."""
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return F.conv_transpose2d(x, transposed_weights(weight), bias, stride=2, padding=1)
    y = F.conv2d(x, phase_weights(weight), None if bias is None else bias.repeat(4), padding=1)
    return _InterleavePhases.apply(y, x.shape[2], x.shape[3])
