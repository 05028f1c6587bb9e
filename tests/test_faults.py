"""Faults: a NaN loss stops the run with the step and leaves the last good checkpoint in place; a training
process SIGKILLed anywhere (mid-step, mid-validation, mid-checkpoint write, mid-grid) resumes exactly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest
import torch

from diffusionlab.cli.errors import exit_on_user_error
from diffusionlab.cli.runs import load_ema_state
from diffusionlab.cli.train import train
from diffusionlab.diffusion.gaussian import GaussianDiffusion
from diffusionlab.utils import faults
from diffusionlab.utils.checkpoints import load_torch_checkpoint
from tests.helpers import ROOT, compose_cfg, train_overrides


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = GaussianDiffusion.training_loss

    def poisoned(self, net, x0, *args, **kwargs):
        loss = real(self, net, x0, *args, **kwargs)
        if torch.is_grad_enabled():  # training steps only (validation runs under no_grad)
            calls["n"] += 1
            if calls["n"] == 6:  # the 6th training step, i.e. global step 5
                return loss * float("nan")
        return loss

    monkeypatch.setattr(GaussianDiffusion, "training_loss", poisoned)
    cfg = compose_cfg(
        "train.yaml",
        train_overrides(data_dir, "trainer.max_steps=10", "callbacks.last_checkpoint.every_n_train_steps=2"),
        tmp_path,
    )
    with pytest.raises(SystemExit) as e:
        exit_on_user_error(train)(cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "training loss became nan at global step 5" in err and "Traceback" not in err
    state = load_torch_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def _resume_test_overrides(data_dir) -> list[str]:
    """A 14-step deterministic run of 6 batches per epoch (it crosses epoch boundaries), checkpoint every 2."""
    return train_overrides(
        data_dir,
        "trainer.max_steps=14",
        "trainer.max_epochs=5",
        "data.train_subset=192",  # 6 batches of 32 per epoch
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "trainer.limit_val_batches=1",
        "trainer.deterministic=true",
    )


def _weights(run) -> dict[str, torch.Tensor]:
    return load_torch_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]


KILL_SEED = 16
MUST_HIT = {"checkpoint_save", "validation", "sample_grid"}


def choose_kill_moments(timeline: list[tuple[str, int]], k: int = 5, seed: int = KILL_SEED) -> list[tuple[str, int]]:
    """``k`` moments ``(event, global step)`` of an uninterrupted run's ``timeline``, drawn by a seeded RNG: at
    ``k`` different steps (so each resumed session replays the next one), after the first checkpoint exists,
    including a checkpoint write, a validation batch and a sample grid; in the order they happen."""
    first_ckpt = min(s for e, s in timeline if e == "checkpoint_save")
    candidates = sorted({(e, s) for e, s in timeline if s > first_ckpt})
    rng = random.Random(seed)
    while True:
        picks = rng.sample(candidates, k)
        if len({s for _, s in picks}) == k and MUST_HIT <= {e for e, _ in picks}:
            return sorted(picks, key=lambda m: timeline.index(m))


def _assert_every_file_loadable(run) -> None:
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert ckpts, "no checkpoint on disk"
    for f in ckpts:
        load_torch_checkpoint(f)  # raises on a truncated file
    load_ema_state(run / "checkpoints")


def test_sigkill_at_five_moments_then_resume_equals_uninterrupted_run(data_dir, tmp_path, monkeypatch):
    """Kill a real training process at 5 moments drawn by a seeded RNG from an uninterrupted run's timeline
    (a training step, a validation batch, a checkpoint write and a sample grid among them: the code calls
    :func:`faults.fault_point`, and ``DIFFUSIONLAB_FAULT_AT`` makes it SIGKILL itself there), resuming with
    ``ckpt_path=last`` after each kill. After every kill each checkpoint on disk loads; at the end the weights
    (network and EMA) equal the uninterrupted run's, no temporary file is left and the run kept one folder."""
    overrides = _resume_test_overrides(data_dir)
    timeline: list[tuple[str, int]] = []
    with monkeypatch.context() as m:
        m.setattr(faults, "fault_point", lambda event, step: timeline.append((event, int(step))))
        straight = tmp_path / "straight"
        train(compose_cfg("train.yaml", overrides, straight))
    moments = choose_kill_moments(timeline)
    assert {e for e, _ in timeline} == set(faults.FAULT_EVENTS)

    logs, run = tmp_path / "logs", tmp_path / "logs" / "faults" / "runs" / "chain"
    common = [*overrides, "task_name=faults", f"paths.log_dir={logs}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    for i, (event, step) in enumerate(moments):
        where = "ckpt_path=last" if i else f"hydra.run.dir={run}"
        proc = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *common, where],
            cwd=ROOT,
            env={**env, faults.FAULT_ENV: f"{event}:{step}"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert f"fault injection: SIGKILL at {event}:{step}" in proc.stderr
        _assert_every_file_loadable(run)
        if event in ("checkpoint_save", "sample_grid"):  # killed mid-write: only the temporary file is partial
            assert list(run.rglob("*.tmp")), f"no temporary file left by the kill at {event}:{step}"

    train(compose_cfg("train.yaml", [*common, "ckpt_path=last"], logs / "unused"))
    assert load_torch_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 14
    resumed, reference = _weights(run), _weights(straight)
    assert resumed.keys() == reference.keys()
    worst = max((resumed[k].float() - reference[k].float()).abs().max().item() for k in reference)
    assert worst < 1e-6, f"resumed run differs from the uninterrupted one by {worst} (kills at {moments})"
    _assert_every_file_loadable(run)
    assert not list(run.rglob("*.tmp")), "a half-written temporary file was left behind"
    assert list((logs / "faults" / "runs").iterdir()) == [run] and not (logs / "unused").exists()
    assert len(list((run / "csv").glob("version_*"))) == len(moments) + 1  # each session logs beside the others


def test_sigkill_then_resume_equals_uninterrupted_run(data_dir, tmp_path):
    """Kill a real training process at an arbitrary moment, resume it, and end with the same weights
    (network and EMA) as a run that was never interrupted: optimizer, EMA, LR schedule, RNG and the
    data order (mid-epoch) are all restored."""
    import time

    overrides = _resume_test_overrides(data_dir)
    straight = tmp_path / "straight"
    train(compose_cfg("train.yaml", overrides, straight))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={killed}", f"paths.log_dir={tmp_path}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if last.is_file() and load_torch_checkpoint(last)["global_step"] >= 6:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved_step = load_torch_checkpoint(last)["global_step"]
    assert 6 <= saved_step < 14

    train(compose_cfg("train.yaml", [*overrides, f"ckpt_path={killed}"], tmp_path / "unused"))
    resumed, reference = _weights(killed), _weights(straight)
    assert load_torch_checkpoint(last)["global_step"] == 14
    assert resumed.keys() == reference.keys()
    worst = max((resumed[k].float() - reference[k].float()).abs().max().item() for k in reference)
    assert worst < 1e-6, f"resumed run differs from the uninterrupted one by {worst} (resumed from step {saved_step})"


def test_sigkill_then_resume_keeps_the_wandb_run_id(data_dir, tmp_path, monkeypatch):
    """A W&B (offline) run killed mid-training and resumed with ``ckpt_path`` continues the same W&B run: the
    resumed session's offline run folder carries the id the first session wrote beside the checkpoints."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = train_overrides(
        data_dir, "trainer.max_steps=4", "callbacks.last_checkpoint.every_n_train_steps=2", "logger=wandb"
    )
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run}", f"paths.log_dir={tmp_path}"],
        cwd=ROOT,
        # Without WANDB_SERVICE: a W&B service this worker started in an earlier test would otherwise also serve
        # the child and keep the killed child's run open ("run ID ... is in use" on resume).
        env={
            **{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"},
            "OMP_NUM_THREADS": "1",
            "HYDRA_FULL_ERROR": "0",
            faults.FAULT_ENV: "train_step:3",
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_id = (run / "checkpoints" / "wandb_id.txt").read_text().strip()
    assert load_torch_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2

    train(compose_cfg("train.yaml", [*overrides, f"ckpt_path={run}/checkpoints/last.ckpt"], tmp_path / "unused"))
    assert load_torch_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert (run / "checkpoints" / "wandb_id.txt").read_text().strip() == run_id
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert folders and all(f.name.endswith(f"-{run_id}") for f in folders), (run_id, [f.name for f in folders])
    assert any(f.suffix == ".wandb" for f in folders[-1].iterdir())  # the resumed session logged into it


def test_last_checkpoint_holds_the_final_step_and_resuming_it_continues_exactly(data_dir, tmp_path):
    """A run that stops between two checkpoint intervals (max_steps 5, every 4 steps) still leaves its final
    step in last.ckpt; resuming it to 8 steps gives the weights of a straight 8-step run."""
    every = "callbacks.last_checkpoint.every_n_train_steps=4"
    straight = tmp_path / "straight"
    train(compose_cfg("train.yaml", train_overrides(data_dir, "trainer.max_steps=8", every), straight))
    short = tmp_path / "short"
    train(compose_cfg("train.yaml", train_overrides(data_dir, "trainer.max_steps=5", every), short))
    assert load_torch_checkpoint(short / "checkpoints" / "last.ckpt")["global_step"] == 5
    resumed = [f"ckpt_path={short}/checkpoints/last.ckpt", "trainer.max_steps=8", every]
    train(compose_cfg("train.yaml", train_overrides(data_dir, *resumed), tmp_path / "unused"))
    assert load_torch_checkpoint(short / "checkpoints" / "last.ckpt")["global_step"] == 8
    a, b = _weights(short), _weights(straight)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in b)
    assert worst < 1e-6, f"resuming the final checkpoint differs from a straight run by {worst}"
