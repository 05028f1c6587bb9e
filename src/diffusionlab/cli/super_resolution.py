"""Super-resolution runs in ``sample.py`` and ``evaluate.py``: low-res inputs -> upscaled images beside bicubic.

``sample.py ckpt=<sr run> input=low.png`` (a PNG of the run's low-res size) or ``input=test:16`` (the first 16
test images, downscaled as in training) writes ``upscaled/*.png``, ``bicubic/*.png`` and a grid with the rows
low-res | bicubic | ours | ground truth (ground truth for ``test:`` inputs only). ``evaluate.py ckpt=<sr run>``
upscales ``num_samples`` test images and scores them and their bicubic upscaling against the originals: PSNR,
SSIM, and FID/KID against exactly those originals (the Evaluator's reference subset), into ``metrics.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor
from tqdm.auto import tqdm

from diffusionlab.cli.evaluate import check_num_samples, dataset_name, sampling_options
from diffusionlab.cli.runs import LoadedRun
from diffusionlab.data.transforms import fit_images, to_native_size
from diffusionlab.diffusion.degradation import downscale, upsample
from diffusionlab.metrics.datasets import load_split
from diffusionlab.metrics.fidelity import IMPLEMENTATION, psnr_ssim
from diffusionlab.metrics.reference import select_subset
from diffusionlab.pipelines.super_resolution import comparison_grid, upscale
from diffusionlab.utils.images import save_png, to_uint8, uint8_to_signed

log = logging.getLogger("diffusionlab.super_resolution")
DEGRADATION = "antialiased bicubic downscale (PIL-equivalent), clamped, 8-bit; bicubic upsampling for cond and baseline"


def is_super_resolution(run: LoadedRun) -> bool:
    return getattr(run.net, "cond_channels", None) is not None


def low_res_size(run: LoadedRun) -> int:
    size = (run.cfg.get("module") or {}).get("low_res_size")
    if size is None:
        raise ValueError(f"{run.ckpt_dir}/config.yaml has no module.low_res_size: not a super-resolution run")
    return int(size)


def test_images(run: LoadedRun, indices: Tensor, data_dir: str, cache_dir: str | None) -> tuple[Tensor, Tensor]:
    """Test images ``[n, C, H, W]`` in [-1, 1] at the run's training size and channels, and their labels."""
    images, labels = load_split(dataset_name(run.cfg), "test", data_dir, cache_dir)
    c, h = run.net.in_channels, run.net.image_size
    return uint8_to_signed(fit_images(images[indices], h, c)), labels[indices]


def load_inputs(spec: str, run: LoadedRun, data_dir: str, cache_dir: str | None):
    """``input=`` -> ``(low [n, C, h, h] in [-1, 1], truth [n, C, H, H] or None, names)``."""
    size = low_res_size(run)
    spec = str(spec)
    if spec.startswith("test:"):
        count = spec.removeprefix("test:")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"input={spec}: write input=test:N with N >= 1 test images, e.g. input=test:16")
        n = int(count)
        truth, _ = test_images(run, torch.arange(n), data_dir, cache_dir)
        return downscale(truth, size), truth, [f"test_{i:05d}" for i in range(n)]
    from diffusionlab.sd.pipeline import load_image

    channels = run.net.in_channels
    image = load_image(spec, mode="L" if channels == 1 else "RGB")  # [1, C, h, w] in [0, 1]
    if tuple(image.shape[-2:]) != (size, size):
        raise ValueError(
            f"input={spec} is {image.shape[-1]}x{image.shape[-2]} pixels; this model upscales {size}x{size} -> "
            f"{run.net.image_size}x{run.net.image_size}: give a {size}x{size} image (or input=test:N)"
        )
    return image * 2 - 1, None, [Path(spec).stem]


