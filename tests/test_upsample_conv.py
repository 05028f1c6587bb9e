"""nets/upsample_conv: nearest 2x upsampling + conv3x3 computed on the small image equals the two ops in turn."""

import pytest
import torch
import torch.nn.functional as F

from diffusionlab.nets import blocks, ldm_blocks, upsample_conv


def reference(x, weight, bias):
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


def inputs(dtype, size, bias=True, grad=True, channels=(6, 5), batch=2):
    g = torch.Generator().manual_seed(0)
    c_in, c_out = channels
    x = torch.randn(batch, c_in, *size, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=dtype)
    b = torch.randn(c_out, generator=g, dtype=dtype) if bias else None
    return [t.requires_grad_(grad) if t is not None else None for t in (x, w, b)]


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("size", [(4, 4), (5, 7), (1, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_training_path_equals_interpolate_then_conv_with_gradients(size, bias):
    x, w, b = inputs(torch.float64, size, bias)
    out, ref = upsample_conv.nearest2x_conv3x3(x, w, b), reference(x, w, b)
    assert out.shape == ref.shape == (2, 5, 2 * size[0], 2 * size[1])
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel(out, ref) < 1e-12
    grad = torch.randn_like(ref)
    wanted = [t for t in (x, w, b) if t is not None]
    for got, exp in zip(torch.autograd.grad(out, wanted, grad), torch.autograd.grad(ref, wanted, grad)):
        assert rel(got, exp) < 1e-12
    assert out.grad_fn.name().endswith("_InterleavePhasesBackward")


@pytest.mark.parametrize("size", [(4, 4), (5, 7)])
def test_inference_path_is_a_transposed_convolution_equal_to_the_reference(size):
    x, w, b = inputs(torch.float64, size, grad=False)
    out = upsample_conv.nearest2x_conv3x3(x, w, b)
    assert rel(out, reference(x, w, b)) < 1e-12
    with torch.no_grad():  # also when the parameters require grad but gradients are off
        x, w, b = inputs(torch.float32, size, grad=True)
        assert rel(upsample_conv.nearest2x_conv3x3(x, w, b), reference(x, w, b)) < 1e-5


def test_tap_sums_against_a_hand_derivation():
    """One axis: even outputs read (i - 1, i) with (w0, w1 + w2), odd ones (i, i + 1) with (w0 + w1, w2)."""
    w = torch.tensor([2.0, 3.0, 5.0])
    assert upsample_conv.PHASE_TAPS.matmul(w).tolist() == [[2.0, 8.0], [5.0, 5.0]]
    assert upsample_conv.TAPS.matmul(w).tolist() == [5.0, 8.0, 5.0, 2.0]
    k = upsample_conv.phase_weights(torch.outer(w, w)[None, None])  # [4, 1, 2, 2], phases (0,0) (0,1) (1,0) (1,1)
    assert k[1, 0].tolist() == [[2.0 * 5.0, 2.0 * 5.0], [8.0 * 5.0, 8.0 * 5.0]]


def test_bf16_autocast_tracks_float32():
    x, w, b = inputs(torch.float32, (8, 8), channels=(32, 16), batch=4)
    ref = reference(x, w, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = upsample_conv.nearest2x_conv3x3(x, w, b)
    assert out.dtype == torch.bfloat16
    assert rel(out.float(), ref) < 2e-2
    grad = torch.randn_like(ref)
    for got, exp in zip(torch.autograd.grad(out.float(), (x, w, b), grad), torch.autograd.grad(ref, (x, w, b), grad)):
        assert rel(got, exp) < 2e-2


@pytest.mark.parametrize("block_class", [blocks.Upsample, ldm_blocks.Upsample])
def test_upsample_blocks_route_channels_last_only_and_keep_their_parameters(monkeypatch, block_class):
    block = block_class(8)
    assert list(block.state_dict()) == ["conv.weight", "conv.bias"]
    calls = []
    original = upsample_conv.nearest2x_conv3x3
    monkeypatch.setattr(upsample_conv, "nearest2x_conv3x3", lambda *a: calls.append(1) or original(*a))
    x = torch.randn(2, 8, 5, 6)
    nchw = block(x)
    assert calls == []
    fast = block(x.contiguous(memory_format=torch.channels_last))
    assert calls == [1]
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert rel(fast, nchw) < 1e-5
    if block_class is ldm_blocks.Upsample:  # an explicit output size keeps interpolate + conv
        sized = block(x.contiguous(memory_format=torch.channels_last), size=(11, 13))
        assert calls == [1] and sized.shape == (2, 8, 11, 13)
