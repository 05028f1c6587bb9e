"""Winograd convolutions of the FID Inception: the Cook-Toom transforms are exact in float64, the C++ kernel
equals the direct convolution to float32 rounding (every variant, uneven tiles, padding, several tile
blocks), the transformed weights follow ``load_state_dict``, and bad input is refused by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusionlab.metrics import winograd
from diffusionlab.metrics.inception_folded import FoldedConvReLU, use_winograd
from diffusionlab.metrics.winograd import TILES, WinogradConvReLU, cook_toom, eligible, tile_for
from tests.helpers import require_winograd, run_without_compiler


@pytest.mark.parametrize("m, r", [(4, 3), (4, 5), (4, 7), (2, 3), (6, 3)])
def test_cook_toom_transforms_compute_the_correlation_exactly_in_float64(m, r):
    at, g, bt = cook_toom(m, r)
    assert at.shape == (m, m + r - 1) and g.shape == (m + r - 1, r) and bt.shape == (m + r - 1, m + r - 1)
    gen = torch.Generator().manual_seed(m * 10 + r)
    d, k = torch.randn(50, m + r - 1, generator=gen, dtype=torch.float64), torch.randn(50, r, dtype=torch.float64)
    ours = ((k @ g.T) * (d @ bt.T)) @ at.T  # [50, m]
    direct = torch.stack([(d[:, i : i + r] * k).sum(1) for i in range(m)], 1)
    torch.testing.assert_close(ours, direct, atol=1e-11, rtol=1e-11)


def test_cook_toom_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="needs 11 points"):
        cook_toom(6, 7)
    with pytest.raises(ValueError, match="m, r >= 1"):
        cook_toom(0, 3)


def _conv(kernel, c_in=48, c_out=48, padding=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    padding = padding if padding is not None else (kh // 2, kw // 2)
    weight = torch.randn(c_out, c_in, kh, kw, generator=gen) / (c_in * kh * kw) ** 0.5
    bias = torch.randn(c_out, generator=gen) * 0.1
    return weight.contiguous(memory_format=torch.channels_last), bias, padding


@pytest.mark.parametrize("kernel, tile", [(kernel, tile) for kernel, tiles in TILES.items() for tile in tiles])
@pytest.mark.parametrize("same_size", [True, False])
def test_kernel_equals_the_direct_convolution(kernel, tile, same_size, monkeypatch):
    """13 x 11 images (no tile count divides them) with 'same' padding and without, every kernel and tile: the
    ReLU'd output equals F.conv2d's within 5e-5 of its largest value (Winograd's float32 rounding, ~1e-5
    measured; the direct convolution's own is ~2e-7), also when the tiles run in blocks of 7 (partial
    blocks)."""
    require_winograd()
    monkeypatch.setattr(winograd, "tile_for", lambda *args: tile)
    weight, bias, padding = _conv(kernel, padding=None if same_size else (0, 0))
    x = torch.relu(torch.randn(2, 48, 13, 11, generator=torch.Generator().manual_seed(1)))
    x = x.contiguous(memory_format=torch.channels_last)
    layer = WinogradConvReLU(weight, bias, padding)
    exact = F.relu(F.conv2d(x.double(), weight.double(), bias.double(), 1, padding))
    out = layer(x)
    assert out.shape == exact.shape and out.is_contiguous(memory_format=torch.channels_last)
    scale = exact.abs().max()
    assert (out - exact).abs().max() <= 5e-5 * scale
    assert (out == 0).any() and (out > 0).any()  # the ReLU is applied, and not to everything
    monkeypatch.setattr(winograd, "BLOCK", 7)
    assert (layer(x) - exact).abs().max() <= 5e-5 * scale


@pytest.mark.parametrize("inference", [False, True])
def test_transformed_weights_follow_load_state_dict(inference):
    """Also when the layer is built and reloaded under torch.inference_mode (a Lightning test loop): its
    parameters are then inference tensors, which have no version counter."""
    require_winograd()
    weight, bias, padding = _conv((3, 3))
    other, other_bias, _ = _conv((3, 3), seed=5)
    x = torch.rand(1, 48, 9, 9).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(inference):
        layer = WinogradConvReLU(weight, bias, padding)
        before = layer(x)
        layer.load_state_dict({"weight": other, "bias": other_bias})
        after = layer(x)
    expected = F.relu(F.conv2d(x, other, other_bias, 1, padding))
    assert not torch.allclose(before, expected, atol=1e-3)
    torch.testing.assert_close(after, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel_runs", [True, False])
def test_write_into_fills_only_its_channels_of_a_wider_output(kernel_runs, monkeypatch):
    """A mixed block's concatenation slot: channels [16, 64) of an 80-channel output get exactly the layer's
    output, the others keep what they held (NaN here); the same without the kernel (a slice copy)."""
    if kernel_runs:
        require_winograd()
    else:
        monkeypatch.setattr(winograd, "available", lambda: False)
    weight, bias, padding = _conv((3, 3))
    layer = WinogradConvReLU(weight, bias, padding)
    x = torch.rand(2, 48, 9, 7).contiguous(memory_format=torch.channels_last)
    out = torch.full((2, 80, 9, 7), float("nan")).contiguous(memory_format=torch.channels_last)
    layer.write_into(x, out, 16)
    assert torch.equal(out[:, 16:64], layer(x))
    assert out[:, :16].isnan().all() and out[:, 64:].isnan().all()
    if kernel_runs:  # a slot past the output's last channel is refused by name
        with pytest.raises(RuntimeError, match="out must be a channels_last float32"):
            torch.ops.diffusionlab_wino.conv_into(*layer._kernel_arguments(x), out, 40)


def test_without_the_kernel_the_direct_convolution_runs(monkeypatch):
    weight, bias, padding = _conv((1, 7))
    layer = WinogradConvReLU(weight, bias, padding)
    monkeypatch.setattr(winograd, "available", lambda: False)
    x = torch.rand(2, 48, 6, 9)
    torch.testing.assert_close(layer(x), F.relu(F.conv2d(x, weight, bias, 1, padding)), atol=0, rtol=0)


def test_tile_choice_minimises_products_per_output_pixel():
    assert tile_for((3, 3), 8, 8) == (4, 4)  # 6x6 tiles would compute 12x12 for 8x8
    assert tile_for((3, 3), 35, 35) == (6, 6) and tile_for((3, 3), 147, 147) == (6, 6)
    assert tile_for((1, 7), 17, 17) == (1, 4) and tile_for((5, 5), 35, 35) == (4, 4)


def test_eligible_convolutions_and_the_inception_swap():
    """Stride 1, a kernel with a variant, >= 48 input channels, multiples of 16; use_winograd swaps exactly
    those FoldedConvReLU modules and keeps their parameters."""
    w = torch.zeros(64, 48, 3, 3)
    assert eligible(w, (1, 1), (1, 1)) and eligible(w, (1, 1), (0, 0))
    assert not eligible(w, (2, 2), (1, 1))  # strided
    assert eligible(torch.zeros(64, 32, 3, 3), (1, 1), (1, 1))  # 32 x 64 channels: pays
    assert not eligible(torch.zeros(32, 32, 3, 3), (1, 1), (1, 1))  # too few channels to pay
    assert not eligible(torch.zeros(64, 56, 3, 3), (1, 1), (1, 1))  # not a multiple of 16
    assert not eligible(torch.zeros(64, 48, 1, 1), (1, 1), (0, 0))  # nothing to save
    assert not eligible(w, (1, 1), (3, 3))  # padding as large as the kernel
    with pytest.raises(ValueError, match="no Winograd variant for weight"):
        WinogradConvReLU(torch.zeros(64, 48, 2, 2), torch.zeros(64), (0, 0))

    class Basic(torch.nn.Module):
        def __init__(self, c_in, c_out, k, stride=1, padding=0):
            super().__init__()
            self.conv = torch.nn.Conv2d(c_in, c_out, k, stride, padding, bias=False)
            self.bn = torch.nn.BatchNorm2d(c_out, eps=1e-3).eval()

    block = torch.nn.Sequential(Basic(64, 96, 3, padding=1), Basic(96, 96, 3, stride=2), Basic(96, 48, 1))
    folded = torch.nn.Sequential(*(FoldedConvReLU(b) for b in block))
    weights = [m.weight.clone() for m in folded]
    swapped = use_winograd(folded)
    assert [type(m) for m in swapped] == [WinogradConvReLU, FoldedConvReLU, FoldedConvReLU]
    assert all(torch.equal(m.weight, w) for m, w in zip(swapped, weights, strict=True))


def test_kernel_refuses_bad_input_by_name():
    require_winograd()
    weight, bias, padding = _conv((3, 3))
    layer = WinogradConvReLU(weight, bias, padding)
    u, transforms = layer.transformed((4, 4))
    x = torch.rand(1, 48, 8, 8)  # NCHW
    with pytest.raises(RuntimeError, match="channels_last"):
        torch.ops.diffusionlab_wino.conv(x, u, bias, *transforms, 1, 1, True, 64)
    x = x.contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="bias must be contiguous float32 \\[48\\]"):
        torch.ops.diffusionlab_wino.conv(x, u, bias[:16], *transforms, 1, 1, True, 64)
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        torch.ops.diffusionlab_wino.conv(x[:, :, :1, :1], u, bias, *transforms, 0, 0, True, 64)


def test_without_a_compiler_direct_convolutions_run_with_a_warning(tmp_path):
    """No C++ compiler on PATH and an empty extensions folder: the build fails, one warning says why and what
    runs instead, and the layer still computes its convolution (directly); DIFFUSIONLAB_WINOGRAD=0 skips the
    attempt silently."""
    code = (
        "import torch, torch.nn.functional as F\n"
        "from diffusionlab.metrics import winograd\n"
        "w, b = torch.randn(48, 48, 3, 3), torch.randn(48)\n"
        "layer = winograd.WinogradConvReLU(w, b, (1, 1))\n"
        "x = torch.rand(1, 48, 6, 6).contiguous(memory_format=torch.channels_last)\n"
        "print(winograd.available(), torch.equal(layer(x), F.relu(F.conv2d(x, w, b, 1, 1))))\n"
    )
    out = run_without_compiler(code, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]
    assert "Winograd convolution kernel could not be built" in out.stderr and "direct convolutions" in out.stderr
    off = run_without_compiler(code, tmp_path, DIFFUSIONLAB_WINOGRAD="0")
    assert off.returncode == 0 and off.stdout.split() == ["False", "True"] and "could not" not in off.stderr
