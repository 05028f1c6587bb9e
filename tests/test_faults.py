"""Faults: a NaN loss stops the run with the step and leaves the last good checkpoint in place."""

from __future__ import annotations

import pytest
import torch

from diffusionlab.cli.errors import exit_on_user_error
from diffusionlab.cli.train import train
from diffusionlab.diffusion.gaussian import GaussianDiffusion
from diffusionlab.utils.checkpoints import load_torch_checkpoint
from tests.helpers import compose_cfg, train_overrides


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


def _weights(run) -> dict[str, torch.Tensor]:
    return load_torch_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]


def test_sigkill_then_resume_equals_uninterrupted_run(data_dir, tmp_path):
    """Kill a real training process at an arbitrary moment, resume it, and end with the same weights
    (network and EMA) as a run that was never interrupted: optimizer, EMA, LR schedule, RNG and the
    data order (mid-epoch) are all restored."""
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import ROOT

    overrides = train_overrides(
        data_dir,
        "trainer.max_steps=14",
        "trainer.max_epochs=5",
        "data.train_subset=192",  # 6 batches of 32 per epoch: the run crosses epoch boundaries
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "trainer.limit_val_batches=1",
        "trainer.deterministic=true",
    )
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
