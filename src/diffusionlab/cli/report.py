"""Report of a multirun (e.g. ``make compare-schedules``): every run evaluated the same way, a markdown table
with mean ± std over seeds per group, which group wins at each sampling step count against the seed spread
(:mod:`.verdict`), whether the runs had converged (:mod:`.convergence`), and PNG plots.

    python -m diffusionlab.cli.report <multirun folder> [--group-by diffusion.schedule] [evaluate.yaml overrides]

Each run (a folder with ``checkpoints/config.yaml`` and ``ema.safetensors``) is evaluated through
``evaluate.py``'s code at one sample count and a sweep of sampling steps (``sweep.steps``, which always includes
``steps``, the step count of the table); results go to ``<run>/report_eval/`` and are reused when the run has
not changed since. Written to ``<folder>/report/``: ``report.md``, ``report.json``,
``fid_vs_training_steps.png`` (from each run's ``eval_history.json``), ``fid_vs_sampling_steps.png`` and
``schedules.png`` (alpha_bar(t) of each group's schedule and one test digit noised by it at the same t's).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from diffusionlab.cli.convergence import TOLERANCE, convergence_sentence, last_interval
from diffusionlab.cli.runs import CONFIG_FILENAME, load_run_config
from diffusionlab.cli.verdict import RULE, Verdict, compare, mean_pm, mean_std, summary_sentence
from diffusionlab.lit.callbacks import EMA_FILENAME
from diffusionlab.lit.eval_callback import HISTORY_FILENAME, read_history
from diffusionlab.utils.io import atomic_path, atomic_write_json, atomic_write_text, check_writable_dir

log = logging.getLogger("diffusionlab.report")
CONFIGS = Path(__file__).resolve().parents[3] / "configs"
EVAL_DIRNAME = "report_eval"
REPORT_DIRNAME = "report"
DEFAULT_SWEEP_STEPS = [10, 20, 50, 100]
NOISED_FRACTIONS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


# ---------------------------------------------------------------------------------------------- runs
def find_runs(folder: str | Path) -> list[Path]:
    """Run folders under ``folder`` (itself, its children, or grandchildren), in job-number order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{str(folder)!r} is not a folder (give a multirun folder such as logs/.../multiruns/<time>)"
        )
    found = [p.parent.parent for p in folder.glob("**/checkpoints/" + CONFIG_FILENAME)]
    found = [p for p in found if len(p.relative_to(folder).parts) <= 2]  # <folder>/<job> or <folder>/<sweep>/<job>

    def order(p: Path):
        parts = p.relative_to(folder).parts
        return tuple((0, int(s), "") if s.isdigit() else (1, 0, s) for s in parts)

    runs = sorted(set(found), key=order)
    if not runs:
        raise FileNotFoundError(f"no runs under {str(folder)!r} (looked for <run>/checkpoints/{CONFIG_FILENAME})")
    return runs


def final_val_loss(run: Path, history: list[dict]) -> float | None:
    """The last ``val/loss_ema`` of the run: from its eval history, else from its CSV log."""
    for entry in reversed(history):
        if "val/loss_ema" in entry.get("val", {}):
            return float(entry["val"]["val/loss_ema"])
    for path in sorted(run.glob("csv/version_*/metrics.csv"), reverse=True):
        with open(path) as f:
            vals = [r["val/loss_ema"] for r in csv.DictReader(f) if r.get("val/loss_ema")]
        if vals:
            return float(vals[-1])
    return None


def describe_run(run: Path, group_by: str) -> dict:
    cfg = load_run_config(run)
    hist_path = run / HISTORY_FILENAME
    history = read_history(hist_path)["evaluations"] if hist_path.is_file() else []
    group = OmegaConf.select(cfg, group_by)
    if group is None:
        raise ValueError(f"run {str(run)!r} has no config key {group_by!r} to group by (see --group-by)")
    return {
        "run": str(run),
        "name": run.name,
        "group": str(group),
        "seed": cfg.get("seed"),
        "cfg": cfg,
        "history": history,
        "last_interval": last_interval(history),
        "val_loss_ema": final_val_loss(run, history),
    }


