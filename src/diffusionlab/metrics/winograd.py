"""Winograd convolutions for the FID Inception on the CPU: the same float32 results with 2-6x fewer products.

A stride-1 convolution with an ``r``-tap kernel computes ``m`` neighbouring outputs from ``m + r - 1`` inputs;
Winograd's minimal filtering algorithm F(m, r) (Cook-Toom: evaluate at ``m + r - 2`` points and infinity, then
interpolate) does it with ``m + r - 1`` products instead of ``m * r``, nested over height and width for 2-d
kernels. Here F(4x4, 3x3) needs 36 products per 16 outputs instead of 144 (4x fewer), F(6x6, 3x3) 64 per 36
(5.1x), F(4x4, 5x5) 64 instead of 400, F(1x4, 1x7) 10 instead of 28, F(1x4, 1x3) 6 instead of 12. The
transforms add rounding: measured against float64, 4e-6 to 2.4e-5 of a layer's largest output, against 2e-7
for oneDNN's direct convolution; the FID features move by ~1e-5 relative (``tests/test_winograd.py`` asserts
the per-layer error, ``tests/test_metrics_features.py`` the features to 1e-4), so FIDs do not move.

The arithmetic runs in ``kernels/winograd_nhwc.cpp`` (input and output transforms; the products as one
grouped 1x1 oneDNN convolution per block of tiles), built once per machine like the fused GroupNorm
(:mod:`diffusionlab.utils.cpp_kernels`; ``DIFFUSIONLAB_WINOGRAD=0`` switches it off). Without it, or off the
CPU, :class:`WinogradConvReLU` runs the direct convolution.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusionlab.utils import cpp_kernels

SOURCE = Path(__file__).with_name("kernels") / "winograd_nhwc.cpp"
PREFIX = "diffusionlab_wino"
ENV_SWITCH = "DIFFUSIONLAB_WINOGRAD"
# output tiles (rows, columns) per kernel size, the variants the C++ kernel is compiled for; per call the one
# with the fewest products per output pixel for that output size is used (tile_for)
TILES = {
    (3, 3): ((4, 4), (6, 6)),
    (5, 5): ((4, 4),),
    (1, 7): ((1, 4),),
    (7, 1): ((4, 1),),
    (1, 3): ((1, 4),),
    (3, 1): ((4, 1),),
}
# below this many input x output channels the products are too small for the transforms to pay (measured on a
# 2-core AMD EPYC Zen 5, 2026-12-06, F(6x6, 3x3): 32 -> 64 channels at 147x147 1.38x, 32 -> 32 0.85x)
MIN_CHANNEL_PRODUCT = 32 * 64
LANES = 16  # the kernel's channel vector: input and output channels must be multiples of it
BLOCK = 512  # tiles per grouped product (oneDNN's fastest range here: 512 tiles ~460 GFLOP/s, 1296+ ~120)
# interpolation points (besides infinity) for F(m, r) with m + r - 2 of them: small, exact in binary
POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2), 3, -3)


@cache
def available() -> bool:
    """True once the kernel is compiled and loaded (``torch.ops.diffusionlab_wino``); False, with the reason
    printed once, when it is switched off or cannot be built."""
    return cpp_kernels.load_kernel(
        SOURCE,
        PREFIX,
        "Winograd convolution kernel",
        ENV_SWITCH,
        "the FID Inception keeps oneDNN's direct convolutions (slower)",
    )


@cache
def cook_toom(m: int, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(AT [m, a], G [a, r], BT [a, a])`` float64 with ``a = m + r - 1``: for an input row ``d [a]`` and a
    kernel ``g [r]``, ``AT @ ((G @ g) * (BT @ d))`` is the correlation ``y[i] = sum_k g[k] d[i + k]``, ``i < m``.
    AT and G come from the points (Vandermonde rows scaled by the Lagrange denominators, infinity last); BT
    solves the identity above exactly (to float64 rounding, checked)."""
    a = m + r - 1
    if m < 1 or r < 1:
        raise ValueError(f"F(m, r) needs m, r >= 1, got F({m}, {r})")
    if a == 1:
        one = torch.ones(1, 1, dtype=torch.float64)
        return one, one, one
    if a - 1 > len(POINTS):
        raise ValueError(f"F({m}, {r}) needs {a - 1} points, only {len(POINTS)} are defined")
    points = [Fraction(p) for p in POINTS[: a - 1]]
    at, g = torch.zeros(m, a, dtype=torch.float64), torch.zeros(a, r, dtype=torch.float64)
    for j, p in enumerate(points):
        denominator = Fraction(1)
        for q in points:
            denominator *= p - q if q != p else 1
        at[:, j] = torch.tensor([float(p**i) for i in range(m)], dtype=torch.float64)
        g[j] = torch.tensor([float(p**k / denominator) for k in range(r)], dtype=torch.float64)
    at[m - 1, a - 1] = g[a - 1, r - 1] = 1.0  # the point at infinity
    # sum_j AT[i, j] G[j, k] BT[j, l] = [l == i + k] for all i, k, l: linear in BT, one system per column l
    coefficients = (at[:, None, :] * g.T[None, :, :]).reshape(m * r, a)  # row (i, k), column j
    shifts = torch.arange(m)[:, None] + torch.arange(r)[None, :]  # i + k
    target = (shifts.reshape(-1, 1) == torch.arange(a)[None, :]).double()  # [(i, k), l]
    bt = torch.linalg.lstsq(coefficients, target).solution  # [j, l]
    residual = (coefficients @ bt - target).abs().max().item()
    if residual > 1e-9:
        raise ArithmeticError(f"no exact F({m}, {r}) transform for these points (residual {residual:.1e})")
    return at, g, bt


