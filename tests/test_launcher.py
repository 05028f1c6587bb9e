"""launcher=slurm composes a valid submitit SLURM launcher from the trainer config; launcher=submitit_local
runs a real two-point sweep through the same launcher code."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.helpers import compose_hydra_cfg, run_script, train_overrides


def test_slurm_launcher_takes_its_shape_from_the_trainer():
    overrides = ["launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "task_name=t"]
    cfg = compose_hydra_cfg("train.yaml", overrides)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["name"] == "t" and launcher["submitit_folder"].endswith("/.submitit/%j")
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 2


@pytest.mark.slow
def test_submitit_local_sweep_runs_every_point(data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script(
        "train.py",
        "-m",
        "launcher=submitit_local",
        *train_overrides(data_dir, "trainer.max_steps=2"),
        f"hydra.sweep.dir={sweep}",
        "seed=0,1",
        env={"OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file(), sorted(p.name for p in sweep.rglob("*"))
    assert (sweep / ".submitit").is_dir()  # the jobs went through submitit
