"""The AVX512-BF16 convolution weight-gradient kernel against float64 sums, and the Conv2d that routes to it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusionlab.nets import conv_weight_grad as cw
from diffusionlab.nets.unet import UNet
from tests.helpers import require_cpp_kernel, run_without_compiler

needs_avx512_bf16 = pytest.mark.skipif(
    not torch.cpu._is_avx512_bf16_supported(), reason="the kernel needs a CPU with avx512_bf16"
)


@pytest.fixture
def kernel(monkeypatch):
    """The kernel switched on (``DIFFUSIONLAB_CONV_WEIGHT_GRAD=1``: also on AMX CPUs, where ``auto`` leaves it to
    oneDNN) and built; the cached answer of ``available()`` is reset before and after."""
    if not torch.cpu._is_avx512_bf16_supported():
        pytest.skip("the kernel needs a CPU with avx512_bf16")
    monkeypatch.setenv(cw.ENV_SWITCH, "1")
    cw.available.cache_clear()
    require_cpp_kernel("convolution weight-gradient kernel", cw.available, "oneDNN computes weight gradients")
    yield
    cw.available.cache_clear()


def channels_last_bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


def float64_sums(dy: torch.Tensor, x: torch.Tensor, k: int):
    """dw and db of a stride-1 'same' k x k convolution, in float64 from the same bfloat16 values."""
    co, ci = dy.shape[1], x.shape[1]
    w = torch.zeros(co, ci, k, k, dtype=torch.float64)
    pad = [(k - 1) // 2] * 2
    _, dw, db = torch.ops.aten.convolution_backward(
        dy.double(), x.double(), w, [co], [1, 1], pad, [1, 1], False, [0, 0], 1, [False, True, True]
    )
    return dw, db


def relative_error(ours: torch.Tensor, exact: torch.Tensor) -> float:
    return ((ours.double() - exact).abs().max() / exact.abs().max()).item()


# (N, Ci, Co, H, W, k): the UNets' shapes and odd ones: an odd batch (a zero partner image), odd widths, 1 output
# channel (the UNet's last conv), 48 input channels (a tile of 3 vectors), 40 outputs (a partial register
# tile), 128 inputs (two tiles), a 40x40 image (bands of 12 rows with halo rows between them), 1x1 and 5x5
# kernels, and one 1x1 image (all but the centre tap read the zero border).
SHAPES = [
    (4, 64, 64, 16, 16, 3),
    (5, 32, 7, 9, 7, 3),
    (4, 48, 1, 8, 8, 3),
    (3, 16, 40, 5, 6, 3),
    (2, 128, 64, 7, 7, 3),
    (3, 32, 16, 40, 40, 3),
    (3, 32, 24, 6, 5, 1),
    (2, 16, 8, 9, 11, 5),
    (1, 16, 3, 1, 1, 3),
]


@pytest.mark.parametrize(("n", "ci", "co", "h", "w", "k"), SHAPES)
def test_kernel_matches_float64_sums(kernel, n, ci, co, h, w, k):
    """Products of bfloat16 numbers are exact in float32: only the float32 summation differs from float64."""
    torch.manual_seed(0)
    x = channels_last_bf16(torch.randn(n, ci, h, w) + 0.5)  # a mean: sums that do not cancel to nothing
    dy = channels_last_bf16(torch.randn(n, co, h, w))
    dw, db = torch.ops.diffusionlab_conv.weight_grad(dy, x, k)
    exact_dw, exact_db = float64_sums(dy, x, k)
    assert dw.dtype == db.dtype == torch.float32 and dw.shape == (co, ci, k, k) and db.shape == (co,)
    assert dw.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(dw, exact_dw) < 1e-5
    assert relative_error(db, exact_db) < 1e-5


def test_kernel_reads_a_channel_slice_in_place(kernel):
    """dy may be a channel slice of a larger channels_last tensor (the backward of a concatenation)."""
    torch.manual_seed(1)
    x = channels_last_bf16(torch.randn(4, 32, 8, 8))
    wide = channels_last_bf16(torch.randn(4, 96, 8, 8))
    dy = wide[:, 32:64]
    assert dy.stride(1) == 1 and not dy.is_contiguous(memory_format=torch.channels_last)
    dw, db = torch.ops.diffusionlab_conv.weight_grad(dy, x, 3)
    dense = torch.ops.diffusionlab_conv.weight_grad(dy.contiguous(memory_format=torch.channels_last), x, 3)
    assert torch.equal(dw, dense[0]) and torch.equal(db, dense[1])


def test_kernel_splits_blocks_over_pytorchs_threads(kernel):
    """Each thread sums its own blocks; the totals agree with one thread's to float32 rounding."""
    torch.manual_seed(2)
    x = channels_last_bf16(torch.randn(16, 32, 16, 16))
    dy = channels_last_bf16(torch.randn(16, 32, 16, 16))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.diffusionlab_conv.weight_grad(dy, x, 3)
        torch.set_num_threads(2)
        two = torch.ops.diffusionlab_conv.weight_grad(dy, x, 3)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_kernel_refuses_inputs_it_does_not_handle(kernel):
    x, dy = channels_last_bf16(torch.randn(2, 16, 4, 4)), channels_last_bf16(torch.randn(2, 8, 4, 4))
    cases = [
        ((dy.float(), x, 3), "must be bfloat16"),
        ((dy, x.contiguous(), 3), "channels_last"),
        ((dy, channels_last_bf16(torch.randn(2, 24, 4, 4)), 3), "multiple of 16"),
        ((dy, x, 2), "must be odd"),
        ((dy[:, :, :3], x, 3), "keeps N, H, W"),
        ((dy[0], x, 3), "4-d"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.diffusionlab_conv.weight_grad(*args)


def test_the_flop_counter_knows_the_kernel(kernel):
    x = channels_last_bf16(torch.randn(2, 16, 6, 6))
    dy = channels_last_bf16(torch.randn(2, 8, 6, 6))
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        torch.ops.diffusionlab_conv.weight_grad(dy, x, 3)
    assert counter.get_total_flops() == 2 * 2 * 6 * 6 * 8 * 16 * 9


def conv_pair(cin: int, cout: int, **kw):
    """Our Conv2d and an nn.Conv2d with the same weights, channels_last."""
    torch.manual_seed(3)
    ours = cw.Conv2d(cin, cout, **kw).to(memory_format=torch.channels_last)
    plain = nn.Conv2d(cin, cout, **kw).to(memory_format=torch.channels_last)
    plain.load_state_dict(ours.state_dict())
    return ours, plain


def test_conv2d_matches_autocast_and_tracks_float32(kernel):
    """Under bf16 autocast: the same output and input gradient as nn.Conv2d (both from oneDNN), and weight and
    bias gradients at least as close to float32's as autocast's (which rounds them to bf16 on the way)."""
    ours, plain = conv_pair(32, 48, kernel_size=3, padding=1)
    x = torch.randn(6, 32, 12, 12).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(6, 48, 12, 12)
    xs = [x.clone().requires_grad_() for _ in range(3)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_plain = ours(xs[0]), plain(xs[1])
    assert "OwnWeightGrad" in type(y.grad_fn).__name__  # the kernel's route was taken
    assert torch.equal(y, y_plain)
    y.float().backward(grad)
    y_plain.float().backward(grad)
    exact = nn.Conv2d(32, 48, 3, padding=1)
    exact.load_state_dict(ours.state_dict())
    exact(xs[2]).backward(grad)
    assert torch.equal(xs[0].grad, xs[1].grad)
    for mine, theirs, truth in [
        (ours.weight.grad, plain.weight.grad, exact.weight.grad),
        (ours.bias.grad, plain.bias.grad, exact.bias.grad),
    ]:
        assert mine.dtype == torch.float32
        error, autocast_error = relative_error(mine, truth.double()), relative_error(theirs, truth.double())
        assert error < 1e-2 and error <= autocast_error + 1e-4, (error, autocast_error)


def test_bf16_weights_get_bf16_gradients(kernel):
    ours, _ = conv_pair(16, 16, kernel_size=3, padding=1)
    ours = ours.to(torch.bfloat16)
    x = channels_last_bf16(torch.randn(3, 16, 6, 6)).requires_grad_()
    y = ours(x)
    assert "OwnWeightGrad" in type(y.grad_fn).__name__
    y.float().square().sum().backward()
    assert ours.weight.grad.dtype == ours.bias.grad.dtype == x.grad.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("case", "kw", "cin", "layout", "autocast", "grad"),
    [
        ("stride 2", dict(kernel_size=3, padding=1, stride=2), 16, "cl", True, True),
        ("1x1", dict(kernel_size=1), 16, "cl", True, True),
        ("8 input channels", dict(kernel_size=3, padding=1), 8, "cl", True, True),
        ("NCHW input", dict(kernel_size=3, padding=1), 16, "nchw", True, True),
        ("float32", dict(kernel_size=3, padding=1), 16, "cl", False, True),
        ("no grad", dict(kernel_size=3, padding=1), 16, "cl", True, False),
        ("padding 0", dict(kernel_size=3), 16, "cl", True, True),
    ],
)
def test_other_convolutions_keep_pytorchs_route(kernel, case, kw, cin, layout, autocast, grad):
    ours, plain = conv_pair(cin, 16, **kw)
    x = torch.randn(2, cin, 8, 8)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "cl" else x
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.set_grad_enabled(grad):
        y, y_plain = ours(x), plain(x)
    assert y.grad_fn is None or "OwnWeightGrad" not in type(y.grad_fn).__name__, case
    assert torch.equal(y, y_plain), case


def test_frozen_weights_keep_pytorchs_route(kernel):
    ours, _ = conv_pair(16, 16, kernel_size=3, padding=1)
    ours.requires_grad_(False)
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
    assert "OwnWeightGrad" not in type(y.grad_fn).__name__


def unet_step(seed: int = 0):
    """Loss and parameter gradients of one bf16 channels_last training step of a small UNet."""
    torch.manual_seed(seed)
    net = UNet(
        in_channels=1,
        base_channels=16,
        channel_mult=(1, 2),
        attention_resolutions=(8,),
        num_classes=10,
        image_size=16,
        norm_groups=8,
    ).to(memory_format=torch.channels_last)
    x = torch.randn(6, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    t, y = torch.randint(0, 1000, (6,)), torch.randint(0, 10, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.mse_loss(net(x, t, y).float(), torch.randn(6, 1, 16, 16))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in net.named_parameters()}


def test_unet_training_step_uses_the_kernel_and_agrees(kernel, monkeypatch):
    calls = []
    route = cw._Conv3x3OwnWeightGrad.apply
    monkeypatch.setattr(cw._Conv3x3OwnWeightGrad, "apply", lambda *a: calls.append(1) or route(*a))
    loss, grads = unet_step()
    assert len(calls) >= 10  # every 3x3 stride-1 conv with 16+ input channels
    monkeypatch.setenv(cw.ENV_SWITCH, "0")  # the switch: oneDNN's route
    cw.available.cache_clear()
    calls.clear()
    loss_plain, grads_plain = unet_step()
    assert not calls
    assert torch.equal(loss, loss_plain)  # same forward
    for name, g in grads.items():
        scale = grads_plain[name].abs().max().item()
        torch.testing.assert_close(g, grads_plain[name], atol=2e-2 * scale + 1e-6, rtol=2e-2, msg=name)


def test_policy_leaves_amx_cpus_to_onednn():
    assert cw.wanted("auto", avx512_bf16=True, amx=False)
    assert not cw.wanted("auto", avx512_bf16=True, amx=True)
    assert cw.wanted("1", avx512_bf16=True, amx=True)
    assert not cw.wanted("1", avx512_bf16=False, amx=False)
    assert not cw.wanted("0", avx512_bf16=True, amx=False)
    with pytest.raises(ValueError, match="expected auto, 0 or 1"):
        cw.wanted("yes", avx512_bf16=True, amx=False)


@needs_avx512_bf16
def test_without_a_compiler_onednn_is_used_with_a_warning(tmp_path):
    code = (
        "import torch\n"
        "from diffusionlab.nets import conv_weight_grad as cw\n"
        "conv = cw.Conv2d(16, 16, 3, padding=1).to(memory_format=torch.channels_last)\n"
        "x = torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last)\n"
        "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
        "    y = conv(x)\n"
        "y.float().sum().backward()\n"
        "print(cw.available(), type(y.grad_fn).__name__, conv.weight.grad.shape)\n"
    )
    out = run_without_compiler(code, tmp_path, DIFFUSIONLAB_CONV_WEIGHT_GRAD="1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[:2] == ["False", "ConvolutionBackward0"]
    assert "could not be built" in out.stderr and "oneDNN computes the weight gradients" in out.stderr


@needs_avx512_bf16
def test_a_build_without_avx512_bf16_says_so_and_is_not_used(tmp_path):
    """Built for a CPU without AVX512-BF16 the kernel has no loop to run: ``supported()`` is False, the op
    refuses with a message, and Conv2d keeps oneDNN's route."""
    code = (
        "import torch\n"
        "from diffusionlab.nets import conv_weight_grad as cw\n"
        "cw.CFLAGS = cw.CFLAGS + ['-mno-avx512bf16']\n"
        "print(cw.available(), torch.ops.diffusionlab_conv.supported())\n"
        "x = torch.randn(2, 16, 4, 4).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)\n"
        "try:\n"
        "    torch.ops.diffusionlab_conv.weight_grad(x, x, 3)\n"
        "except RuntimeError as e:\n"
        "    print('refused:', 'no AVX512-BF16' in str(e))\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), cw.ENV_SWITCH: "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False", "refused:", "True"]


def test_loading_a_kernel_leaves_the_next_kernels_build_name_alone(kernel):
    """PyTorch's ``load()`` appends its own flags to the lists it is given; it was given ours, so the next
    kernel loaded in the same process hashed to another build name and was built anew."""
    code = (
        "from diffusionlab.nets import conv_weight_grad as cw, fused_group_norm as f\n"
        "from diffusionlab.utils import cpp_kernels as k\n"
        "before = k.build_name(f.SOURCE, f.PREFIX, f.CFLAGS)\n"
        "assert cw.available()\n"
        "print(before == k.build_name(f.SOURCE, f.PREFIX, f.CFLAGS), k.LDFLAGS == ['-fopenmp'])\n"
    )
    env = {**os.environ, cw.ENV_SWITCH: "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("channels_last_weight", [True, False])
def test_weight_gradients_have_the_parameters_strides(kernel, channels_last_weight):
    """AccumulateGrad and DDP's gradient buckets expect a gradient laid out like its parameter; a 1-output
    conv's channels_last weight has strides (288, 1, 96, 32), which the kernel's result (stride(0) = 32, also
    channels_last for a size-1 dimension) did not match, and DDP warned of a slow path."""
    conv = cw.Conv2d(32, 1, 3, padding=1)
    if channels_last_weight:
        conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(2, 32, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert "OwnWeightGrad" in type(y.grad_fn).__name__
    y.float().sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride()
