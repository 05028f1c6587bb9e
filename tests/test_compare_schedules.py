"""`make compare-schedules` in miniature: the real experiment config run as a Hydra multirun through train.py
(linear and cosine, one seed, two steps, one evaluation each), then the report: table, per-run numbers, PNG plots.
Every FID costs seconds on a CPU (a 2048x2048 eigendecomposition): the test keeps them to five."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusionlab.cli.report import (
    _sweep_steps,
    compose_evaluate_cfg,
    find_runs,
    last_wins,
    main,
    mean_std,
    noised_images,
)
from diffusionlab.diffusion.schedule import NoiseSchedule
from tests.helpers import TINY_UNET, run_script
from tests.test_eval_callback import shared_eval_cache

N = 16


@pytest.fixture(scope="module")
def multirun(tmp_path_factory, data_dir, shared_dir):
    cache = shared_eval_cache(tmp_path_factory, data_dir)
    weights = shared_dir / "weights" / "inception-2015-12-05-pool3.torchscript.pt"
    sweep = tmp_path_factory.mktemp("compare") / "multirun"
    result = run_script(
        "train.py",
        "-m",
        "experiment=compare_schedules",
        "hydra.sweeper.params.seed=0",  # the experiment sweeps seed=0,1,2: one seed here
        f"hydra.sweep.dir={sweep}",
        f"paths.data_dir={data_dir}",
        f"paths.cache_dir={cache}",
        *TINY_UNET,
        "data.train_subset=64",
        "data.batch_size=32",
        "data.val_size=64",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        f"callbacks.eval.inception_weights={weights}",
        f"callbacks.eval.num_samples={N}",
        f"callbacks.eval.batch_size={N}",
        "callbacks.eval.steps=2",
        "callbacks.eval.progress=false",
        "callbacks.sample_grid.every_n_epochs=0",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep, weights


def test_multirun_sweeps_both_schedules_with_eval_history(multirun):
    sweep, _ = multirun
    runs = find_runs(sweep)
    assert [r.name for r in runs] == ["0", "1"]
    schedules = []
    for run in runs:
        cfg = (run / "checkpoints" / "config.yaml").read_text()
        schedules += [line.split(":")[1].strip() for line in cfg.splitlines() if line.startswith("  schedule:")]
        history = json.loads((run / "eval_history.json").read_text())["evaluations"]
        assert [e["global_step"] for e in history] == [2] and all(e["num_samples"] == N for e in history)
    assert schedules == ["linear", "cosine"]


def test_report_table_and_plots(multirun, capsys):
    sweep, weights = multirun
    code = main(
        [
            str(sweep),
            f"num_samples={N}",
            f"batch_size={N}",
            "steps=2",
            "sweep.steps=[2]",
            f"inception_weights={weights}",
        ]
    )
    assert code == 0
    out = sweep / "report"
    text = (out / "report.md").read_text()
    assert "| diffusion.schedule | runs | FID | KID ×10³ | class accuracy | final val loss (EMA) |" in text
    summary = json.loads((out / "report.json").read_text())
    assert summary["group_order"] == ["linear", "cosine"] and set(summary["groups"]) == {"linear", "cosine"}
    for name, g in summary["groups"].items():
        run = next(r for r in summary["runs"] if r["group"] == name)
        row = next(r for r in run["rows"] if r["steps"] == 2)
        # one seed per schedule: the mean is that run's number and there is no std
        assert g["fid"]["mean"] == pytest.approx(row["fid"]) and g["fid"]["std"] is None
        assert 0 <= g["class_accuracy"]["mean"] <= 1 and g["val_loss_ema"]["mean"] > 0
        assert [r["steps"] for r in run["rows"]] == [2] and row["num_samples"] == N
        assert f"| {name} | 1 | {row['fid']:.2f} |" in text
        assert [h["global_step"] for h in run["history"]] == [2]
    assert summary["floor"]["fid"] > 0 and "Floor at the same n: mnist:train vs mnist:test" in text
    # the verdict: one seed per schedule gives no spread, so no winner is named
    (verdict,) = summary["verdicts"]
    assert verdict["steps"] == 2 and verdict["decided"] is None
    assert {verdict["best"], verdict["runner_up"]} == {"linear", "cosine"}
    assert "## Which diffusion.schedule wins" in text and "**No winner at 2 steps (one run per group).**" in text
    # one evaluation per run: no interval to judge convergence by, and the report says so instead of guessing
    assert "## Convergence" in text and "convergence unknown" in summary["convergence"]
    assert all(run["last_interval"] is None for run in summary["runs"])
    for png in ("fid_vs_training_steps.png", "fid_vs_sampling_steps.png", "schedules.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 5000, png
        assert f"]({png})" in text
    assert "report" in capsys.readouterr().out.lower()

    # a second report reuses every run's evaluation (nothing re-sampled): same numbers
    before = (sweep / "0" / "report_eval" / "sweep.json").stat().st_mtime_ns
    assert (
        main(
            [
                str(sweep),
                f"num_samples={N}",
                f"batch_size={N}",
                "steps=2",
                "sweep.steps=[2]",
                "--no-floor",
                f"inception_weights={weights}",
            ]
        )
        == 0
    )
    assert (sweep / "0" / "report_eval" / "sweep.json").stat().st_mtime_ns == before
    again = json.loads((out / "report.json").read_text())
    assert again["groups"]["cosine"]["fid"] == summary["groups"]["cosine"]["fid"] and again["floor"] is None


def test_noised_row_follows_each_schedule():
    """The figure's digits are q_sample(x0, t, noise) at the same fractions of T for every schedule: x0 at t=0,
    almost pure noise at T-1, and at T/2 the cosine schedule keeps more signal than the linear one."""
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(1, 1, 28, 28, generator=gen) * 2 - 1, torch.randn(1, 1, 28, 28, generator=gen)
    rows = {}
    for name in ("linear", "cosine"):
        s = NoiseSchedule.from_name(name, 1000)
        rows[name] = noised_images(s, x0, noise, [0.0, 0.5, 1.0])
        assert rows[name].shape == (3, 1, 28, 28)
        for row, t in zip(rows[name], (0, 500, 999)):
            abar = s.alphas_cumprod[t].item()
            assert torch.allclose(row, (abar**0.5 * x0 + (1 - abar) ** 0.5 * noise)[0], atol=1e-6)
        assert torch.corrcoef(torch.stack([rows[name][0].flatten(), x0.flatten()]))[0, 1] > 0.99
        assert torch.corrcoef(torch.stack([rows[name][2].flatten(), noise.flatten()]))[0, 1] > 0.99

    def signal(x):
        return torch.corrcoef(torch.stack([x.flatten(), x0.flatten()]))[0, 1]

    assert signal(rows["cosine"][1]) > signal(rows["linear"][1]) + 0.2


def test_table_steps_join_the_sweep(tmp_path):
    cfg = compose_evaluate_cfg(["steps=30", "sweep.steps=[20,10]"], tmp_path)
    assert _sweep_steps(cfg) == [10, 20, 30]
    assert _sweep_steps(compose_evaluate_cfg(["steps=50"], tmp_path)) == [10, 20, 50, 100]


def test_helpers():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
    assert mean_std([None, 2.0]) == (2.0, None) and mean_std([]) == (None, None)
    assert last_wins(["a=1", "b=2", "a=3"]) == ["b=2", "a=3"]
    with pytest.raises(FileNotFoundError, match="no runs under"):
        find_runs(Path(__file__).parent)
