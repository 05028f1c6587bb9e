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
