"""hparams_search=mnist_optuna: the config composes (objective follows the eval callback), a real two-trial Optuna
sweep through train.py -m returns the best trial's objective, and every trial shares one W&B group with its
overrides as tags."""

from __future__ import annotations

import csv

import pytest
import yaml

from diffusionlab.cli.resolvers import sweep_tags
from tests.helpers import compose_cfg, compose_hydra_cfg, run_script, train_overrides


def test_sweep_tags_keep_overrides_and_drop_paths():
    long = "x" * 80
    overrides = ["model.dropout=0.1", "paths.data_dir=/tmp/a", "hydra.sweep.dir=/b", f"k={long}", "mnist"]
    tags = sweep_tags(["mnist"], overrides)
    assert list(tags) == ["mnist", "model.dropout=0.1", f"k={long}"[:64]]
    assert list(sweep_tags(None, None)) == []


def test_config_composes_with_optuna_sweeper():
    cfg = compose_hydra_cfg("train.yaml", ["hparams_search=mnist_optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert set(sweeper.params) == {"module.optimizer.lr", "module.ema_decay", "model.base_channels", "model.dropout"}
    assert sweeper.n_trials <= 10


def test_objective_is_fid_when_the_eval_callback_is_on(tmp_path):
    plain = compose_cfg("train.yaml", ["hparams_search=mnist_optuna"], tmp_path / "a")
    assert plain.optimized_metric == "val/loss_ema"
    with_eval = compose_cfg("train.yaml", ["hparams_search=mnist_optuna", "callbacks=with_eval"], tmp_path / "b")
    assert with_eval.optimized_metric == "eval/fid" == with_eval.callbacks.best_fid.monitor


def test_wandb_run_gets_the_sweep_group_and_override_tags(tmp_path, monkeypatch, data_dir):
    from hydra.utils import instantiate

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = ["hparams_search=mnist_optuna", "logger=wandb", "model.dropout=0.1", f"paths.data_dir={data_dir}"]
    cfg = compose_cfg("train.yaml", overrides, tmp_path)
    logger = instantiate(cfg.logger.wandb)
    try:
        run = logger.experiment
        assert run.group == cfg.logger.wandb.group and run.group.startswith("mnist_optuna_")
        assert "model.dropout=0.1" in run.tags and "hparams_search=mnist_optuna" in run.tags
        assert not any(t.startswith("paths.") for t in run.tags)
    finally:
        logger.experiment.finish()


@pytest.mark.slow
def test_two_trial_sweep_returns_best_objective(data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "hparams_search=mnist_optuna",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}",
        *train_overrides(
            data_dir, "data.train_subset=64", "trainer.max_steps=2", "callbacks.sample_grid.every_n_epochs=0"
        ),
        timeout=600,
        env={"WANDB_MODE": "offline"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]

    objectives, groups = [], set()
    for job in jobs:
        with open(job / "csv" / "version_0" / "metrics.csv") as f:
            objectives.append(float([r["val/loss_ema"] for r in csv.DictReader(f) if r.get("val/loss_ema")][-1]))
        cfg = yaml.safe_load((job / "checkpoints" / "config.yaml").read_text())
        task = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        lr = next(o for o in task if o.startswith("module.optimizer.lr="))
        assert cfg["optimized_metric"] == "val/loss_ema"
        assert lr in cfg["logger"]["wandb"]["tags"] and "hparams_search=mnist_optuna" in cfg["logger"]["wandb"]["tags"]
        assert not any(t.startswith("paths.") for t in cfg["logger"]["wandb"]["tags"])
        groups.add(cfg["logger"]["wandb"]["group"])
    assert len(groups) == 1, f"trials of one sweep landed in different W&B groups: {groups}"

    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) >= {"module.optimizer.lr", "module.ema_decay", "model.dropout"}
    assert best["best_value"] == pytest.approx(min(objectives), rel=1e-5)
