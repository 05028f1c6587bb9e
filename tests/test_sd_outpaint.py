"""Outpainting: the canvas and mask it builds (against numpy's edge padding and a mask written out by hand),
its argument errors, and the pipeline with tiny random weights: equal to our inpaint on the same canvas and
mask (4- and 9-channel UNets), close to diffusers' StableDiffusionInpaintPipeline on them (4-channel), and
``sample.py model=sd15 mode=outpaint extend=left:..,right:..`` writing the grown image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from PIL import Image

from diffusionlab.cli.argv import quote_spec_overrides
from diffusionlab.sd.outpaint import outpaint_canvas, parse_extend
from diffusionlab.sd.pipeline import StableDiffusion
from diffusionlab.sd.run import generate
from tests.sd_tiny import diffusers_pipe, saved

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (tests/conftest.py)

PROMPT = "a wide landscape"


def expected_canvas(image: torch.Tensor, top=0, bottom=0, left=0, right=0) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle: numpy's edge padding, and a mask of ones with the original's rectangle zeroed."""
    pad = ((0, 0), (0, 0), (top, bottom), (left, right))
    canvas = torch.from_numpy(np.pad(image.numpy(), pad, mode="edge"))
    h, w = image.shape[-2:]
    mask = torch.ones(1, 1, h + top + bottom, w + left + right)
    mask[..., top : top + h, left : left + w] = 0
    return canvas, mask


def test_canvas_is_the_original_plus_replicated_edges_and_the_mask_marks_the_new_area():
    image = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    canvas, mask = outpaint_canvas(image, "left:16,top:8,bottom:0")
    assert canvas.shape == (2, 3, 24, 40) and mask.shape == (1, 1, 24, 40)
    assert torch.equal(canvas[..., 8:, 16:], image)  # the original, untouched, where not extended
    ref_canvas, ref_mask = expected_canvas(image, top=8, left=16)
    assert torch.equal(canvas, ref_canvas) and torch.equal(mask, ref_mask)
    assert mask.sum() == 24 * 40 - 16 * 24 and set(mask.unique().tolist()) == {0.0, 1.0}

    gray, gray_mask = outpaint_canvas(image, {"right": 8, "bottom": 16}, fill="gray")
    assert gray.shape == (2, 3, 32, 32) and torch.equal(gray_mask, expected_canvas(image, bottom=16, right=8)[1])
    assert torch.equal(gray[..., :16, :24], image)
    assert torch.all(gray[..., 16:, :] == 0.5) and torch.all(gray[..., :, 24:] == 0.5)


def test_overlap_repaints_a_band_of_the_original_on_the_grown_sides_only():
    image = torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(1))
    canvas, mask = outpaint_canvas(image, "left:16,right:8", overlap=8)
    assert torch.equal(canvas, expected_canvas(image, left=16, right=8)[0])  # the canvas does not change
    expected = torch.ones(1, 1, 16, 56)
    expected[..., :, 16 + 8 : 16 + 32 - 8] = 0  # 8 px into the original at the left and right seams, not top/bottom
    assert torch.equal(mask, expected)


def test_extend_forms_parse_alike_including_hydras_readings_of_the_command_line():
    want = {"top": 0, "bottom": 0, "left": 128, "right": 128}
    parser = OverridesParser.create()
    # what Hydra hands over for each spelling; the unquoted comma form only after the entry point quotes it
    spellings = ["extend=[left:128,right:128]", "extend={left:128,right:128}", *quote_spec_overrides(
        ["extend=left:128,right:128"])]  # fmt: skip
    assert spellings[-1] == "extend='left:128,right:128'"
    for override in spellings:
        assert parse_extend(parser.parse_override(override).value()) == want
    assert parse_extend(" Left:128, right:128 ") == parse_extend({"left": 128, "right": "128"}) == want
    assert quote_spec_overrides(["prompt=a,b", "extend=left:8", "+sd.extend=top:8,left:8"]) == [
        "prompt=a,b", "extend=left:8", "+sd.extend='top:8,left:8'"]  # fmt: skip


@pytest.mark.parametrize(
    "extend, message",
    [
        ("lft:8", "unknown side 'lft' in extend; valid sides: top, bottom, left, right"),
        ("left:-8", "extend left must be >= 0"),
        ("right:100", r"extend right=100 must be a multiple of 8 .*for example 96 or 104"),
        ("left128", "extend entries are side:pixels"),
        ("left:8,left:16", "names side 'left' twice"),
        ("left:0,top:0", "adds no pixels"),
        ("left:1.5", "whole number of pixels"),
        (128, "extend must be side:pixels entries"),
    ],
)
def test_bad_extend_says_what_is_wrong(extend, message):
    with pytest.raises(ValueError, match=message):
        parse_extend(extend)


def test_bad_fill_and_overlap():
    image = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown fill 'noise'; valid choices: edge, gray"):
        outpaint_canvas(image, "left:8", fill="noise")
    with pytest.raises(ValueError, match="outpaint overlap=4 must be a multiple of 8"):
        outpaint_canvas(image, "left:8", overlap=4)
    with pytest.raises(ValueError, match="repaint the whole image width"):
        outpaint_canvas(image, "left:8,right:8", overlap=8)


