"""run.generate: the files a Stable Diffusion run writes, its arguments and its errors (tiny weights)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffusionlab.sd.pipeline import StableDiffusion
from diffusionlab.sd.run import generate
from tests.sd_tiny import saved

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(config="tiny", steps=3, height=32, width=48, progress=False)


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_txt2img_writes_images_grid_trajectory_and_record(tmp_path):
    files = generate(saved()["safetensors"], "a photo of a cat", n=2, seed=3, save_trajectory=True,
                     out_dir=tmp_path, trajectory_frames=2, **COMMON)  # fmt: skip
    assert files["seed"] == 3 and len(files["images"]) == 2
    first = read_png(files["images"][0])
    assert first.shape == (32, 48, 3)
    # the PNG holds exactly the pipeline's image
    sd = StableDiffusion.from_single_file(saved()["safetensors"], "tiny")
    direct = sd.txt2img("a photo of a cat", steps=3, seed=3, n=2, height=32, width=48, progress=False).images
    expected = (direct[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(first, expected)
    assert read_png(files["grid"]).shape[0] > 32
    strip = read_png(files["trajectory"])  # 2 frames wide, (x_t row + x0 row) per sample
    assert strip.shape[:2] == (2 + 4 * (32 + 2), 2 + 2 * (48 + 2))
    with Image.open(files["trajectory_gif"]) as gif:
        assert gif.n_frames == 2
    record = json.loads((tmp_path / "generation.json").read_text())
    assert record["seed"] == 3 and record["size"] == [32, 48] and len(record["timesteps"]) == 3


def test_img2img_and_inpaint_from_files(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((40, 40), np.uint8)
    mask[:, 20:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    a = generate(saved()["diffusers"], "a cat", mode="img2img", init_image=tmp_path / "in.png",
                 out_dir=tmp_path / "a", **{**COMMON, "config": None})  # fmt: skip
    assert read_png(a["images"][0]).shape == (32, 48, 3)  # resized to height x width
    b = generate(saved()["diffusers"], "a cat", mode="inpaint", init_image=tmp_path / "in.png",
                 mask=tmp_path / "mask.png", out_dir=tmp_path / "b", height=None, width=None, steps=2,
                 progress=False)  # fmt: skip
    assert read_png(b["images"][0]).shape == (40, 40, 3)
    record = json.loads((tmp_path / "b" / "generation.json").read_text())
    assert record["mode"] == "inpaint" and len(record["timesteps"]) == 2


def test_yaml_lists_the_arguments_with_their_defaults():
    cfg = yaml.safe_load((ROOT / "configs" / "sd" / "sd15.yaml").read_text())
    params = {
        name: p.default
        for name, p in inspect.signature(generate).parameters.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD
    }
    assert set(cfg) == set(params)
    assert cfg["checkpoint"] is None
    assert all(cfg[k] == v for k, v in params.items() if k not in ("checkpoint", "out_dir"))


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint given"):
        generate(None, out_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown mode 'sketch'.*txt2img"):
        generate(saved()["safetensors"], mode="sketch", out_dir=tmp_path)
    with pytest.raises(ValueError, match="init_image"):
        generate(saved()["safetensors"], mode="img2img", out_dir=tmp_path)
    with pytest.raises(ValueError, match="mask"):
        generate(saved()["safetensors"], mode="inpaint", init_image="x.png", out_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        generate(saved()["safetensors"], dtype="float8", out_dir=tmp_path)
    with pytest.raises(ValueError, match="multiple of 8"):
        generate(saved()["safetensors"], out_dir=tmp_path, **{**COMMON, "height": 36})


def test_sample_entry_point_runs_stable_diffusion(tmp_path):
    """`sample.py model=sd15 sd.checkpoint=... prompt=...` (the Hydra task, in-process) writes the images."""
    from diffusionlab.cli.sample import sample
    from tests.helpers import compose_cfg

    overrides = ["model=sd15", f"sd.checkpoint={saved()['safetensors']}", "+sd.config=tiny", "prompt='a red cube'",
                 "negative_prompt=blurry", "steps=2", "sampler=dpmpp_2m", "guidance=7.5", "seed=42", "n=2",
                 "height=32", "width=32"]  # fmt: skip
    grid = sample(compose_cfg("sample.yaml", overrides, tmp_path))
    assert grid == tmp_path / "grid.png" and grid.is_file()
    assert len(list((tmp_path / "images").glob("*.png"))) == 2
    record = json.loads((tmp_path / "generation.json").read_text())
    assert record["seed"] == 42 and record["size"] == [32, 32]
