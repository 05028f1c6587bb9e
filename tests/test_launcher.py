"""launcher=slurm composes a valid submitit SLURM launcher from the trainer config; launcher=submitit_local
runs a real two-point sweep through the same launcher code."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from diffusionlab.cli.resolvers import register_resolvers
from tests.helpers import CONFIGS, run_script, train_overrides


def _hydra_cfg(overrides: list[str]):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("train.yaml", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    return cfg


def test_slurm_launcher_takes_its_shape_from_the_trainer():
    cfg = _hydra_cfg(["launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "task_name=t"])
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
