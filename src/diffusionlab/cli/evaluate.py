"""The evaluation task: a run's EMA samples (or a real split) against a held-out real split."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from diffusionlab.cli.runs import LoadedRun, load_run
from diffusionlab.cli.sample import pick_device
from diffusionlab.data.transforms import to_native_size
from diffusionlab.pipelines import check_conditioning, check_precision, default_sampler_opts, generate
from diffusionlab.utils.io import atomic_write_json, atomic_write_text, check_writable_dir

log = logging.getLogger("diffusionlab.evaluate")
METRICS_FILENAME = "metrics.json"
MODES = ("model", "data")


def dataset_name(run_cfg: DictConfig) -> str:
    """The dataset a run was trained on (latent runs: the dataset under their latent cache)."""
    data = run_cfg.data
    name = data.get("name") or (data.get("images") or {}).get("name")
    if not name:
        raise ValueError("cannot tell which dataset this run was trained on; give reference=<dataset>:test")
    return name


def sample_batches(
    run: LoadedRun, n: int, batch_size: int, seed: int, **options
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """``n`` samples ``[b, C, H, W]`` in [-1, 1] in batches, with their labels ``[b]`` (None if unconditional),
    class-balanced for conditional runs (labels cycle 0..K-1); batch ``i`` uses seed ``seed + i``, so the set
    depends only on (seed, batch_size, n). ``options`` go to :func:`generate` (sampler, steps, guidance,
    sampler_opts, precision, channels_last). Samples of a model trained on padded / resized images are brought
    back to the dataset's own size (MNIST 32 -> 28), so they are compared with the real split as it is."""
    k = getattr(run.net, "num_classes", None)
    for i, start in enumerate(range(0, n, batch_size)):
        b = min(batch_size, n - start)
        labels = (torch.arange(start, start + b) % k) if k is not None else None
        images, _ = generate(
            run.net, run.diffusion, run.sample_shape, labels=labels, n=b, seed=seed + i, decode=run.decode,
            progress=False, **options,
        )  # fmt: skip
        yield to_native_size(images, dataset_name(run.cfg)), labels


def _evaluator(cfg: DictConfig, reference: str):
    from diffusionlab.metrics import Evaluator

    return Evaluator(
        reference,
        data_dir=cfg.data_dir,
        cache_dir=cfg.cache_dir,
        inception_weights=cfg.inception_weights,
        classifier=cfg.classifier,
        device=pick_device(cfg.device),
    )


def summary(m: dict) -> str:
    def f(key, fmt="{:.3f}"):
        return fmt.format(m[key]) if m.get(key) is not None else "n/a"

    p = m["protocol"]
    return (
        f"FID {f('fid', '{:.2f}')}  KID {f('kid_mean', '{:.4f}')}±{f('kid_std', '{:.4f}')}  "
        f"precision {f('precision')}  recall {f('recall')}  IS {f('inception_score', '{:.2f}')}  "
        f"class acc {f('class_accuracy')}  "
        f"domain FID {f('domain_fid', '{:.2f}')}  pixel-histogram TV {f('pixel_histogram_tv', '{:.4f}')}  "
        f"faint pixels {f('faint_pixel_fraction')} (real {f('reference_faint_pixel_fraction')})  "
        f"(n={p['num_samples']} vs {p['reference']['split']}, "
        f"{p.get('sampler', 'data')} {p.get('steps', '')})"
    )


def _as_list(v) -> list | None:
    if v is None:
        return None
    return list(v) if isinstance(v, (list, tuple, ListConfig)) else [v]


def check_num_samples(n: int) -> None:
    if n < 2:
        raise ValueError(f"num_samples must be >= 2 (FID needs a covariance), got {n}")


def sampling_options(cfg: DictConfig, run: LoadedRun, sampler: str, steps: int) -> dict:
    """What :func:`generate` gets (and the protocol records): sampler, its options on top of the defaults,
    steps, guidance, precision, memory format."""
    given = cfg.sampler.get("opts") if sampler == cfg.sampler.name else None  # a sweep's other samplers: defaults
    return {
        "sampler": sampler,
        "sampler_opts": default_sampler_opts(latent=run.decode is not None, given=given),
        "steps": steps,
        "guidance": cfg.guidance,
        "precision": check_precision(cfg.precision, next(run.net.parameters()).device),
        "channels_last": cfg.channels_last,
    }


