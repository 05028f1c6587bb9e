"""What the latent cache buys: training speed of latent diffusion with the cache, with encoding every batch, and
of pixel-space diffusion with a comparable network; cache size per image and the one-time encoding cost.

    python benchmarks/bench_latent.py                  # 20 timed steps per setting, batch 64 (~3 min)
    python benchmarks/bench_latent.py --steps 5        # smoke run
    python benchmarks/bench_latent.py --ae <run>       # a trained autoencoder (speed does not depend on weights)

Settings (same batch, real MNIST padded to 32x32, class-conditional, T = 1000, the module's configured AdamW):

* ``latent+cache``: ``experiment=mnist_ldm``'s UNet on 4x8x8 latents read from a :class:`LatentCacheDataModule`
  (a fresh posterior sample per item);
* ``latent+encode``: the same UNet, image batches encoded by the frozen autoencoder every step
  (``module.encode_images=true``);
* ``pixel``: the default MNIST model (``configs/model/unet_small.yaml``) on 1x32x32 pixels.

One step = load a batch + the module's data hook (scale / encode) + diffusion loss + backward + AdamW step,
i.e. ``training_step`` without logging. Reported per setting: median wall and CPU (``process_time``) seconds per
step and the projected epoch (55,000 training images); ratios use CPU time, the stable number on a machine
shared with other jobs. Runs in one process with ``--threads`` intra-op threads (default 1).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = 55_000  # MNIST train split minus the 5,000 validation images


def _data_dir(arg: str | None) -> Path:
    """A writable folder in torchvision's layout whose MNIST files link to the shared copy."""
    src = Path(arg or os.environ.get("DIFFUSIONLAB_DATA_DIR") or ROOT.parent / "shared" / "datasets")
    dst = Path(tempfile.mkdtemp(prefix="bench-latent-data-"))
    (dst / "MNIST" / "raw").mkdir(parents=True)
    for f in (src / "MNIST" / "raw").glob("*.gz"):
        os.symlink(f.resolve(), dst / "MNIST" / "raw" / f.name)
    return dst


def _compose(*overrides: str):
    sys.path.insert(0, str(ROOT))
    from tests.helpers import compose_cfg

    return compose_cfg("train.yaml", list(overrides), Path(tempfile.mkdtemp(prefix="bench-latent-run-")) / "run")


def _timed_steps(module, batches, steps: int, warmup: int) -> tuple[float, float]:
    """Median (wall, cpu) seconds of ``steps`` training steps after ``warmup`` untimed ones."""
    from diffusionlab.lit.optim import make_optimizer

    opt = make_optimizer(module.optimizer_factory, module.net.parameters(), None)  # the configured (fused) AdamW
    module.train()
    wall, cpu = [], []
    it = iter(batches)
    for i in range(warmup + steps):
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(batches)
            batch = next(it)
        x, y = module._prepare(batch)
        loss = module.diffusion.training_loss(module.net, x, y, num_classes=module.num_classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--images", type=int, default=2048, help="training images encoded into the cache")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ae", default=None, help="trained autoencoder run (default: the kl_f4 config, random init)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    import torch
    from hydra.utils import instantiate

    from diffusionlab.cli.train import build_module
    from diffusionlab.data.datamodule import ImageDataModule
    from diffusionlab.data.latent_cache import LatentCacheDataModule
    from diffusionlab.nets import count_parameters
    from diffusionlab.nets.autoencoder import kl_autoencoder, load_autoencoder, set_scale_factor

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data_dir = _data_dir(args.data_dir)
    cache_dir = Path(tempfile.mkdtemp(prefix="bench-latent-cache-"))
    if args.ae:
        ae = load_autoencoder(args.ae)
    else:
        ae = set_scale_factor(kl_autoencoder(in_channels=1), 1.0).eval().requires_grad_(False)
    images = functools.partial(
        ImageDataModule, "mnist", str(data_dir), image_size=32, batch_size=args.batch, train_subset=args.images,
        val_size=256,
    )  # fmt: skip

    common = [f"paths.data_dir={data_dir}", f"paths.cache_dir={cache_dir}", "logger=csv", "callbacks=none"]
    latent_cfg = _compose("experiment=mnist_ldm", "autoencoder.ckpt=unused", *common)
    pixel_cfg = _compose("model=unet_small", "data.image_size=32", *common)
    results: dict = {"batch": args.batch, "threads": args.threads, "timed_steps": args.steps}

    # the cache: build once (timed), then bytes per image
    dm = LatentCacheDataModule(images(), ae, cache_dir=cache_dir, encode_batch_size=256, progress=False)
    c0, w0 = time.process_time(), time.perf_counter()
    folder = dm.ensure_cache("train")
    build_wall, build_cpu = time.perf_counter() - w0, time.process_time() - c0
    dm.setup("fit")
    per_image = dm.cache_bytes_per_image("train")
    results["cache"] = {
        "images": args.images,
        "build_s_wall": build_wall,
        "build_s_cpu": build_cpu,
        "projected_full_train_build_s_cpu": build_cpu * TRAIN_IMAGES / args.images,
        "bytes_per_image_float32": per_image,
        "bytes_per_image_float16": (per_image - 8) / 2 + 8,  # mean and std halve, labels stay int64
        "pixel_bytes_per_image_uint8": 32 * 32,
        "folder": str(folder),
    }

    def latent_module(encode_images: bool):
        torch.manual_seed(0)
        cfg = latent_cfg.copy()
        cfg.module.encode_images = encode_images
        net, diffusion = instantiate(cfg.model), instantiate(cfg.diffusion)
        return instantiate(cfg.module, net=net, diffusion=diffusion, autoencoder=ae)

    settings = {
        "latent+cache": (latent_module(False), dm.train_dataloader()),
        "latent+encode": (latent_module(True), _image_loader(images, args.batch)),
        "pixel": (build_module(pixel_cfg), _image_loader(images, args.batch)),
    }
    for name, (module, loader) in settings.items():
        wall, cpu = _timed_steps(module, loader, args.steps, args.warmup)
        steps_per_epoch = TRAIN_IMAGES // args.batch
        results[name] = {
            "net_parameters": count_parameters(module.net),
            "step_s_wall": wall,
            "step_s_cpu": cpu,
            "epoch_s_cpu": cpu * steps_per_epoch,
            "images_per_cpu_s": args.batch / cpu,
        }
        print(f"{name:14s} {count_parameters(module.net) / 1e6:5.2f}M params  step {wall:.3f}s wall, {cpu:.3f}s cpu"
              f"  -> epoch {cpu * steps_per_epoch / 60:.1f} cpu-min", flush=True)  # fmt: skip
    cached = results["latent+cache"]["step_s_cpu"]
    results["ratios"] = {
        "encode_every_batch_over_cache": results["latent+encode"]["step_s_cpu"] / cached,
        "pixel_over_latent_cache": results["pixel"]["step_s_cpu"] / cached,
        "cache_build_in_cached_epochs": build_cpu * TRAIN_IMAGES / args.images / results["latent+cache"]["epoch_s_cpu"],
    }
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def _image_loader(images, batch: int):
    dm = images()
    dm.setup("fit")
    return dm.train_dataloader()


if __name__ == "__main__":
    from diffusionlab.utils.allocator import tune_cpu_allocator

    tune_cpu_allocator()  # before torch is imported; the same for every peer timed here
    main()
