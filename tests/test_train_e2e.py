"""The real entry points end to end on real MNIST: train -> checkpoint -> sample -> resume."""

from __future__ import annotations

import csv

import torch
from PIL import Image

from diffusionlab.cli.runs import load_run
from diffusionlab.cli.sample import sample
from diffusionlab.cli.train import train
from diffusionlab.utils.checkpoints import load_torch_checkpoint
from tests.helpers import compose_cfg, train_overrides


def test_training_writes_checkpoint_ema_config_and_grid(trained_run):
    ck = trained_run / "checkpoints"
    assert (ck / "last.ckpt").is_file() and (ck / "ema.safetensors").is_file() and (ck / "config.yaml").is_file()
    state = load_torch_checkpoint(ck / "last.ckpt")
    assert state["global_step"] == 6
    assert any(k.startswith("ema.shadow.") for k in state["state_dict"])
    grids = list((trained_run / "samples").glob("*.png"))
    assert grids, "no sample grid written"
    run = load_run(trained_run)
    assert run.global_step == 6 and not run.net.training


def test_sample_cli_writes_grid_gif_and_singles(trained_run, tmp_path):
    cfg = compose_cfg(
        "sample.yaml",
        [
            f"ckpt={trained_run}",
            "n=6",
            "steps=4",
            "class=7",
            "guidance=2",
            "gif=true",
            "save_individual=true",
        ],
        tmp_path,
    )
    grid = sample(cfg)
    img = Image.open(grid)
    assert img.size[0] > 2 * 28 and img.mode == "L"
    assert len(list((tmp_path / "images").glob("*.png"))) == 6
    gif = next(tmp_path.glob("trajectory_*.gif"))
    assert Image.open(gif).n_frames >= 2


def test_sample_is_reproducible_with_seed(trained_run, tmp_path):
    paths = []
    for sub in ("a", "b"):
        cfg = compose_cfg("sample.yaml", [f"ckpt={trained_run}", "n=4", "steps=3", "seed=5"], tmp_path / sub)
        paths.append(sample(cfg))
    assert Image.open(paths[0]).tobytes() == Image.open(paths[1]).tobytes()


def test_resume_continues_at_saved_step_in_the_same_run(data_dir, tmp_path):
    run = tmp_path / "run"
    train(
        compose_cfg("train.yaml", train_overrides(data_dir, "trainer.max_steps=5", "trainer.log_every_n_steps=1"), run)
    )
    cfg = compose_cfg(
        "train.yaml",
        train_overrides(
            data_dir,
            "trainer.max_steps=9",
            "trainer.max_epochs=3",
            "trainer.log_every_n_steps=1",
            f"ckpt_path={run}",
        ),
        tmp_path / "new",
    )
    train(cfg)
    state = load_torch_checkpoint(run / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 9
    # the resumed run logs into a new CSV version beside the first run's, starting at the saved step
    with open(run / "csv" / "version_1" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]
    assert steps and min(steps) >= 5, f"resumed run logged steps {steps}, expected to start at 5"
    assert (run / "csv" / "version_0" / "metrics.csv").is_file()


def test_wandb_logger_runs_offline_one_run_per_job(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_cfg("train.yaml", train_overrides(data_dir, "trainer.max_steps=2", "logger=wandb"), tmp_path)
    assert cfg.logger.wandb.offline is True
    ids = []
    for job in ("0", "1"):  # two jobs in one process, as a multirun's basic launcher runs them
        out = tmp_path / job
        train(compose_cfg("train.yaml", train_overrides(data_dir, "trainer.max_steps=2", "logger=wandb"), out))
        runs = list((out / "wandb").glob("offline-run-*"))
        assert runs, f"W&B offline run folder missing in job {job}"
        ids.append((out / "checkpoints" / "wandb_id.txt").read_text().strip())
        assert ids[-1] in runs[0].name
    assert ids[0] != ids[1], "the second job logged into the first job's W&B run"


def test_small_model_learns_on_mnist(data_dir, tmp_path):
    """A learning test: after a few hundred steps the eps-MSE on held-out images is far below 1.0
    (the loss of predicting zeros, since eps ~ N(0, I)); measured 0.048 at 200 steps."""
    torch.manual_seed(0)
    cfg = compose_cfg(
        "train.yaml",
        train_overrides(
            data_dir,
            "trainer.max_steps=200",
            "trainer.max_epochs=10",
            "data.train_subset=4096",
            "data.batch_size=32",
            "trainer.limit_val_batches=4",
            "module.optimizer.lr=2e-3",
            "module.scheduler.warmup_steps=20",
            "callbacks=none",
        ),
        tmp_path,
    )
    metrics = train(cfg)
    print("learning test metrics:", metrics)
    assert metrics["val/loss"] < 0.15, metrics


def test_max_time_stops_mid_epoch_with_a_resumable_checkpoint(data_dir, tmp_path):
    """trainer.max_time stops inside the first epoch (no min_epochs holding it) and leaves last.ckpt."""
    out = tmp_path / "run"
    overrides = train_overrides(
        data_dir,
        "data.train_subset=8192",  # 256 steps of 32: far more than 3 seconds
        "trainer.max_steps=-1",
        "trainer.max_epochs=5",
        "trainer.max_time=00:00:00:03",
    )
    train(compose_cfg("train.yaml", overrides, out))
    state = load_torch_checkpoint(out / "checkpoints" / "last.ckpt")
    assert 0 < state["global_step"] < 256, state["global_step"]


def test_entry_point_resume_logs_into_the_run_folder(data_dir, tmp_path):
    """``python train.py ckpt_path=last`` continues the run's own folder: its train.log goes on, this session's
    Hydra config lands in ``.hydra/resumed_<time>/`` (the original one untouched), and no new run folder appears."""
    from tests.helpers import run_script

    common = [*train_overrides(data_dir, "trainer.max_epochs=3"), f"paths.log_dir={tmp_path}", "task_name=resume"]
    first = run_script("train.py", *common, "trainer.max_steps=2")
    assert first.returncode == 0, first.stderr[-2000:]
    runs_root = tmp_path / "resume" / "runs"
    (run,) = runs_root.iterdir()
    original_overrides = (run / ".hydra" / "overrides.yaml").read_text()
    second = run_script("train.py", *common, "trainer.max_steps=4", "ckpt_path=last")
    assert second.returncode == 0, second.stderr[-2000:]

    assert list(runs_root.iterdir()) == [run], "the resumed session made a new run folder"
    assert load_torch_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4
    log = (run / "train.log").read_text()
    assert "resuming from" in log and log.count("done: global step") == 2
    assert (run / ".hydra" / "overrides.yaml").read_text() == original_overrides
    (resumed,) = (run / ".hydra").glob("resumed_*")
    assert "ckpt_path=last" in (resumed / "overrides.yaml").read_text()
