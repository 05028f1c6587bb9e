"""Bad input at the library level: each public call below fails with an exception whose message names the value
given and what would be valid (one row per case); the long-prompt truncation warning is in test_sd_pipeline.py."""

from __future__ import annotations

import re

import pytest
import torch

from diffusionlab.diffusion import GaussianDiffusion, NoiseSchedule, canonical_prediction
from diffusionlab.nets import UNet
from diffusionlab.pipelines import generate
from diffusionlab.sampling import get_sampler
from diffusionlab.sd.checkpoint import CheckpointError
from diffusionlab.sd.pipeline import StableDiffusion, check_size
from tests.sd_tiny import saved

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (tests/conftest.py)

T = 100
LINEAR = NoiseSchedule.from_name("linear", T)
DIFFUSION = GaussianDiffusion("linear", T)
SAMPLERS = "ddpm, ddim, dpmpp_2m, euler, heun"
PROMPT = "a photo of a cat"


def _net(num_classes: int | None = 10) -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(),
                num_classes=num_classes, image_size=8, norm_groups=4)  # fmt: skip


NETS = {"conditional": _net(10), "unconditional": _net(None)}


def _generate(net: str = "conditional", **kw):
    return generate(NETS[net], DIFFUSION, (1, 8, 8), steps=2, progress=False, **kw)


@pytest.fixture(scope="module")
def sd() -> StableDiffusion:
    return StableDiffusion.from_diffusers(saved()["diffusers"])