# ---------------------------------------------------------------------------------------------- evaluation
def compose_evaluate_cfg(overrides: list[str], out_dir: Path) -> DictConfig:
    """``configs/evaluate.yaml`` with ``overrides``, as ``evaluate.py`` would see it (no Hydra app needed)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from diffusionlab.cli.resolvers import register_resolvers

    if not (CONFIGS / "evaluate.yaml").is_file():
        raise FileNotFoundError(f"configs not found at {CONFIGS} (the report runs from a source checkout)")
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="evaluate.yaml", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        del cfg.hydra
    return cfg


def _sweep_steps(cfg: DictConfig) -> list[int]:
    steps = [int(s) for s in (cfg.sweep.steps or DEFAULT_SWEEP_STEPS)]
    return sorted(set(steps) | {int(cfg.steps)})


def _wanted(cfg: DictConfig, steps: list[int]) -> list[tuple]:
    return [(cfg.sampler.name, s, cfg.num_samples, cfg.seed, cfg.guidance) for s in steps]


def _reusable(out: Path, run: Path, cfg: DictConfig, steps: list[int]) -> list[dict] | None:
    path = out / "sweep.json"
    ema = run / "checkpoints" / EMA_FILENAME
    if not path.is_file() or not ema.is_file() or path.stat().st_mtime < ema.stat().st_mtime:
        return None
    rows = json.loads(path.read_text())["rows"]
    have = [
        (r["sampler"], r["steps"], r["num_samples"], r["protocol"]["seed"], r["protocol"]["guidance"]) for r in rows
    ]
    ref = {r["protocol"]["reference"]["split"] for r in rows}
    want_ref = cfg.reference or None
    if have != _wanted(cfg, steps) or (want_ref is not None and ref != {want_ref}):
        return None
    return rows


def evaluate_run_sweep(run: Path, overrides: list[str], force: bool = False) -> list[dict]:
    """Rows ``{sampler, steps, num_samples, fid, kid_mean, class_accuracy, protocol}`` of one run, one per step
    count, from ``evaluate.py``'s sweep (reused from ``<run>/report_eval/sweep.json`` when still valid)."""
    from diffusionlab.cli.evaluate import evaluate

    out = run / EVAL_DIRNAME
    base = compose_evaluate_cfg(overrides, out)
    steps = _sweep_steps(base)
    if not force and (rows := _reusable(out, run, base, steps)) is not None:
        log.info("%s: reusing %s", run.name, out / "sweep.json")
        return rows
    cfg = compose_evaluate_cfg(
        [*overrides, f"ckpt={run}", f"out_dir={out}", f"sweep.steps=[{','.join(map(str, steps))}]"], out
    )
    return evaluate(cfg)["rows"]


def evaluate_floor(dataset: str, overrides: list[str], out: Path) -> dict:
    """FID/KID of ``<dataset>:train`` against ``<dataset>:test`` at the same n: the floor of the table's numbers."""
    from diffusionlab.cli.evaluate import evaluate

    cfg = compose_evaluate_cfg(
        [*overrides, "mode=data", f"a={dataset}:train", f"b={dataset}:test", f"out_dir={out}"], out
    )
    return evaluate(cfg)


# ---------------------------------------------------------------------------------------------- statistics
def fmt(values: list, digits: int = 2, scale: float = 1.0) -> str:
    """``mean ± std`` (sample std over runs), ``mean`` for one run, ``n/a`` for none."""
    m, s = mean_std([None if v is None else v * scale for v in values])
    return "n/a" if m is None else mean_pm(m, s, digits)


def sampling_steps(runs: list[dict]) -> list[int]:
    """Every sampling step count any run was evaluated at, ascending."""
    return sorted({row["steps"] for r in runs for row in r["rows"]})


def main_row(rows: list[dict], steps: int) -> dict:
    return next(r for r in rows if r["steps"] == steps)


# ---------------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    _pyplot().close(fig)
    return path


