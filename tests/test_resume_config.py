"""Resuming with a changed config: network, data and schedule changes are refused with the list of differences
unless named in ``resume_allow_changes``; step budgets, loggers, callbacks and the optimizer may change freely."""

from __future__ import annotations

import shutil

import pytest

from diffusionlab.cli.errors import exit_on_user_error
from diffusionlab.cli.train import train
from diffusionlab.utils.checkpoints import load_torch_checkpoint
from tests.helpers import compose_cfg, train_overrides

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (tests/conftest.py)


@pytest.fixture
def run(trained_run, tmp_path):
    """A private copy of the 6-step session run (resuming writes into it)."""
    return shutil.copytree(trained_run, tmp_path / "run")


def _resume(data_dir, run, tmp_path, *overrides):
    cfg = compose_cfg("train.yaml", train_overrides(data_dir, f"ckpt_path={run}", *overrides), tmp_path / "new")
    return exit_on_user_error(train)(cfg)


def _step(run) -> int:
    return load_torch_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]


def test_resume_with_another_network_or_schedule_is_refused_listing_each_difference(data_dir, run, tmp_path, capsys):
    config_before = (run / "checkpoints" / "config.yaml").read_text()
    with pytest.raises(SystemExit) as e:
        _resume(data_dir, run, tmp_path, "model.base_channels=32", "diffusion.schedule=cosine", "trainer.max_steps=8")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "refusing to resume" in err and "Traceback" not in err
    assert "model.base_channels: 16 -> 32" in err
    assert "diffusion.schedule: 'linear' -> 'cosine'" in err
    assert "trainer.max_steps" not in err  # a harmless change is not listed
    assert "resume_allow_changes=[diffusion.schedule,model.base_channels]" in err
    assert _step(run) == 6 and (run / "checkpoints" / "config.yaml").read_text() == config_before
    assert not (tmp_path / "new").exists()


def test_resume_with_other_data_is_refused(data_dir, run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _resume(data_dir, run, tmp_path, "data=fashion_mnist")
    err = capsys.readouterr().err
    assert "data.name: 'mnist' -> 'fashion_mnist'" in err


def test_resume_allow_changes_lets_named_keys_change(data_dir, run, tmp_path, capsys):
    more = ["trainer.max_steps=8", "trainer.max_epochs=3"]  # the 6-step run ended its epoch (debug: max_epochs=1)
    _resume(data_dir, run, tmp_path, "model.dropout=0.1", "resume_allow_changes=[model.dropout]", *more)
    assert _step(run) == 8
    assert "dropout: 0.1" in (run / "checkpoints" / "config.yaml").read_text()
    # allowing a change of width passes the config check; the weights then do not fit, and the run says which
    with pytest.raises(SystemExit):
        _resume(
            data_dir, run, tmp_path, "model.base_channels=32", "trainer.max_steps=10", "resume_allow_changes=[model]"
        )
    err = capsys.readouterr().err
    assert "refusing to resume" not in err
    assert "does not fit the network" in err and "in the checkpoint" in err and "Traceback" not in err
    assert _step(run) == 8
    assert "base_channels: 16" in (run / "checkpoints" / "config.yaml").read_text()  # still the checkpoint's


def test_resume_with_new_step_budget_logger_and_callbacks_is_not_refused(data_dir, run, tmp_path):
    _resume(
        data_dir,
        run,
        tmp_path,
        "trainer.max_steps=8",
        "trainer.max_epochs=3",
        "logger.csv.name=csv_resumed",  # tensorboard is not a test dependency
        "callbacks.sample_grid.steps=3",
        "module.optimizer.lr=1e-4",
    )
    assert _step(run) == 8
    assert (run / "csv_resumed").is_dir()