# (id, call, exception, message pattern): every pattern names the bad value and the valid range or choices.
CASES = [
    # ---------------------------------------------------------------- NoiseSchedule.from_name
    (
        "schedule-name",
        lambda: NoiseSchedule.from_name("quadratic"),
        ValueError,
        "unknown noise schedule 'quadratic'.*valid choices: linear, scaled_linear, cosine, sigmoid",
    ),
    (
        "schedule-T=0",
        lambda: NoiseSchedule.from_name("linear", 0),
        ValueError,
        "num_timesteps must be a positive integer, got 0",
    ),
    (
        "schedule-T=2.5",
        lambda: NoiseSchedule.from_name("cosine", 2.5),
        ValueError,
        "num_timesteps must be a positive integer, got 2.5",
    ),
    (
        "schedule-T=True",
        lambda: NoiseSchedule.from_name("cosine", True),
        ValueError,
        "num_timesteps must be a positive integer, got True",
    ),
    (
        "schedule-beta_start=0",
        lambda: NoiseSchedule.from_name("linear", 10, beta_start=0.0),
        ValueError,
        r"linear schedule: beta_start must be a number in \(0, 1\), got 0.0",
    ),
    (
        "schedule-beta_end=1.5",
        lambda: NoiseSchedule.from_name("scaled_linear", 10, beta_end=1.5),
        ValueError,
        r"scaled_linear schedule: beta_end must be a number in \(0, 1\), got 1.5",
    ),
    (
        "schedule-start>end",
        lambda: NoiseSchedule.from_name("sigmoid", 10, beta_start=0.5, beta_end=0.1),
        ValueError,
        "beta_start 0.5 is above beta_end 0.1",
    ),
    (
        "schedule-max_beta",
        lambda: NoiseSchedule.from_name("cosine", 10, max_beta=1.5),
        ValueError,
        r"max_beta in \(0, 1\), got 0.008 and 1.5",
    ),
    (
        "schedule-custom-betas",
        lambda: NoiseSchedule(torch.tensor([0.1, 1.0])),
        ValueError,
        r"every beta must lie in \(0, 1\); 1 do not, the first betas\[1\] = 1.0",
    ),
    (
        "schedule-betas-2d",
        lambda: NoiseSchedule(torch.full((2, 2), 0.1)),
        ValueError,
        r"non-empty 1-D tensor, got shape \(2, 2\)",
    ),
    (
        "prediction",
        lambda: canonical_prediction("noise"),
        ValueError,
        "unknown prediction type 'noise'; valid choices: eps, x0, v",
    ),
    # ---------------------------------------------------------------- get_sampler
    (
        "sampler-name",
        lambda: get_sampler("plms", LINEAR, 10),
        ValueError,
        f"unknown sampler 'plms'; valid choices: {SAMPLERS}",
    ),
    (
        "sampler-steps=0",
        lambda: get_sampler("ddim", LINEAR, 0),
        ValueError,
        rf"num_steps must be an integer in \[1, {T}\] .*got 0",
    ),
    (
        "sampler-steps>T",
        lambda: get_sampler("ddim", LINEAR, T + 1),
        ValueError,
        rf"num_steps must be an integer in \[1, {T}\] .*got {T + 1}",
    ),
    (
        "sampler-steps=2.5",
        lambda: get_sampler("euler", LINEAR, 2.5),
        ValueError,
        rf"num_steps must be an integer in \[1, {T}\] .*got 2.5",
    ),
    (
        "sampler-spacing",
        lambda: get_sampler("ddim", LINEAR, 10, timestep_spacing="even"),
        ValueError,
        "unknown timestep_spacing 'even'; valid choices: leading, trailing, linspace",
    ),
    (
        "sampler-variance",
        lambda: get_sampler("ddpm", LINEAR, 10, variance="learned"),
        ValueError,
        "unknown variance 'learned'; valid choices: fixed_small, fixed_large",
    ),
    (
        "sampler-prediction",
        lambda: get_sampler("euler", LINEAR, 10, prediction="noise"),
        ValueError,
        "unknown prediction type 'noise'",
    ),
    (
        "sampler-final-sigmas",
        lambda: get_sampler("dpmpp_2m", LINEAR, 10, final_sigmas_type="one"),
        ValueError,
        "unknown final_sigmas_type 'one'; valid choices: zero, sigma_min",
    ),
    ("sampler-eta", lambda: get_sampler("ddim", LINEAR, 10, eta=-0.1), ValueError, "eta must be >= 0, got -0.1"),
    (
        "sampler-clip_x0",
        lambda: get_sampler("ddim", LINEAR, 10, clip_x0=0),
        ValueError,
        "clip_x0 must be a positive number or None, got 0",
    ),
    (
        "sampler-offset",
        lambda: get_sampler("ddim", LINEAR, T, steps_offset=1),
        ValueError,
        rf"steps_offset=1 and num_steps={T} leaves the training range \[0, {T - 1}\]",
    ),
    (
        "sampler-repeats",
        lambda: get_sampler("dpmpp_2m", LINEAR, T, timestep_spacing="linspace"),
        ValueError,
        "timesteps repeat",
    ),
    (
        "sampler-start-index",
        lambda: get_sampler("ddim", LINEAR, 10).sample(lambda x, t: x, torch.zeros(1, 2), start_index=11),
        ValueError,
        r"start_index must be an integer in \[0, 10\], got 11",
    ),
    # an option a sampler does not take is a TypeError, as for any Python call with an unknown keyword
    (
        "sampler-option",
        lambda: get_sampler("heun", LINEAR, 10, eta=0.5),
        TypeError,
        "sampler 'heun' takes no option.* eta; valid options: karras",
    ),
    ("sampler-schedule", lambda: get_sampler("ddim", "linear", 10), TypeError, "must be a NoiseSchedule, got str"),
    # ---------------------------------------------------------------- pipelines.generate
    ("generate-nothing", lambda: _generate(), ValueError, "give either labels"),
    ("generate-n=0", lambda: _generate(n=0), ValueError, "n .* must be a positive integer, got 0"),
    ("generate-n=2.5", lambda: _generate(n=2.5), ValueError, "n .* must be a positive integer, got 2.5"),
    (
        "generate-label-high",
        lambda: _generate(labels=torch.tensor([3, 10, 12])),
        ValueError,
        r"class label\(s\) \[10, 12\] out of range: valid labels are 0..9",
    ),
    (
        "generate-label-negative",
        lambda: _generate(labels=torch.tensor([-1])),
        ValueError,
        r"\[-1\] out of range: valid labels are 0..9",
    ),
    (
        "generate-label-float",
        lambda: _generate(labels=torch.tensor([1.0])),
        ValueError,
        r"1-D integer tensor \[N\] of class indices, got a torch.float32 tensor of shape \(1,\)",
    ),
    (
        "generate-label-2d",
        lambda: _generate(labels=torch.zeros(2, 2, dtype=torch.long)),
        ValueError,
        r"1-D integer tensor .*shape \(2, 2\)",
    ),
    (
        "generate-label-empty",
        lambda: _generate(labels=torch.tensor([], dtype=torch.long)),
        ValueError,
        "labels is empty",
    ),
    (
        "generate-label-unconditional",
        lambda: _generate("unconditional", labels=torch.tensor([1])),
        ValueError,
        "this model is unconditional .* without labels",
    ),
    (
        "generate-n-vs-labels",
        lambda: _generate(labels=torch.tensor([1, 2]), n=3),
        ValueError,
        "n=3 differs from the 2 labels given",
    ),
    (
        "generate-guidance<0",
        lambda: _generate(labels=torch.tensor([1]), guidance=-1.0),
        ValueError,
        r"guidance scale must be >= 0 \(1 = no guidance, 0 = unconditional\), got -1.0",
    ),
    (
        "generate-guidance-nan",
        lambda: _generate(n=1, guidance=float("nan")),
        ValueError,
        "guidance scale must be >= 0 .*got nan",
    ),
    (
        "generate-guidance-inf",
        lambda: _generate(labels=torch.tensor([1]), guidance=float("inf")),
        ValueError,
        "guidance scale must be finite .*got inf",
    ),
    ("generate-sampler", lambda: _generate(n=1, sampler="plms"), ValueError, f"valid choices: {SAMPLERS}"),
    (
        "generate-precision",
        lambda: _generate(n=1, precision="fp8"),
        ValueError,
        "unknown sampling precision 'fp8'; valid choices: 32, bf16-mixed, 16-mixed, auto",
    ),
    # ---------------------------------------------------------------- StableDiffusion.from_single_file
    (
        "sd-missing-file",
        lambda: StableDiffusion.from_single_file("/nonexistent/v1-5.safetensors"),
        FileNotFoundError,
        "checkpoint '/nonexistent/v1-5.safetensors' does not exist",
    ),
    ("sd-size-helper", lambda: check_size(64, 0), ValueError, "width must be a positive multiple of 8.*got 0"),
]

