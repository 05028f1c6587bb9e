"""The fused channels_last bfloat16 GroupNorm (+ SiLU) kernel against float32 PyTorch and against the NCHW detour."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from diffusionlab.nets import fused_group_norm
from diffusionlab.nets.blocks import GroupNorm, _group_norm_nchw
from tests.helpers import require_fused_group_norm, run_without_compiler


@pytest.fixture(autouse=True)
def kernel():
    require_fused_group_norm()


def channels_last_bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


def reference(x, groups, weight, bias, eps, silu, grad, offset=None):
    """float32 PyTorch: output and the gradients of (output * grad).sum() in x, weight, bias (and offset)."""
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x, weight, bias))
    o32 = None if offset is None else offset.detach().float().requires_grad_()
    y = F.group_norm(x32 if o32 is None else x32 + o32[:, :, None, None], groups, w32, b32, eps)
    y = F.silu(y) if silu else y
    y.backward(grad.float())
    return y.detach(), x32.grad, w32.grad, b32.grad, None if o32 is None else o32.grad


# Shapes of the UNets (64 channels in 32 groups at 28x28) and odd ones: channel counts that are no multiple of
# the vector width, one group, one channel per group, 1x1 images, a batch of one.
SHAPES = [((6, 64, 28, 28), 32), ((2, 24, 5, 7), 3), ((3, 20, 4, 4), 1), ((2, 8, 3, 3), 8), ((1, 48, 1, 1), 4)]


@pytest.mark.parametrize("with_offset", [False, True])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize(("shape", "groups"), SHAPES)
def test_fused_matches_float32_forward_and_backward(shape, groups, silu, with_offset):
    torch.manual_seed(0)
    x = channels_last_bf16(2.5 + 3 * torch.randn(shape))  # mean far from 0: the statistics must not cancel
    weight, bias = 1 + 0.3 * torch.randn(shape[1]), 0.5 * torch.randn(shape[1])
    offset = 2 * torch.randn(shape[:2]) if with_offset else None  # a time embedding, [B, C]
    grad = channels_last_bf16(torch.randn(shape))
    eps = 1e-6
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, weight, bias))
    og = None if offset is None else offset.clone().requires_grad_()
    out = fused_group_norm.fused_group_norm(xg, groups, wg, bg, eps, silu, og)
    out.backward(grad)
    y, dx, dw, db, do = reference(x, groups, weight, bias, eps, silu, grad, offset)
    if with_offset:
        torch.testing.assert_close(og.grad, do, atol=1e-2 * do.abs().max().item() + 1e-4, rtol=1e-2)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert xg.grad.dtype == torch.bfloat16 and xg.grad.is_contiguous(memory_format=torch.channels_last)
    # bfloat16 storage: 8 bits of mantissa, so 2^-8 relative plus a little for the statistics.
    torch.testing.assert_close(out.float(), y, atol=1e-2, rtol=8e-3)
    if shape[2] * shape[3] * shape[1] // groups > 1:  # one value per group: x - mean = 0, no gradient to compare
        torch.testing.assert_close(xg.grad.float(), dx, atol=1e-2 * dx.abs().max().item(), rtol=1e-2)
    torch.testing.assert_close(wg.grad, dw, atol=1e-3 * dw.abs().max().item() + 1e-5, rtol=1e-3)
    torch.testing.assert_close(bg.grad, db, atol=1e-3 * db.abs().max().item() + 1e-5, rtol=1e-3)


@pytest.mark.parametrize("silu", [False, True])
def test_fused_agrees_with_the_nchw_detour(silu):
    """Both bf16 routes give the same output to within a bf16 rounding step of the larger values."""
    torch.manual_seed(1)
    x = channels_last_bf16(torch.randn(4, 64, 14, 14))
    weight, bias = torch.randn(64), torch.randn(64)
    fused = fused_group_norm.fused_group_norm(x, 32, weight, bias, 1e-5, silu)
    detour = _group_norm_nchw(x, 32, weight, bias, 1e-5, silu)
    assert (fused.float() - detour.float()).abs().max() <= 2**-7 * detour.float().abs().max()


def test_silu_saturates_exactly_for_extreme_inputs():
    """exp's argument is clamped, so SiLU gives 0 far below zero and x far above, not overflowed garbage."""
    x = channels_last_bf16(torch.tensor([-1e4, -200.0, -90.0, -20.0, 0.0, 20.0, 90.0, 1e4]).reshape(1, 8, 1, 1))
    # One channel per group and a 1x1 image normalise every value to 0; weight 0 and bias = x pass x through.
    out = fused_group_norm.fused_group_norm(x, 8, torch.zeros(8), x.float().flatten(), 1e-5, True)
    torch.testing.assert_close(out.float(), F.silu(x.float()), atol=1e-6, rtol=8e-3)