def plot_training_curves(runs: list[dict], groups: list[str], path: Path) -> Path | None:
    """FID of the eval callback against the global step, one line per run, one colour per group."""
    if not any(r["history"] for r in runs):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = {g: f"C{i}" for i, g in enumerate(groups)}
    styles = ["-", "--", ":", "-."]
    n = None
    for r in runs:
        pts = [(e["global_step"], e["fid"]) for e in r["history"] if e.get("fid") is not None]
        if pts:
            n = r["history"][-1]["num_samples"]
            seeds = [x["seed"] for x in runs if x["group"] == r["group"]]
            style = styles[seeds.index(r["seed"]) % len(styles)] if r["seed"] in seeds else "-"
            ax.plot(
                *zip(*pts), style, marker="o", ms=3, color=colors[r["group"]], label=f"{r['group']} seed {r['seed']}"
            )
    ax.set_xlabel("training step")
    ax.set_ylabel(f"FID during training (n={n})")
    fids = [e["fid"] for r in runs for e in r["history"] if e.get("fid")]
    if max(fids) > 5 * min(fids):  # a curve falling over orders of magnitude
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_sampling_steps(runs: list[dict], groups: list[str], path: Path) -> Path:
    """Final FID against the number of sampling steps, mean ± std over the runs of each group."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, g in enumerate(groups):
        members = [r for r in runs if r["group"] == g]
        steps = sorted({row["steps"] for r in members for row in r["rows"]})
        stats = [mean_std([main_row(r["rows"], s)["fid"] for r in members]) for s in steps]
        means = [m for m, _ in stats]
        stds = [s or 0.0 for _, s in stats]
        label = f"{g} ({len(members)} run{'s' if len(members) > 1 else ''})"
        ax.errorbar(steps, means, yerr=stds, marker="o", capsize=3, color=f"C{i}", label=label)
    row = runs[0]["rows"][0]
    ax.set_xscale("log")
    ticks = sorted({row["steps"] for r in runs for row in r["rows"]})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(f"sampling steps ({row['sampler']})")
    ax.set_ylabel(f"FID (n={row['num_samples']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def noised_images(schedule, x0: torch.Tensor, noise: torch.Tensor, fractions: list[float]) -> torch.Tensor:
    """``q_sample(x0, t, noise)`` at ``t = round(f * (T - 1))`` for each fraction: ``[F, C, H, W]`` (unclamped)."""
    t_max = schedule.num_timesteps - 1
    return torch.cat([schedule.q_sample(x0, torch.tensor([round(f * t_max)]), noise) for f in fractions])


def plot_schedules(runs: list[dict], groups: list[str], path: Path, data_dir: str, cache_dir: str | None) -> Path:
    """alpha_bar(t) of each group's schedule (left) and one test image noised with ``q_sample`` at the same
    fractions of T with the same noise, one row per group (right), as in Nichol & Dhariwal (2021), fig. 3."""
    from hydra.utils import instantiate

    from diffusionlab.metrics.datasets import load_split

    plt = _pyplot()
    first = {g: next(r for r in runs if r["group"] == g) for g in groups}
    cfg0 = first[groups[0]]["cfg"]
    images, _ = load_split(cfg0.data.name, "test", data_dir, cache_dir)
    x0 = images[:1].float() / 127.5 - 1.0  # [1, C, H, W] in [-1, 1]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))

    cols = len(NOISED_FRACTIONS)
    fig = plt.figure(figsize=(4 + 1.1 * cols, 0.4 + 1.2 * max(2, len(groups))))
    grid = fig.add_gridspec(len(groups), cols + 4)
    ax = fig.add_subplot(grid[:, :3])
    for i, g in enumerate(groups):
        sched = instantiate(first[g]["cfg"].diffusion).schedule
        t = torch.arange(sched.num_timesteps)
        ax.plot((t.double() / (sched.num_timesteps - 1)).numpy(), sched.alphas_cumprod.numpy(), color=f"C{i}", label=g)
        row = noised_images(sched, x0, noise, NOISED_FRACTIONS)
        for j, (frac, x_t) in enumerate(zip(NOISED_FRACTIONS, row)):
            img = ((x_t.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).squeeze(-1).numpy()
            sub = fig.add_subplot(grid[i, 4 + j])
            sub.imshow(img, cmap="gray", vmin=0, vmax=1)
            sub.set_xticks([])
            sub.set_yticks([])
            if i == 0:
                sub.set_title(f"t={frac:.1f}T", fontsize=8)
            if j == 0:
                sub.set_ylabel(g, fontsize=9, color=f"C{i}")
    ax.set_xlabel("t / T")
    ax.set_ylabel(r"$\bar\alpha_t$")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- report
def _budget(cfg: DictConfig) -> str:
    t, d = cfg.trainer, cfg.data
    model = cfg.model
    return (
        f"{model._target_.rsplit('.', 1)[-1]} base_channels={model.get('base_channels')} "
        f"channel_mult={list(model.get('channel_mult') or [])}, max_epochs={t.max_epochs}, max_steps={t.max_steps}, "
        f"batch {d.batch_size}, train_subset={d.train_subset}, T={cfg.diffusion.num_timesteps}, "
        f"prediction={cfg.diffusion.prediction}, min_snr_gamma={cfg.diffusion.get('min_snr_gamma')}"
    )


def markdown(
    runs: list[dict],
    groups: list[str],
    group_by: str,
    steps: int,
    floor: dict | None,
    plots: dict,
    verdicts: list[Verdict] = (),
) -> str:
    row0 = main_row(runs[0]["rows"], steps)
    p = row0["protocol"]
    n = row0["num_samples"]
    lines = [
        f"# Report: {group_by} ({len(runs)} runs)",
        "",
        f"Every run evaluated the same way: EMA weights, n={n} samples against {p['reference']['split']} "
        f"(n={p['reference']['n']}), {p['sampler']} {steps} steps, guidance {p['guidance']}, seed {p['seed']}, "
        f"features: {p['feature_extractor']['name']} ({p['feature_extractor']['source']}). "
        "FID is biased at small n: compare numbers at equal n only.",
        "",
        f"Training: {_budget(runs[0]['cfg'])}.",
        "",
        f"| {group_by} | runs | FID | KID ×10³ | class accuracy | final val loss (EMA) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for g in groups:
        members = [r for r in runs if r["group"] == g]
        rows = [main_row(r["rows"], steps) for r in members]
        lines.append(
            f"| {g} | {len(members)} | {fmt([r['fid'] for r in rows])} | {fmt([r['kid_mean'] for r in rows], 3, 1e3)} "
            f"| {fmt([r['class_accuracy'] for r in rows], 3)} | {fmt([r['val_loss_ema'] for r in members], 4)} |"
        )
    if floor is not None:
        lines += [
            "",
            f"Floor at the same n: {floor['protocol']['a']} vs {floor['protocol']['b']} gives FID "
            f"{floor['fid']:.2f}, KID ×10³ {floor['kid_mean'] * 1e3:.3f}"
            + (f", class accuracy {floor['class_accuracy']:.3f}" if floor.get("class_accuracy") is not None else "")
            + ".",
        ]
    all_steps = sampling_steps(runs)
    lines += [
        "",
        f"## FID against sampling steps ({p['sampler']}, n={n}; mean ± std over runs)",
        "",
        f"| {group_by} | " + " | ".join(str(s) for s in all_steps) + " |",
        "| --- |" + " ---: |" * len(all_steps),
    ]
    for g in groups:
        members = [r for r in runs if r["group"] == g]
        cells = [fmt([main_row(r["rows"], s)["fid"] for r in members]) for s in all_steps]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines += verdict_lines(verdicts, group_by)
    lines += convergence_lines(runs)
    lines += [
        "",
        "## Runs",
        "",
        f"| run | {group_by} | seed | FID | KID ×10³ | class accuracy | val loss (EMA) | best FID in training (step) "
        "| FID change, last interval |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        m = main_row(r["rows"], steps)
        scored = [e for e in r["history"] if e.get("fid") is not None]
        best = min(scored, key=lambda e: e["fid"]) if scored else None
        best_s = f"{best['fid']:.2f} ({best['global_step']}, n={best['num_samples']})" if best else "n/a"
        c = r["last_interval"]
        change = "n/a" if c is None else f"{100 * c.change:+.1f}% ({c.previous_step} -> {c.last_step})"
        lines.append(
            f"| {r['name']} | {r['group']} | {r['seed']} | {fmt([m['fid']])} | {fmt([m['kid_mean']], 3, 1e3)} "
            f"| {fmt([m['class_accuracy']], 3)} | {fmt([r['val_loss_ema']], 4)} | {best_s} | {change} |"
        )
    lines.append("")
    for title, name in plots.items():
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    return "\n".join(lines)


def step_verdicts(runs: list[dict], groups: list[str], all_steps: list[int]) -> list[Verdict]:
    """FID winner at each sampling step count (best vs runner-up against the seed spread); [] for one group."""
    if len(groups) < 2:
        return []
    return [
        compare({g: [main_row(r["rows"], s)["fid"] for r in runs if r["group"] == g] for g in groups}, s)
        for s in all_steps
    ]


def verdict_lines(verdicts: list[Verdict], group_by: str) -> list[str]:
    """The report's verdict section: a table, a sentence per step count, one summary line."""
    if not verdicts:
        return []
    lines = [
        "",
        f"## Which {group_by} wins (FID, lower is better)",
        "",
        f"A group wins at a step count when {RULE}.",
        "",
        "| steps | lowest FID | runner-up | difference | seed spread | beats the spread |",
        "| ---: | --- | --- | ---: | ---: | --- |",
    ]
    for v in verdicts:
        spread = "n/a" if v.spread is None else f"{v.spread:.2f}"
        beats = {None: "n/a (1 run)", True: "yes", False: "no"}[v.decided]
        lines.append(
            f"| {v.steps} | {v.best} {mean_pm(v.best_mean, v.best_std)} "
            f"| {v.runner_up} {mean_pm(v.runner_up_mean, v.runner_up_std)} | {v.difference:.2f} "
            f"| {spread} | {beats} |"
        )
    lines += ["", *[f"- {v.sentence()}" for v in verdicts], "", f"**{summary_sentence(verdicts)}**"]
    return lines