@pytest.mark.parametrize("in_channels", [4, 9])
def test_outpaint_equals_our_inpaint_on_the_grown_canvas_and_mask(in_channels):
    sd = StableDiffusion.from_single_file(saved(in_channels)["safetensors"], "tiny")
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    seen = []
    hook = sd.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, 4:5].clone()))
    out = sd.outpaint(image, "left:16,bottom:8", PROMPT, steps=3, sampler="ddim", seed=3, n=2, progress=False)
    hook.remove()
    canvas, mask = expected_canvas(image, bottom=8, left=16)
    ref = sd.inpaint(canvas, mask, PROMPT, steps=3, sampler="ddim", seed=3, n=2, progress=False)
    assert out.images.shape == (2, 3, 40, 48) and out.images.std() > 0.01
    assert torch.equal(out.images, ref.images) and torch.equal(out.latents, ref.latents)
    keep = torch.zeros(1, 1, 5, 6, dtype=torch.bool)
    keep[..., :4, 2:] = True  # the original's 4x4 latent patch
    if in_channels == 9:  # the UNet is told what to generate: the new area at latent size
        assert torch.equal(seen[0], (~keep).float().expand(4, -1, -1, -1))  # guidance doubles the batch
    else:  # latent blending: the original's latents come back exactly, the new area is generated
        init = sd.encode_image(canvas.expand(2, -1, -1, -1), torch.Generator().manual_seed(3))
        assert torch.equal(out.latents.masked_select(keep), init.masked_select(keep))
        assert not torch.allclose(out.latents.masked_select(~keep), init.masked_select(~keep), atol=0.1)


def test_outpaint_matches_diffusers_inpaint_on_the_grown_canvas():
    sd = StableDiffusion.from_diffusers(saved()["diffusers"])
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(4))
    ours = sd.outpaint(image, "right:16,top:8", PROMPT, "blurry", steps=5, sampler="ddim", seed=5, progress=False)
    canvas, mask = expected_canvas(image, top=8, right=16)
    theirs = diffusers_pipe("Inpaint")(
        PROMPT,
        image=canvas,
        mask_image=mask,
        negative_prompt="blurry",
        num_inference_steps=5,
        guidance_scale=7.5,
        height=40,
        width=64,
        generator=torch.Generator().manual_seed(5),
        output_type="pt",
    ).images
    assert ours.images.shape == theirs.shape == (1, 3, 40, 64)
    assert (ours.images - theirs).abs().max() < 1e-3


def write_png(path, h: int, w: int) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def test_sample_entry_point_outpaints_to_the_grown_size(tmp_path):
    """The README's command line as typed (the unquoted comma form, quoted as sample.py does before Hydra
    parses it), through the sample task in-process."""
    from diffusionlab.cli.sample import sample
    from tests.helpers import compose_cfg

    write_png(tmp_path / "photo.png", 24, 32)
    argv = ["model=sd15", f"sd.checkpoint={saved()['safetensors']}", "+sd.config=tiny", "mode=outpaint",
            f"init_image={tmp_path / 'photo.png'}", "extend=left:16,right:8", "prompt=a wide landscape", "steps=2",
            "n=1", "seed=7", "sd.height=null", "sd.width=null", "sampler=ddim", "device=cpu"]  # fmt: skip
    out = tmp_path / "out"
    sample(compose_cfg("sample.yaml", quote_spec_overrides(argv), out))
    with Image.open(out / "images" / "000.png") as im:
        written = np.asarray(im.convert("RGB"))
    assert written.shape == (24, 56, 3)
    record = json.loads((out / "generation.json").read_text())
    assert record["mode"] == "outpaint" and record["size"] == [24, 56]
    assert record["extend"] == {"top": 0, "bottom": 0, "left": 16, "right": 8} and record["fill"] == "edge"
    # the PNG holds exactly the Python API's image
    sd = StableDiffusion.from_single_file(saved()["safetensors"], "tiny")
    direct = sd.outpaint(tmp_path / "photo.png", "left:16,right:8", PROMPT, steps=2, sampler="ddim", seed=7,
                         progress=False)  # fmt: skip
    assert np.array_equal(written, (direct.images[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def test_generate_outpaint_errors(tmp_path):
    ckpt = saved()["safetensors"]
    with pytest.raises(ValueError, match="mode=outpaint needs extend=<side:pixels,...>, e.g. extend=left:128"):
        generate(ckpt, mode="outpaint", init_image="x.png", out_dir=tmp_path)
    with pytest.raises(ValueError, match="builds its own mask"):
        generate(ckpt, mode="outpaint", init_image="x.png", mask="m.png", extend="left:8", out_dir=tmp_path)
    with pytest.raises(ValueError, match="extend is only used by mode=outpaint"):
        generate(ckpt, mode="img2img", init_image="x.png", extend="left:8", out_dir=tmp_path)
    with pytest.raises(ValueError, match="multiple of 8"):  # checked before the weights load
        generate("/nonexistent.safetensors", mode="outpaint", init_image="x.png", extend="left:12", out_dir=tmp_path)
    with pytest.raises(ValueError, match="width must be a positive multiple of 8.*got 20"):
        StableDiffusion.from_single_file(ckpt, "tiny").outpaint(torch.rand(1, 3, 16, 20), "left:8", PROMPT)