def sample_sr(cfg: DictConfig, run: LoadedRun, out_dir: Path, device: torch.device) -> Path:
    """``sample.py`` for a super-resolution run: upscale ``cfg.input``; returns the grid's path."""
    if cfg.get("input") is None:
        raise ValueError("this is a super-resolution run: give input=<low-res PNG> or input=test:N (e.g. test:16)")
    low, truth, names = load_inputs(cfg.input, run, cfg.paths.data_dir, cfg.paths.get("cache_dir"))
    steps = 50 if cfg.get("steps") is None else cfg.steps
    options = {k: v for k, v in sampling_options(cfg, run, cfg.sampler.name, steps).items() if k != "guidance"}
    log.info("upscaling %d images with %s, %d steps, seed %d", len(low), cfg.sampler.name, steps, cfg.seed)
    ours = upscale(run.net, run.diffusion, low.to(device), seed=cfg.seed, device=device, **options)
    bicubic = upsample(low, run.net.image_size)
    for folder, images in (("upscaled", ours), ("bicubic", bicubic)):
        for name, img in zip(names, to_uint8(images)):
            save_png(img.permute(1, 2, 0).numpy(), out_dir / folder / f"{name}.png")
    tag = f"{cfg.sampler.name}_{steps}steps_seed{cfg.seed}"
    grid_path = out_dir / f"sr_grid_{tag}.png"
    save_png(comparison_grid(low, ours, truth), grid_path)
    log.info("wrote %s and %d images in upscaled/ and bicubic/ (EMA weights of %s, step %d)",
             grid_path, len(low), run.ckpt_dir, run.global_step)  # fmt: skip
    print(grid_path)
    return grid_path


def evaluate_sr(cfg: DictConfig, run: LoadedRun, evaluator) -> dict:
    """Upscale ``cfg.num_samples`` test images (the Evaluator's reference subset, so FID compares with exactly
    their originals); PSNR / SSIM / FID / KID of ours and of bicubic. Returns the metrics.json dict: ours at the
    top level, the baseline under ``bicubic``."""
    check_num_samples(cfg.num_samples)
    if evaluator.split != "test" or evaluator.dataset != dataset_name(run.cfg):
        raise ValueError(
            f"super-resolution is scored on {dataset_name(run.cfg)}:test, not reference={evaluator.reference}"
        )
    n, size = cfg.num_samples, low_res_size(run)
    num_test = len(load_split(evaluator.dataset, "test", cfg.data_dir, cfg.cache_dir)[0])
    indices = select_subset(num_test, min(n, num_test), seed=evaluator.reference_seed)
    truth, labels = test_images(run, indices, cfg.data_dir, cfg.cache_dir)
    options = {k: v for k, v in sampling_options(cfg, run, cfg.sampler.name, cfg.steps).items() if k != "guidance"}
    device = next(run.net.parameters()).device
    ours, bicubic = [], []
    starts = range(0, len(truth), cfg.batch_size)
    for i, start in enumerate(tqdm(starts, desc="upscaling", unit="batch")):
        low = downscale(truth[start : start + cfg.batch_size], size)
        up = upscale(run.net, run.diffusion, low.to(device), seed=cfg.seed + i, progress=False, **options)
        ours.append(to_uint8(up))
        bicubic.append(to_uint8(upsample(low, run.net.image_size)))
    dataset = evaluator.dataset
    truth8 = to_native_size(to_uint8(truth), dataset)
    results = {}
    for name, images in (("ours", torch.cat(ours)), ("bicubic", torch.cat(bicubic))):
        images = to_native_size(images, dataset)
        fidelity = psnr_ssim(zip(images.split(cfg.batch_size), truth8.split(cfg.batch_size)))
        batches = zip(images.split(cfg.batch_size), labels.split(cfg.batch_size))
        scores = evaluator.evaluate(batches, num_samples=len(images), protocol=None)
        results[name] = {**fidelity, **scores}
    protocol = results["ours"].pop("protocol")
    results["bicubic"].pop("protocol")
    protocol.update(
        mode="super_resolution",
        run=str(run.ckpt_dir.parent),
        global_step=run.global_step,
        weights="ema",
        **options,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        low_res_size=size,
        image_size=run.net.image_size,
        degradation=DEGRADATION,
        inputs=f"the reference subset of {dataset}:test (select_subset seed {evaluator.reference_seed}), "
        "downscaled; FID/KID compare with exactly their originals",
        fidelity=IMPLEMENTATION,
    )
    return {**results["ours"], "bicubic": results["bicubic"], "protocol": protocol}


def summary_sr(m: dict) -> str:
    b, p = m["bicubic"], m["protocol"]
    return (
        f"ours: PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  FID {m['fid']:.2f} | bicubic: PSNR {b['psnr']:.2f} dB  "
        f"SSIM {b['ssim']:.4f}  FID {b['fid']:.2f}  ({p['low_res_size']} -> {p['image_size']}, n={p['num_samples']}, "
        f"{p['sampler']} {p['steps']})"
    )