@pytest.mark.parametrize("route", ["fused", "nchw_detour", "float32"])
def test_groupnorm_module_offset_equals_adding_it_first(route, monkeypatch):
    """``GroupNorm(x, offset)`` is ``GroupNorm(x + offset[:, :, None, None])`` on every route."""
    if route == "nchw_detour":
        monkeypatch.setattr(fused_group_norm, "available", lambda: False)
    torch.manual_seed(2)
    norm = GroupNorm(4, 16, silu=True)
    x, offset = torch.randn(3, 16, 5, 5), torch.randn(3, 16)
    if route != "float32":
        x, offset = channels_last_bf16(x), offset.to(torch.bfloat16)
    assert GroupNorm.fuses(x) == (route == "fused")
    expected = norm(x + offset[:, :, None, None])
    torch.testing.assert_close(norm(x, offset=offset).float(), expected.float(), atol=2e-2, rtol=1e-2)


def test_bf16_parameters_get_bf16_gradients():
    """A network cast to bfloat16 as a whole (weights too) trains through the kernel."""
    x = channels_last_bf16(torch.randn(2, 16, 6, 6)).requires_grad_()
    weight = torch.ones(16, dtype=torch.bfloat16, requires_grad=True)
    bias = torch.zeros(16, dtype=torch.bfloat16, requires_grad=True)
    fused_group_norm.fused_group_norm(x, 4, weight, bias, 1e-5, True).sum().backward()
    assert weight.grad.dtype == bias.grad.dtype == torch.bfloat16
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0


