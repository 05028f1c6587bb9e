"""The sampling task: a run's EMA weights -> a PNG grid (+ single PNGs, + a trajectory GIF).

Samples are drawn ``batch_size`` at a time (batch ``i`` from seed ``seed + i``) and written as they come, so
memory stays flat in ``n``: only the first ``grid_max`` samples are kept, for the grid and the GIF.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig
from tqdm.auto import tqdm

from diffusionlab.cli.runs import load_run
from diffusionlab.pipelines import default_sampler_opts, generate
from diffusionlab.utils.images import make_grid, save_gif, save_png, to_uint8
from diffusionlab.utils.io import check_writable_dir

log = logging.getLogger("diffusionlab.sample")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; valid choices: auto, cpu, cuda, cuda:N")
    return torch.device(name)


def sample_labels(spec, n: int, num_classes: int | None) -> torch.Tensor | None:
    """Labels ``[n]`` from ``class=`` (an int, a list, or None = cycle through all classes)."""
    if num_classes is None:
        if spec is not None:
            raise ValueError(
                f"class={spec} given, but this model is unconditional (trained with data.conditional=false): "
                "it has no classes to choose from; leave class unset"
            )
        return None
    classes = list(range(num_classes)) if spec is None else spec
    classes = list(classes) if isinstance(classes, (list, tuple, ListConfig)) else [classes]
    bad = [c for c in classes if not isinstance(c, int) or not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class {bad} out of range: valid classes are 0..{num_classes - 1}")
    return torch.tensor(classes).repeat((n + len(classes) - 1) // len(classes))[:n]


SD_KEYS = (
    "prompt",
    "negative_prompt",
    "mode",
    "init_image",
    "mask",
    "extend",
    "strength",
    "height",
    "width",
    "dtype",
    "save_trajectory",
)
MODELS = ("sd15",)


def sample_sd(cfg: DictConfig) -> Path:
    """Stable Diffusion 1.5 through :func:`diffusionlab.sd.run.generate`; top-level keys override ``cfg.sd``."""
    from diffusionlab.sd.run import generate as sd_generate

    args = dict(cfg.sd)
    args.update({k: cfg[k] for k in SD_KEYS if cfg.get(k) is not None})
    args.update(sampler=cfg.sampler.name, seed=cfg.seed, n=cfg.n, device=cfg.device, out_dir=str(cfg.out_dir))
    for k in ("steps", "guidance"):
        if cfg.get(k) is not None:
            args[k] = cfg[k]
    if not args.get("checkpoint"):
        raise ValueError("model=sd15 needs sd.checkpoint=<v1-5-pruned-emaonly.safetensors, .ckpt or diffusers folder>")
    result = sd_generate(**args)
    log.info("wrote %s", result.get("grid") or result)
    return Path(result["grid"]) if result.get("grid") else Path(cfg.out_dir)


def sample(cfg: DictConfig) -> Path:
    if cfg.n < 1:
        raise ValueError(f"n must be >= 1, got {cfg.n}")
    for key in ("batch_size", "grid_max"):
        if cfg.get(key) is None or cfg[key] < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {cfg.get(key)}")
    out_dir = check_writable_dir(cfg.out_dir)
    if cfg.get("model") is not None:
        name = cfg.model.get("name")
        if name not in MODELS:
            raise ValueError(
                f"model={name or 'this'} cannot be sampled directly; valid choices: sd15 (or no model "
                "and ckpt=<run folder> for a run trained with train.py)"
            )
        return sample_sd(cfg)
    if cfg.get("ckpt") is None:
        raise ValueError("give ckpt=<run folder> (a run written by train.py), or model=sd15 for Stable Diffusion")
    steps = 50 if cfg.get("steps") is None else cfg.steps
    guidance = 1.0 if cfg.get("guidance") is None else cfg.guidance
    device = pick_device(cfg.device)
    run = load_run(cfg.ckpt, device=device)
    from diffusionlab.cli.super_resolution import is_super_resolution, sample_sr

    if is_super_resolution(run):
        return sample_sr(cfg, run, out_dir, device)
    if cfg.get("input") is not None:
        raise ValueError(f"input={cfg.input} is for super-resolution runs; {run.ckpt_dir.parent} samples from noise")
    labels = sample_labels(cfg.get("class"), cfg.n, getattr(run.net, "num_classes", None))
    opts = default_sampler_opts(latent=run.decode is not None, given=cfg.sampler.get("opts"))
    frames_every = max(1, steps // cfg.gif_frames) if cfg.gif else 0
    log.info(
        "sampling %d images with %s, %d steps, guidance %.2f, seed %d",
        cfg.n,
        cfg.sampler.name,
        steps,
        guidance,
        cfg.seed,
    )
    n_grid = min(cfg.n, cfg.grid_max)
    grid: list[torch.Tensor] = []  # uint8 [b, C, H, W] chunks of the first n_grid samples
    frames: list[list[torch.Tensor]] = []  # per GIF frame, the same chunks of the predicted x0
    starts = range(0, cfg.n, cfg.batch_size)
    for i, start in enumerate(tqdm(starts, desc="sampling", unit="batch", disable=len(starts) == 1)):
        b = min(cfg.batch_size, cfg.n - start)
        keep = max(0, min(b, n_grid - start))
        images, trajectory = generate(
            run.net,
            run.diffusion,
            run.sample_shape,
            labels=None if labels is None else labels[start : start + b],
            n=b,
            sampler=cfg.sampler.name,
            steps=steps,
            guidance=guidance,
            seed=cfg.seed + i,
            sampler_opts=opts,
            decode=run.decode,
            trajectory_every=frames_every if keep else 0,
            progress=len(starts) == 1,
            device=device,
            precision=cfg.precision,
            channels_last=cfg.channels_last,
        )
        u8 = to_uint8(images)
        if cfg.save_individual:
            for j, img in enumerate(u8):
                save_png(img.permute(1, 2, 0).numpy(), out_dir / "images" / f"{start + j:05d}.png")
        if keep:
            grid.append(u8[:keep])
            if trajectory:
                frames = frames or [[] for _ in range(len(trajectory) + 1)]
                for frame, x in zip(frames, trajectory + [images]):
                    frame.append(to_uint8(x[:keep]))
        del images, trajectory, u8
    tag = f"{cfg.sampler.name}_{steps}steps_g{guidance:g}_seed{cfg.seed}"
    grid_path = save_png(make_grid(torch.cat(grid), nrow=cfg.nrow), out_dir / f"grid_{tag}.png", scale=2)
    if frames:
        save_gif([make_grid(torch.cat(f), nrow=cfg.nrow) for f in frames], out_dir / f"trajectory_{tag}.gif", scale=2)
    log.info("wrote %s (EMA weights of %s, step %d)", grid_path, run.ckpt_dir, run.global_step)
    print(grid_path)
    return grid_path