def eligible(weight: Tensor, stride, padding) -> bool:
    """Whether a float32 ``[C_out, C_in, kh, kw]`` convolution with this stride and padding has a Winograd
    variant here that pays: stride 1, a kernel in :data:`TILES`, channels multiples of :data:`LANES` with
    ``C_in * C_out >=`` :data:`MIN_CHANNEL_PRODUCT`, padding smaller than the kernel."""
    c_out, c_in, kh, kw = weight.shape
    ph, pw = (padding, padding) if isinstance(padding, int) else tuple(padding)
    return (
        tuple(stride) in ((1, 1), (1,))
        and (kh, kw) in TILES
        and c_in * c_out >= MIN_CHANNEL_PRODUCT
        and c_in % LANES == 0
        and c_out % LANES == 0
        and 0 <= ph < kh
        and 0 <= pw < kw
    )


def tile_for(kernel: tuple[int, int], out_h: int, out_w: int) -> tuple[int, int]:
    """The output tile of :data:`TILES` ``[kernel]`` with the fewest products per output pixel for an
    ``out_h x out_w`` output (tiles hanging over its edge count whole): e.g. 4x4 for 8x8 outputs, 6x6 for
    35x35 (1.88 products per pixel against 2.38)."""

    def products_per_pixel(tile: tuple[int, int]) -> float:
        (mh, mw), (kh, kw) = tile, kernel
        return -(-out_h // mh) * -(-out_w // mw) * (mh + kh - 1) * (mw + kw - 1) / (out_h * out_w)

    return min(TILES[kernel], key=products_per_pixel)


class WinogradConvReLU(nn.Module):
    """``relu(conv2d(x, weight, bias, padding=padding))`` (stride 1) by Winograd on the CPU in float32:
    ``[B, C_in, H, W] -> [B, C_out, H + 2 ph - kh + 1, W + 2 pw - kw + 1]``, channels-last out, with the tile
    of :func:`tile_for` that output size. The parameters are those of the direct convolution (same state dict
    keys and values); the transformed weights ``[A * C_out, C_in, 1, 1]`` (A = tile points) are computed in
    float64 per tile size and again whenever ``weight`` changes (``load_state_dict`` included, also for
    inference tensors). Other devices and dtypes run the direct convolution."""

    def __init__(self, weight: Tensor, bias: Tensor, padding: tuple[int, int]):
        super().__init__()
        if not eligible(weight, (1, 1), padding):
            raise ValueError(f"no Winograd variant for weight {tuple(weight.shape)} with padding {padding}")
        self.padding = tuple(padding)
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone().float().contiguous(), requires_grad=False)
        self._cached: dict[tuple[int, int], tuple[tuple, Tensor, tuple[Tensor, ...]]] = {}  # per tile

    def transformed(self, tile: tuple[int, int]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``(U, (BTh, BTw, ATh, ATw))`` for ``tile``: ``U = Gh g Gw^T`` per (output, input) channel pair as
        grouped 1x1 weights ``[A * C_out, C_in, 1, 1]`` float32 channels-last (group ``a * aw + b`` holds tile
        point ``(a, b)``) and the float32 transforms of F(tile, kernel)."""
        try:
            key = (self.weight.data_ptr(), self.weight._version)
        except RuntimeError:  # an inference tensor (made under torch.inference_mode) has no version counter
            key = (self.weight.data_ptr(), None)
        if tile not in self._cached or self._cached[tile][0] != key:
            (ath, gh, bth), (atw, gw, btw) = (cook_toom(m, r) for m, r in zip(tile, self.weight.shape[2:], strict=True))
            u = torch.einsum("ai,ocij,bj->aboc", gh, self.weight.detach().double().cpu(), gw)
            u = u.reshape(-1, self.weight.shape[1], 1, 1).float()  # [A * C_out, C_in, 1, 1]
            transforms = tuple(t.float().contiguous() for t in (bth, btw, ath, atw))
            self._cached[tile] = (key, u.contiguous(memory_format=torch.channels_last), transforms)
        return self._cached[tile][1:]

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._cached = {}  # new weights, copied in place (an inference tensor's copy leaves no version trace)

    def _kernel_arguments(self, x: Tensor) -> tuple | None:
        """The kernel's arguments for ``x`` up to ``block``, or None where it does not run (another device or
        dtype, or no kernel)."""
        if x.device.type != "cpu" or x.dtype != torch.float32 or not available():
            return None
        kh, kw = self.weight.shape[2:]
        out_h, out_w = x.shape[2] + 2 * self.padding[0] - kh + 1, x.shape[3] + 2 * self.padding[1] - kw + 1
        u, transforms = self.transformed(tile_for((kh, kw), out_h, out_w))
        x = x.contiguous(memory_format=torch.channels_last)
        return (x, u, self.bias, *transforms, *self.padding, True, BLOCK)

    def forward(self, x: Tensor) -> Tensor:
        arguments = self._kernel_arguments(x)
        if arguments is None:
            return F.relu_(F.conv2d(x, self.weight, self.bias, 1, self.padding))
        return torch.ops.diffusionlab_wino.conv(*arguments)

    def write_into(self, x: Tensor, out: Tensor, offset: int) -> None:
        """``out[:, offset : offset + C_out] = self(x)``, written in place by the kernel when it runs (``out``:
        a channels-last ``[B, C_total, H', W']`` tensor, e.g. a concatenation being filled)."""
        arguments = self._kernel_arguments(x)
        if arguments is None or out.dtype != torch.float32 or not out.is_contiguous(memory_format=torch.channels_last):
            out[:, offset : offset + self.weight.shape[0]] = self(x)
        else:
            torch.ops.diffusionlab_wino.conv_into(*arguments, out, offset)
