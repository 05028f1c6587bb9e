"""Pipelines against diffusers' StableDiffusion(Img2Img|Inpaint)Pipeline with the same tiny weights,
scheduler config, prompts and noise; plus inpainting, trajectories, seeds, dtypes and input errors."""

from __future__ import annotations

import pytest
import torch

from diffusionlab.sd.pipeline import StableDiffusion
from tests.sd_tiny import diffusers_pipe, saved

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (tests/conftest.py)

TOL = 1e-3
PROMPT, NEGATIVE = "a photo of a cat", "blurry, low quality"


@pytest.fixture(scope="module")
def sd() -> StableDiffusion:
    return StableDiffusion.from_diffusers(saved()["diffusers"])


def maxdiff(a, b) -> float:
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_txt2img_matches_diffusers(sd, sampler):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = sd.txt2img(
        PROMPT, NEGATIVE, steps=6, guidance=7.5, sampler=sampler, n=2, height=64, width=64, latents=latents
    )
    pipe = diffusers_pipe("", "ddim" if sampler == "ddim" else "dpm")
    theirs = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=6,
        guidance_scale=7.5,
        num_images_per_prompt=2,
        height=64,
        width=64,
        latents=latents.clone(),
        output_type="pt",
    ).images
    assert ours.images.shape == theirs.shape == (2, 3, 64, 64)
    assert theirs.std() > 0.01  # a real image, not a constant
    assert maxdiff(ours.images, theirs) < TOL


def test_img2img_matches_diffusers(sd):
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ours = sd.img2img(image, PROMPT, NEGATIVE, strength=0.6, steps=5, sampler="ddim", seed=3)
    assert len(ours.timesteps) == 3  # int(5 * 0.6) steps run
    theirs = diffusers_pipe("Img2Img")(
        PROMPT,
        image=image,
        negative_prompt=NEGATIVE,
        strength=0.6,
        num_inference_steps=5,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(3),
        output_type="pt",
    ).images
    assert maxdiff(ours.images, theirs) < TOL


def test_inpaint_latent_blending_matches_diffusers(sd):
    g = torch.Generator().manual_seed(4)
    image = torch.rand(1, 3, 64, 64, generator=g)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 8:40] = 1
    ours = sd.inpaint(image, mask, PROMPT, NEGATIVE, steps=5, sampler="ddim", seed=5)
    theirs = diffusers_pipe("Inpaint")(
        PROMPT,
        image=image,
        mask_image=mask,
        negative_prompt=NEGATIVE,
        num_inference_steps=5,
        guidance_scale=7.5,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(5),
        output_type="pt",
    ).images
    assert maxdiff(ours.images, theirs) < TOL
    # outside the mask the final latents are exactly the encoded input (blended back at the last step)
    init = sd.encode_image(image, torch.Generator().manual_seed(5))
    keep = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    keep[..., 2:6, 1:5] = False
    assert torch.equal(ours.latents.masked_select(keep), init.masked_select(keep))
    assert not torch.allclose(ours.latents[..., 2:6, 1:5], init[..., 2:6, 1:5])


def test_inpainting_checkpoint_feeds_mask_and_masked_image():
    sd9 = StableDiffusion.from_single_file(saved(9)["safetensors"], "tiny")
    assert sd9.is_inpainting_model
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :, 32:] = 1
    seen = []
    hook = sd9.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    out = sd9.inpaint(image, mask, PROMPT, steps=3, sampler="euler", seed=0)
    hook.remove()
    assert out.images.shape == (1, 3, 64, 64) and torch.isfinite(out.images).all()
    assert len(seen) == 3 and all(x.shape == (2, 9, 8, 8) for x in seen)  # guidance doubles the batch
    expected_mask = torch.zeros(2, 1, 8, 8)
    expected_mask[..., 4:] = 1
    assert torch.equal(seen[0][:, 4:5], expected_mask)
    masked = sd9.encode_image(image * (mask < 0.5), sample=False)
    assert torch.allclose(seen[0][:, 5:], masked.expand(2, -1, -1, -1), atol=1e-6)
    # txt2img on the inpainting model: everything masked
    assert sd9.txt2img(PROMPT, steps=2, height=32, width=32, seed=0, progress=False).images.shape == (
        1,
        3,
        32,
        32,
    )


def test_seed_trajectory_and_batch(sd):
    a = sd.txt2img(PROMPT, steps=4, sampler="euler", seed=7, height=32, width=48, save_trajectory=True)
    b = sd.txt2img(PROMPT, steps=4, sampler="euler", seed=7, height=32, width=48)
    c = sd.txt2img(PROMPT, steps=4, sampler="euler", seed=8, height=32, width=48)
    assert a.images.shape == (1, 3, 32, 48) and a.seed == 7
    assert torch.equal(a.images, b.images) and not torch.allclose(a.images, c.images)
    assert a.trajectory.shape == a.trajectory_x0.shape == (4, 1, 4, 4, 6)
    assert torch.allclose(a.trajectory[-1], a.latents)  # the last state is the sample (final sigma 0)
    two = sd.txt2img([PROMPT, "a dog"], steps=2, n=2, seed=0, height=32, width=32)
    assert two.images.shape == (4, 3, 32, 32)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_close_to_float32(dtype):
    sd32 = StableDiffusion.from_single_file(saved()["safetensors"], "tiny")
    sd16 = StableDiffusion.from_single_file(saved()["safetensors"], "tiny", dtype=dtype)
    assert sd16.dtype == getattr(torch, dtype) and sd16.vae.encoder.conv_in.weight.dtype == sd16.dtype
    a = sd32.txt2img(PROMPT, steps=3, seed=1, height=32, width=32)
    b = sd16.txt2img(PROMPT, steps=3, seed=1, height=32, width=32)
    assert b.images.dtype == torch.float32 and torch.isfinite(b.images).all()
    assert maxdiff(a.images, b.images) < 0.1


def test_long_prompt_warns_and_truncates(sd):
    long = " ".join(["astronaut"] * 100)
    with pytest.warns(UserWarning, match="truncated"):
        emb = sd.encode_prompt(long)
    assert emb.shape == (1, 77, 32)
    with pytest.warns(UserWarning, match="truncated"):
        sd.txt2img(long, steps=1, height=32, width=32, seed=0)