def convergence_lines(runs: list[dict]) -> list[str]:
    """The report's convergence section: the criterion and one sentence over the runs' eval histories."""
    scored = next((e for r in runs for e in r["history"] if e.get("fid") is not None), None)
    where = ""
    if scored is not None:
        split = scored.get("protocol", {}).get("reference", {}).get("split", "its reference")
        where = f" (n={scored['num_samples']} against {split})"
    return [
        "",
        "## Convergence",
        "",
        f"A run counts as converged when its training-time FID{where} fell by less than {100 * TOLERANCE:.0f}% "
        "between its last two evaluations (per run: the last column of the table below).",
        "",
        f"**{convergence_sentence([r['last_interval'] for r in runs])}**",
    ]


SUMMARY_KEYS = ("fid", "kid_mean", "class_accuracy")


def group_summary(members: list[dict], steps: int) -> dict:
    """``{metric: {'mean', 'std'}}`` over the runs of one group (metrics at ``steps`` sampling steps)."""
    out = {k: mean_std([main_row(r["rows"], steps)[k] for r in members]) for k in SUMMARY_KEYS}
    out["val_loss_ema"] = mean_std([r["val_loss_ema"] for r in members])
    return {k: {"mean": m, "std": s} for k, (m, s) in out.items()}


def run_summary(r: dict) -> dict:
    history = [{k: e.get(k) for k in ("global_step", "fid", "kid_mean", "num_samples")} for e in r["history"]]
    c = r["last_interval"]
    out = {k: r[k] for k in ("run", "group", "seed", "val_loss_ema", "rows")}
    return {**out, "history": history, "last_interval": None if c is None else asdict(c)}


