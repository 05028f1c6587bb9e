"""Super-resolution through the real entry points on a tiny budget: train.py experiment=mnist_sr (20 steps of a
tiny UNet on 320 real MNIST images) -> sample.py input=test:4 / input=<png> -> evaluate.py (PSNR, SSIM, FID
next to bicubic), with evaluate's bicubic numbers checked against a direct torchmetrics computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from diffusionlab.cli.evaluate import evaluate
from diffusionlab.cli.sample import sample
from diffusionlab.cli.train import train
from diffusionlab.metrics.datasets import load_split
from diffusionlab.metrics.reference import select_subset
from tests.helpers import compose_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SR = [
    "experiment=mnist_sr",
    "debug=fast",
    "logger=csv",
    "data.train_subset=320",
    "data.val_size=128",
    "trainer.max_steps=20",
    "model.base_channels=16",
    "model.channel_mult=[1,2]",
    "model.attention_resolutions=[]",
    "model.norm_groups=8",
    "callbacks.sample_grid.per_class=3",
    "callbacks.sample_grid.steps=3",
]


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("sr") / "run"
    train(compose_cfg("train.yaml", [f"paths.data_dir={data_dir}", *TINY_SR], out))
    return out


def test_training_writes_a_comparison_grid_and_the_low_res_size(sr_run):
    cfg = OmegaConf.load(sr_run / "checkpoints" / "config.yaml")
    assert cfg.module.low_res_size == 7 and cfg.model.cond_channels == 1 and cfg.model.num_classes is None
    assert (sr_run / "checkpoints" / "ema.safetensors").is_file()
    grid = Image.open(next((sr_run / "samples").glob("*.png")))
    assert grid.height > 4 * 2 * 28 and grid.width > 3 * 2 * 28  # 4 labelled rows of 3 images at scale 2


def _sample_cfg(run, data_dir, out, *extra):
    return compose_cfg(
        "sample.yaml", [f"ckpt={run}", f"paths.data_dir={data_dir}", "steps=3", f"out_dir={out}", *extra], out
    )


def test_sample_upscales_test_images_and_a_png(sr_run, data_dir, tmp_path):
    out = tmp_path / "test4"
    grid = sample(_sample_cfg(sr_run, data_dir, out, "input=test:4"))
    assert grid.is_file() and Image.open(grid).height > 4 * 28
    for folder in ("upscaled", "bicubic"):
        files = sorted((out / folder).glob("*.png"))
        assert [f.name for f in files] == [f"test_{i:05d}.png" for i in range(4)]
        assert Image.open(files[0]).size == (28, 28)
    low = Image.fromarray(np.asarray(Image.open(out / "bicubic" / "test_00000.png"))).resize((7, 7))
    low.save(tmp_path / "low.png")
    out2 = tmp_path / "png"
    sample(_sample_cfg(sr_run, data_dir, out2, f"input={tmp_path / 'low.png'}"))
    assert Image.open(out2 / "upscaled" / "low.png").size == (28, 28)
    low.resize((9, 9)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="give a 7x7 image"):
        sample(_sample_cfg(sr_run, data_dir, tmp_path / "bad", f"input={tmp_path / 'big.png'}"))
    with pytest.raises(ValueError, match="input=test:N"):
        sample(_sample_cfg(sr_run, data_dir, tmp_path / "none"))


def test_evaluate_reports_psnr_ssim_fid_next_to_bicubic(sr_run, data_dir, shared_dir, tmp_path):
    n, out = 4, tmp_path / "eval"
    weights = shared_dir / "weights" / "inception-2015-12-05-pool3.torchscript.pt"
    cfg = compose_cfg(
        "evaluate.yaml",
        [
            f"ckpt={sr_run}",
            f"num_samples={n}",
            "steps=3",
            "batch_size=4",
            f"out_dir={out}",
            f"data_dir={data_dir}",
            f"cache_dir={tmp_path / 'cache'}",
            f"inception_weights={weights}",
            "classifier=false",
        ],  # fmt: skip
        tmp_path / "h",
    )
    metrics = evaluate(cfg)
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    p = metrics["protocol"]
    assert p["mode"] == "super_resolution" and p["low_res_size"] == 7 and p["image_size"] == 28
    assert p["num_samples"] == n and p["steps"] == 3 and p["reference"]["n"] == n
    b = metrics["bicubic"]
    assert b["fid"] > 0 and 0 < b["ssim"] <= 1 and b["psnr"] > 10  # bicubic of 7x7 MNIST: ~15 dB
    assert metrics["fid"] > 0 and -1 <= metrics["ssim"] <= 1 and metrics["psnr"] > 0  # 20 steps: not yet better

    # the bicubic baseline, recomputed directly: the same test images, downscaled and upsampled by torch
    images, _ = load_split("mnist", "test", data_dir, tmp_path / "cache")
    truth = images[select_subset(len(images), n, seed=0)].float() / 255
    low = F.interpolate(truth * 2 - 1, size=(7, 7), mode="bicubic", antialias=True).clamp(-1, 1)
    low = ((low + 1) * 127.5).round() / 127.5 - 1
    up = F.interpolate(low, size=(28, 28), mode="bicubic").clamp(-1, 1)
    up = ((up + 1) * 127.5).round() / 255
    psnr = peak_signal_noise_ratio(up, truth, data_range=1.0, dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(up, truth, data_range=1.0)
    assert metrics["bicubic"]["psnr"] == pytest.approx(float(psnr), abs=1e-4)
    assert metrics["bicubic"]["ssim"] == pytest.approx(float(ssim), abs=1e-5)
