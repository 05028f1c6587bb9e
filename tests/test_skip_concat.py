"""cat_channels: torch.cat's values and gradients, but every input's gradient dense channels_last."""

from __future__ import annotations

import pytest
import torch

from diffusionlab.nets import skip_concat
from diffusionlab.nets.skip_concat import cat_channels
from diffusionlab.nets.unet import UNet

CL = torch.channels_last


def leaves(*channels: int, dtype=torch.bfloat16, memory_format=CL, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(3, c, 5, 7, generator=g).to(dtype).contiguous(memory_format=memory_format).requires_grad_()
        for c in channels
    ]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("channels", [(4, 6), (16, 8, 3)])
def test_values_and_gradients_equal_torch_cat_and_are_dense(dtype, channels):
    ours, theirs = leaves(*channels, dtype=dtype), leaves(*channels, dtype=dtype)
    grad = torch.randn(3, sum(channels), 5, 7).to(dtype).contiguous(memory_format=CL)
    out = cat_channels(*ours)
    ref = torch.cat(theirs, dim=1)
    assert torch.equal(out, ref) and out.is_contiguous(memory_format=CL)
    assert type(out.grad_fn).__name__ == "_CatChannelsBackward"  # not torch.cat's CatBackward0
    ga = torch.autograd.grad(out, ours, grad)
    gb = torch.autograd.grad(ref, theirs, grad)
    for a, b in zip(ga, gb):
        assert torch.equal(a, b)
        assert a.is_contiguous(memory_format=CL)
    # the premise: torch.cat hands out strided channel slices (the last input's slice starts mid-row)
    assert not all(b.is_contiguous(memory_format=CL) for b in gb)


def test_a_skip_gradient_summed_with_another_path_matches():
    """The U-Net pattern: the skip tensor also feeds the next layer, so autograd sums its two gradients."""
    h, skip = leaves(8, 8)
    h2, skip2 = (t.detach().clone().requires_grad_() for t in (h, skip))

    def loss(cat, a, b):
        return (cat(a, b).float().square().sum() + (b.float() * 3).sum()).backward()

    loss(cat_channels, h, skip)
    loss(lambda a, b: torch.cat([a, b], dim=1), h2, skip2)
    assert torch.equal(skip.grad, skip2.grad) and torch.equal(h.grad, h2.grad)


@pytest.mark.parametrize(
    "case",
    ["no_grad", "nchw", "no_input_requires_grad"],
)
def test_falls_back_to_torch_cat(case):
    a, b = leaves(4, 4, memory_format=torch.contiguous_format if case == "nchw" else CL)
    if case == "no_input_requires_grad":
        a, b = a.detach(), b.detach()
    with torch.set_grad_enabled(case != "no_grad"):
        out = cat_channels(a, b)
    assert torch.equal(out, torch.cat([a, b], dim=1))
    if case == "nchw":
        assert type(out.grad_fn).__name__ == "CatBackward0"
    else:
        assert out.grad_fn is None


def test_the_unet_concatenates_its_skips_with_it(monkeypatch):
    seen = []
    real = skip_concat._CatChannels.apply
    monkeypatch.setattr(skip_concat._CatChannels, "apply", lambda *t: seen.append(len(t)) or real(*t))
    torch.manual_seed(0)
    net = UNet(
        1,
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        num_classes=10,
        image_size=16,
        norm_groups=4,
    ).to(memory_format=CL)
    x = torch.randn(2, 1, 16, 16).contiguous(memory_format=CL)
    net(x, torch.tensor([3, 7]), torch.tensor([1, 2])).sum().backward()
    assert seen == [2] * 4  # (num_res_blocks + 1) up blocks per level, 2 levels
    seen.clear()
    with torch.no_grad():
        net(x, torch.tensor([3, 7]), torch.tensor([1, 2]))
    assert seen == []