def evaluate_run(cfg: DictConfig, run: LoadedRun, evaluator, sampler: str, steps: int) -> dict:
    check_num_samples(cfg.num_samples)
    options = sampling_options(cfg, run, sampler, steps)
    batches = sample_batches(run, cfg.num_samples, cfg.batch_size, cfg.seed, **options)
    protocol = {
        "mode": "model",
        "run": str(run.ckpt_dir.parent),
        "global_step": run.global_step,
        "weights": "ema",
        "conditional": getattr(run.net, "num_classes", None) is not None,
        **options,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
    }
    return evaluator.evaluate(batches, num_samples=cfg.num_samples, protocol=protocol)


def plot_sweep(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["sampler"] for r in rows):
        pts = sorted((r["steps"], r["fid"]) for r in rows if r["sampler"] == name)
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(f"FID (n={rows[0]['num_samples']})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from diffusionlab.utils.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def evaluate(cfg: DictConfig) -> dict:
    if cfg.mode not in MODES:
        raise ValueError(f"unknown mode {cfg.mode!r}; valid choices: {', '.join(MODES)}")
    if cfg.mode == "data":
        if not cfg.a or not cfg.b:
            raise ValueError("mode=data needs a=<dataset:split> and b=<dataset:split>, e.g. a=mnist:train b=mnist:test")
        from diffusionlab.metrics import compare_datasets

        out_dir = check_writable_dir(cfg.out_dir or cfg.paths.output_dir)
        metrics = compare_datasets(
            cfg.a,
            cfg.b,
            cfg.num_samples,
            noise_std=cfg.noise_std,
            noise_seed=cfg.seed,
            evaluator=_evaluator(cfg, cfg.b),
        )
        atomic_write_json(out_dir / METRICS_FILENAME, metrics)
        print(f"{cfg.a} vs {cfg.b}: " + summary(metrics))
        return metrics

    if cfg.ckpt is None:
        raise ValueError("give ckpt=<run folder> (or mode=data a=... b=...)")
    run = load_run(cfg.ckpt, device=pick_device(cfg.device))
    num_classes = getattr(run.net, "num_classes", None)
    check_conditioning(num_classes, has_labels=num_classes is not None, guidance=cfg.guidance)
    out_dir = check_writable_dir(cfg.out_dir or run.ckpt_dir.parent)
    reference = cfg.reference or f"{dataset_name(run.cfg)}:test"
    evaluator = _evaluator(cfg, reference)
    steps_list, samplers = _as_list(cfg.sweep.steps), _as_list(cfg.sweep.sampler)
    from diffusionlab.cli.super_resolution import evaluate_sr, is_super_resolution, summary_sr

    if is_super_resolution(run):
        if steps_list is not None or samplers is not None:
            raise ValueError("sweep.* is not supported for super-resolution runs: evaluate one sampler and steps")
        metrics = evaluate_sr(cfg, run, evaluator)
        atomic_write_json(out_dir / METRICS_FILENAME, metrics)
        log.info("wrote %s", out_dir / METRICS_FILENAME)
        print(summary_sr(metrics))
        return metrics
    if steps_list is None and samplers is None:
        metrics = evaluate_run(cfg, run, evaluator, cfg.sampler.name, cfg.steps)
        atomic_write_json(out_dir / METRICS_FILENAME, metrics)
        log.info("wrote %s", out_dir / METRICS_FILENAME)
        print(summary(metrics))
        return metrics

    rows = []
    for name, steps in itertools.product(samplers or [cfg.sampler.name], steps_list or [cfg.steps]):
        m = evaluate_run(cfg, run, evaluator, name, int(steps))
        rows.append(
            {
                "sampler": name,
                "steps": int(steps),
                "num_samples": m["num_samples"],
                "fid": m["fid"],
                "kid_mean": m["kid_mean"],
                "class_accuracy": m["class_accuracy"],
                "protocol": m["protocol"],
            }
        )
        print(summary(m))
    table = ["| sampler | steps | FID | KID | class acc |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        acc = "n/a" if r["class_accuracy"] is None else f"{r['class_accuracy']:.3f}"
        table.append(f"| {r['sampler']} | {r['steps']} | {r['fid']:.2f} | {r['kid_mean']:.4f} | {acc} |")
    atomic_write_text(out_dir / "sweep.md", "\n".join(table) + "\n")
    atomic_write_json(out_dir / "sweep.json", {"rows": rows, "config": OmegaConf.to_container(cfg.sweep)})
    plot_sweep(rows, out_dir / "sweep_fid_vs_steps.png")
    print("\n".join(table))
    return {"rows": rows}