def test_kernel_splits_images_over_pytorchs_threads():
    """The kernel's at::parallel_for uses torch.get_num_threads() threads of PyTorch's own OpenMP pool. Built
    without -fopenmp it ran every image on one thread (2026-12-06: the GroupNorm share of a 2-thread forward
    did not shrink at all); a second OpenMP runtime would give two pools fighting over the cores."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.ops.diffusionlab_gn.parallel_threads(8) == 2
        assert torch.ops.diffusionlab_gn.parallel_threads(1) == 1
        torch.set_num_threads(1)
        assert torch.ops.diffusionlab_gn.parallel_threads(8) == 1
    finally:
        torch.set_num_threads(before)
    maps = "/proc/self/maps"
    if os.path.exists(maps):
        with open(maps) as f:
            runtimes = {line.split()[-1] for line in f if "libgomp" in line or "libiomp" in line}
        assert len(runtimes) == 1, f"more than one OpenMP runtime loaded: {sorted(runtimes)}"


def test_kernel_refuses_inputs_it_does_not_handle():
    w, b = torch.ones(8), torch.zeros(8)
    float32 = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="CPU bfloat16"):
        torch.ops.diffusionlab_gn.forward(float32, w, b, None, 2, 1e-5, False)
    with pytest.raises(RuntimeError, match="channels_last"):
        torch.ops.diffusionlab_gn.forward(torch.randn(2, 8, 4, 4, dtype=torch.bfloat16), w, b, None, 2, 1e-5, False)
    with pytest.raises(RuntimeError, match="do not split into 3 groups"):
        x = channels_last_bf16(torch.randn(2, 8, 4, 4))
        torch.ops.diffusionlab_gn.forward(x, w, b, None, 3, 1e-5, False)
    with pytest.raises(RuntimeError, match="offset of shape"):
        x = channels_last_bf16(torch.randn(2, 8, 4, 4))
        torch.ops.diffusionlab_gn.forward(x, w, b, torch.ones(2, 4), 2, 1e-5, False)
    assert not fused_group_norm.applies(torch.randn(2, 8, 4, 4, dtype=torch.bfloat16))  # NCHW: not for the kernel
    assert fused_group_norm.applies(channels_last_bf16(torch.randn(2, 8, 4, 4)))


def test_switch_turns_the_kernel_off():
    code = "from diffusionlab.nets import fused_group_norm as f; print(f.available())"
    env = {"DIFFUSIONLAB_FUSED_GROUPNORM": "0", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_a_compiler_the_detour_is_used_with_a_warning(tmp_path):
    """No C++ compiler on PATH and an empty extensions folder: the build fails, a warning says why and what is
    used instead, and GroupNorm still works (the NCHW detour)."""
    code = (
        "import torch, warnings\n"
        "from diffusionlab.nets.blocks import GroupNorm\n"
        "from diffusionlab.nets import fused_group_norm as f\n"
        "x = torch.randn(2, 8, 4, 4).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)\n"
        "y = GroupNorm(2, 8, silu=True)(x.requires_grad_())\n"
        "y.sum().backward()\n"
        "print(f.available(), y.dtype, y.is_contiguous(memory_format=torch.channels_last), x.grad.shape)\n"
    )
    out = run_without_compiler(code, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "torch.bfloat16", "True", "torch.Size([2,", "8,", "4,", "4])"]
    assert "could not be built" in out.stderr and "NCHW copy instead" in out.stderr


def test_a_killed_build_leaves_no_lock_that_blocks_the_next(tmp_path):
    """cpp_extension's own lock file, left behind by a build killed half-way, would make every later load wait
    for ever; under our flock it is known to be stale and removed, so a fresh build completes."""
    code = (
        "from diffusionlab.nets import fused_group_norm as f\n"
        "from diffusionlab.utils import cpp_kernels as k\n"
        "(k.build_dir(k.build_name(f.SOURCE, f.PREFIX, f.CFLAGS)) / 'lock').write_text('')\n"
        "print(f.available())\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]
    assert "building fused GroupNorm kernel" in out.stderr


def test_portable_build_matches_the_avx512_one(tmp_path):
    """Forward and backward have AVX-512 (BF16) paths and portable ones for other CPUs; built without
    AVX512-BF16 the portable paths run and give the same values within one bfloat16 rounding step (24 channels:
    the AVX paths' masked tail; with and without an offset)."""
    torch.manual_seed(0)
    x = channels_last_bf16(torch.randn(3, 24, 5, 7) * 2 + 0.5)
    grad = channels_last_bf16(torch.randn(3, 24, 5, 7))
    weight, bias, offset = torch.rand(24) + 0.5, torch.randn(24), torch.randn(3, 24)
    torch.save((x, grad, weight, bias, offset), tmp_path / "inputs.pt")
    code = (
        "import sys, torch\n"
        "from diffusionlab.nets import fused_group_norm as f\n"
        "f.CFLAGS = f.CFLAGS + ['-mno-avx512bf16']\n"
        "assert f.available()\n"
        "x, g, w, b, o = torch.load(sys.argv[1])\n"
        "out = []\n"
        "for s in (False, True):\n"
        "    for off in (None, o):\n"
        "        y, mean, rstd = torch.ops.diffusionlab_gn.forward(x, w, b, off, 4, 1e-5, s)\n"
        "        out.append([y, *torch.ops.diffusionlab_gn.backward(g, x, mean, rstd, w, b, off, 4, s)])\n"
        "torch.save(out, sys.argv[2])\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    args = [sys.executable, "-c", code, str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    portable = iter(torch.load(tmp_path / "out.pt"))
    for silu in (False, True):
        for off in (None, offset):
            y, mean, rstd = torch.ops.diffusionlab_gn.forward(x, weight, bias, off, 4, 1e-5, silu)
            ours = [y, *torch.ops.diffusionlab_gn.backward(grad, x, mean, rstd, weight, bias, off, 4, silu)]
            theirs = next(portable)
            expected = reference(x, 4, weight, bias, 1e-5, silu, grad, off)
            # y and dx: both within bf16 rounding of float32, so within about one step of each other
            for mine, other, exact in zip(ours[:2], theirs[:2], expected[:2], strict=True):
                torch.testing.assert_close(mine.float(), exact, atol=2e-2 * exact.abs().max().item(), rtol=1e-2)
                assert (mine.float() - other.float()).abs().max() <= 2**-7 * exact.abs().max()
            # dweight, dbias (and doffset): float32 sums of values that differ by the sigmoids (< 2^-14 apart)
            for mine, other in zip(ours[2:], theirs[2:], strict=True):
                assert mine.shape == other.shape
                if other.numel():  # doffset is empty without an offset
                    torch.testing.assert_close(mine, other, atol=1e-4 * other.abs().max().item() + 1e-6, rtol=1e-4)
            if off is not None:
                torch.testing.assert_close(ours[4], expected[4], atol=1e-2 * expected[4].abs().max().item(), rtol=1e-2)