SD_CASES = [
    (
        "txt2img-height",
        lambda sd: sd.txt2img(PROMPT, height=60, width=64),
        ValueError,
        r"height must be a positive multiple of 8 \(the VAE works on 8x8 patches\), got 60; for example 56 or 64",
    ),
    (
        "txt2img-width",
        lambda sd: sd.txt2img(PROMPT, height=64, width=100),
        ValueError,
        "width must be a positive multiple of 8 .*got 100; for example 96 or 104",
    ),
    (
        "txt2img-no-prompt",
        lambda sd: sd.txt2img([], height=32, width=32),
        ValueError,
        "prompt must be a string or a non-empty list of strings",
    ),
    (
        "txt2img-prompt-type",
        lambda sd: sd.txt2img([PROMPT, 3], height=32, width=32),
        TypeError,
        "prompt must be a str, got int",
    ),
    (
        "txt2img-n",
        lambda sd: sd.txt2img(PROMPT, n=0, height=32, width=32),
        ValueError,
        r"n \(images per prompt\) must be a positive integer, got 0",
    ),
    (
        "txt2img-negatives",
        lambda sd: sd.txt2img([PROMPT, PROMPT], ["a", "b", "c"], height=32, width=32),
        ValueError,
        "3 negative prompts for 2 prompts",
    ),
    (
        "txt2img-sampler",
        lambda sd: sd.txt2img(PROMPT, sampler="plms", height=32, width=32),
        ValueError,
        f"unknown sampler 'plms'; valid choices: {SAMPLERS}",
    ),
    (
        "txt2img-guidance",
        lambda sd: sd.txt2img(PROMPT, guidance=float("nan"), steps=1, height=32, width=32),
        ValueError,
        "guidance scale must be finite",
    ),
    (
        "txt2img-latents",
        lambda sd: sd.txt2img(PROMPT, height=32, width=32, latents=torch.randn(1, 4, 8, 8)),
        ValueError,
        r"latents must have shape \(1, 4, 4, 4\), got \(1, 4, 8, 8\)",
    ),
    (
        "img2img-size",
        lambda sd: sd.img2img(torch.rand(1, 3, 36, 32), PROMPT),
        ValueError,
        "height must be a positive multiple of 8.*got 36",
    ),
    (
        "img2img-strength",
        lambda sd: sd.img2img(torch.rand(1, 3, 32, 32), PROMPT, strength=1.5),
        ValueError,
        r"strength must be in \(0, 1\], got 1.5",
    ),
    (
        "img2img-range",
        lambda sd: sd.img2img(torch.rand(1, 3, 32, 32) * 2 - 1, PROMPT),
        ValueError,
        r"values in \[0, 1\], got \[-",
    ),
    (
        "inpaint-mask",
        lambda sd: sd.inpaint(torch.rand(1, 3, 32, 32), torch.ones(1, 1, 16, 16), PROMPT),
        ValueError,
        r"mask size \(16, 16\) differs from image size \(32, 32\)",
    ),
]


def _ids(cases):
    return [c[0] for c in cases]


@pytest.mark.parametrize("name,call,error,pattern", CASES, ids=_ids(CASES))
def test_bad_input_raises_a_clear_error(name, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize("name,call,error,pattern", SD_CASES, ids=_ids(SD_CASES))
def test_bad_stable_diffusion_input_raises_a_clear_error(sd, name, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(sd)


def test_sd_file_of_the_wrong_format_is_refused(tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match=re.escape(f"{str(text)!r} is not a checkpoint: expected a .safetensors")):
        StableDiffusion.from_single_file(text)
    assert issubclass(CheckpointError, ValueError)


def test_empty_prompt_is_the_unconditional_prompt(sd):
    """Allowed, as in diffusers: ``""`` is the unconditional embedding, so with the (default) empty negative
    prompt the guidance scale changes nothing."""
    a = sd.txt2img("", steps=2, guidance=1.0, seed=0, height=32, width=32, progress=False)
    b = sd.txt2img("", steps=2, guidance=7.5, seed=0, height=32, width=32, progress=False)
    c = sd.txt2img(PROMPT, steps=2, guidance=7.5, seed=0, height=32, width=32, progress=False)
    assert torch.allclose(a.latents, b.latents, atol=1e-5)
    assert not torch.allclose(a.latents, c.latents, atol=1e-3)