def last_wins(overrides: list[str]) -> list[str]:
    """Drop earlier overrides of a key given again later (``make ... EVAL=num_samples=100``)."""
    last = {o.split("=", 1)[0]: i for i, o in enumerate(overrides)}
    return [o for i, o in enumerate(overrides) if last[o.split("=", 1)[0]] == i]


def make_report(
    folder: str | Path,
    overrides: list[str] | None = None,
    group_by: str = "diffusion.schedule",
    floor: bool = True,
    force: bool = False,
) -> dict:
    """Evaluate every run under ``folder`` and write ``<folder>/report/`` (see the module docstring).

    ``overrides`` are ``evaluate.yaml`` overrides (``num_samples=1000``, ``steps=50``, ``sweep.steps=[...]``,
    ``inception_weights=...``, ``batch_size=...``); ``data_dir`` / ``cache_dir`` default to the runs' own.
    """
    folder = Path(folder)
    overrides = list(overrides or [])
    runs = [describe_run(r, group_by) for r in find_runs(folder)]
    cfg0 = runs[0]["cfg"]
    defaults = [f"{k}={v}" for k, v in (("data_dir", cfg0.paths.data_dir), ("cache_dir", cfg0.paths.cache_dir))]
    overrides = last_wins([*defaults, *overrides])
    base = compose_evaluate_cfg(overrides, folder)
    steps = int(base.steps)
    for r in runs:
        log.info("evaluating %s (%s=%s, seed %s)", r["run"], group_by, r["group"], r["seed"])
        r["rows"] = evaluate_run_sweep(Path(r["run"]), overrides, force=force)
    groups = list(dict.fromkeys(r["group"] for r in runs))

    out = check_writable_dir(folder / REPORT_DIRNAME)
    floor_metrics = evaluate_floor(cfg0.data.name, overrides, out / "floor") if floor else None
    plots = {}
    if plot_training_curves(runs, groups, out / "fid_vs_training_steps.png"):
        plots["FID during training"] = "fid_vs_training_steps.png"
    plot_sampling_steps(runs, groups, out / "fid_vs_sampling_steps.png")
    plots["FID against sampling steps"] = "fid_vs_sampling_steps.png"
    plot_schedules(runs, groups, out / "schedules.png", base.data_dir, base.cache_dir)
    plots["Noise schedules: alpha_bar(t) and a noised test digit"] = "schedules.png"

    verdicts = step_verdicts(runs, groups, sampling_steps(runs))
    text = markdown(runs, groups, group_by, steps, floor_metrics, plots, verdicts)
    atomic_write_text(out / "report.md", text)
    summary = {
        "folder": str(folder),
        "group_by": group_by,
        "steps": steps,
        "group_order": groups,
        "groups": {g: group_summary([r for r in runs if r["group"] == g], steps) for g in groups},
        "runs": [run_summary(r) for r in runs],
        "floor": None if floor_metrics is None else {k: floor_metrics.get(k) for k in SUMMARY_KEYS},
        "verdicts": [v.as_dict() for v in verdicts],
        "convergence": convergence_sentence([r["last_interval"] for r in runs]),
    }
    atomic_write_json(out / "report.json", summary)
    print(text)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Evaluate every run of a multirun the same way and write a markdown + PNG report.",
        epilog="Trailing key=value arguments are evaluate.yaml overrides, e.g. num_samples=1000 steps=50 "
        "'sweep.steps=[10,20,50,100]' inception_weights=../shared/weights/inception-2015-12-05-pool3.torchscript.pt",
    )
    p.add_argument("folder", help="multirun folder (logs/<task>/multiruns/<time>) or any folder of runs")
    p.add_argument("overrides", nargs="*", help="evaluate.yaml overrides (key=value)")
    p.add_argument("--group-by", default="diffusion.schedule", help="config key whose values form the table rows")
    p.add_argument("--no-floor", action="store_true", help="skip the real-vs-real FID at the same n")
    p.add_argument("--force", action="store_true", help="re-evaluate runs even when report_eval/ is up to date")
    args = p.parse_intermixed_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"overrides must be key=value, got {bad}")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    try:
        make_report(args.folder, args.overrides, group_by=args.group_by, floor=not args.no_floor, force=args.force)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
