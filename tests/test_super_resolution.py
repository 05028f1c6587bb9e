"""Super-resolution building blocks: the degradation (against PIL), the conditioned UNet (against diffusers'
UNet2DModel on the concatenated input), the loss and sampler plumbing of ``cond``, and a short real training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffusionlab.diffusion import GaussianDiffusion
from diffusionlab.diffusion.degradation import downscale, sr_condition, upsample
from diffusionlab.metrics.datasets import load_split
from diffusionlab.nets import UNet, count_parameters, unet_from_diffusers
from diffusionlab.pipelines import generate, upscale
from diffusionlab.pipelines.super_resolution import comparison_grid
from diffusionlab.utils.images import uint8_to_signed
from tests.test_nets import diffusers_config, perturb

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mnist(data_dir, tmp_path_factory):
    """The first 400 MNIST training images, float [-1, 1] ``[400, 1, 28, 28]``."""
    images, _ = load_split("mnist", "train", data_dir, tmp_path_factory.mktemp("cache"))
    return uint8_to_signed(images[:400])


def sr_unet(**kw) -> UNet:
    args = dict(in_channels=1, cond_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(), norm_groups=8, dropout=0.0, image_size=28)  # fmt: skip
    return UNet(**{**args, **kw})


def test_downscale_is_pils_bicubic_rounded_to_8_bits(mnist):
    x = mnist[:6]
    pil = [Image.fromarray(((img[0] + 1) * 127.5).round().byte().numpy()).convert("F") for img in x]
    pil = torch.stack([torch.from_numpy(np.array(im.resize((7, 7), Image.BICUBIC))) for im in pil])[:, None]
    pil = (pil / 127.5 - 1).clamp(-1, 1)
    exact = downscale(x, 7, quantize=False)
    assert exact.shape == (6, 1, 7, 7)
    assert (exact - pil).abs().max() < 1e-5
    low = downscale(x, 7)
    assert low.min() >= -1 and low.max() <= 1
    levels = (low + 1) * 127.5
    assert (levels - levels.round()).abs().max() < 1e-4 and (low - exact).abs().max() <= 1 / 127.5 + 1e-6
    assert torch.equal(low, downscale(x.clone(), 7))  # deterministic


def test_upsample_and_condition_shapes_and_range(mnist):
    low = downscale(mnist[:3], 7)
    up = upsample(low, 28)
    assert up.shape == (3, 1, 28, 28) and up.min() >= -1 and up.max() <= 1
    assert torch.equal(sr_condition(mnist[:3], 7), up)
    assert (up - mnist[:3]).abs().mean() < (low.mean() - mnist[:3]).abs().mean()  # closer than a flat image
    for bad in (28, 0, 7.0):
        with pytest.raises(ValueError, match="low-resolution size"):
            downscale(mnist[:1], bad)
    with pytest.raises(ValueError, match="upsampled size"):
        upsample(low, 5)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        downscale(mnist[0], 7)


def test_cond_is_concatenated_like_diffusers_unet2d_with_doubled_input():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    theirs = perturb(diffusers.UNet2DModel(**diffusers_config(in_channels=2, out_channels=1))).eval()
    ours = unet_from_diffusers(dict(theirs.config), theirs.state_dict(), cond_channels=1).eval()
    assert ours.in_channels == 1 and ours.cond_channels == 1
    assert count_parameters(ours) == count_parameters(theirs)
    x, cond = torch.randn(3, 1, 32, 32), torch.randn(3, 1, 32, 32)
    t = torch.tensor([0, 37, 999])
    with torch.no_grad():
        expected = theirs(torch.cat([x, cond], 1), t).sample
        got = ours(x, t, cond=cond)
        other = ours(x, t, cond=-cond)
    assert (got - expected).abs().max() < 1e-4
    assert (got - other).abs().max() > 0.1  # the output depends on cond


def test_missing_wrong_or_unexpected_cond_is_refused():
    net, x, t = sr_unet(), torch.randn(2, 1, 28, 28), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="pass cond"):
        net(x, t)
    with pytest.raises(ValueError, match=r"cond must have shape \[2, 1, 28, 28\]"):
        net(x, t, cond=torch.randn(2, 1, 7, 7))
    with pytest.raises(ValueError, match="takes no conditioning image"):
        sr_unet(cond_channels=None)(x, t, cond=x)
    with pytest.raises(ValueError, match="cond_channels"):
        sr_unet(cond_channels=0)


def test_training_loss_hands_cond_to_the_net_and_plain_nets_keep_three_arguments(mnist):
    diffusion = GaussianDiffusion("linear", 100)
    x = mnist[:4]
    seen = {}

    def conditioned(x_t, t, y, cond):
        seen["cond"] = cond
        return torch.zeros_like(x_t)

    cond = sr_condition(x, 7)
    loss_c = diffusion.training_loss(conditioned, x, cond=cond, generator=torch.Generator().manual_seed(0))
    assert seen["cond"] is cond
    plain = lambda x_t, t, y: torch.zeros_like(x_t)  # noqa: E731  (a net without cond)
    loss_plain = diffusion.training_loss(plain, x, generator=torch.Generator().manual_seed(0))
    assert loss_c == loss_plain  # same draws, same target: cond only reaches the net


def test_upscale_output_shape_range_and_seed(mnist):
    torch.manual_seed(0)
    net, diffusion = perturb(sr_unet()), GaussianDiffusion("linear", 100)
    low = downscale(mnist[:3], 7)
    out = upscale(net, diffusion, low, steps=4, seed=1, progress=False)
    assert out.shape == (3, 1, 28, 28) and out.min() >= -1 and out.max() <= 1  # x0 clamped
    assert torch.equal(out, upscale(net, diffusion, low, steps=4, seed=1, progress=False))
    assert not torch.equal(out, upscale(net, diffusion, low.flip(0), steps=4, seed=1, progress=False))
    with pytest.raises(ValueError, match=r"low_res must be \[B, 1, h, w\]"):
        upscale(net, diffusion, low.repeat(1, 3, 1, 1), steps=2)
    with pytest.raises(ValueError, match="super-resolution model"):
        upscale(sr_unet(cond_channels=None), diffusion, low, steps=2)
    grid = comparison_grid(low, out, mnist[:3])
    assert grid.size[1] > 4 * 2 * 28  # four rows at scale 2


def test_guidance_doubles_the_conditioning_image_with_the_batch(mnist):
    torch.manual_seed(0)
    net, diffusion = perturb(sr_unet(num_classes=10)), GaussianDiffusion("linear", 100)
    cond = sr_condition(mnist[:2], 7)
    labels = torch.tensor([3, 5])
    kw = dict(steps=3, progress=False, cond=cond, labels=labels)
    guided, _ = generate(net, diffusion, (1, 28, 28), guidance=2.0, **kw)
    cond_only, _ = generate(net, diffusion, (1, 28, 28), guidance=1.0, **kw)
    assert guided.shape == (2, 1, 28, 28) and not torch.equal(guided, cond_only)
    with pytest.raises(ValueError, match="one image per sample"):
        generate(net, diffusion, (1, 28, 28), labels=labels, steps=2, cond=cond[:1], progress=False)


def test_a_short_training_lowers_the_sr_loss_and_uses_the_low_res_image(mnist):
    """40 AdamW steps on 384 real MNIST images: the held-out SR loss drops, and it is lower with the image's own
    low-res input than with another image's (the network reads cond)."""
    torch.manual_seed(0)
    net, diffusion = sr_unet(), GaussianDiffusion("linear", 1000)
    train, held = mnist[:384], mnist[384:400]
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)

    def held_loss(cond):
        with torch.no_grad():
            return float(diffusion.training_loss(net, held, cond=cond, generator=torch.Generator().manual_seed(0)))

    cond_held = sr_condition(held, 7)
    before = held_loss(cond_held)
    gen = torch.Generator().manual_seed(1)
    for step in range(40):
        batch = train[(step * 32) % 384 :][:32]
        loss = diffusion.training_loss(net, batch, cond=sr_condition(batch, 7), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, shuffled = held_loss(cond_held), held_loss(cond_held.roll(1, 0))
    assert after < 0.5 * before, (before, after)
    assert after < shuffled, (after, shuffled)
