"""The training task: config -> datamodule, network, diffusion, LightningModule, trainer -> fit."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from diffusionlab.cli.resume import check_resume_config
from diffusionlab.cli.runs import resolve_resume_path, save_run_config
from diffusionlab.utils.io import check_writable_dir, remove_stale_temp_files

log = logging.getLogger("diffusionlab.train")

WANDB_ID_FILENAME = "wandb_id.txt"


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a config group dict (callbacks, loggers) that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def build_module(cfg: DictConfig):
    """Network (+ diffusion, + frozen autoencoder when configured) + LightningModule from the config (also
    used by tests and notebooks). Configs without ``diffusion`` (autoencoder training) get none."""
    if "_target_" not in cfg.model:
        raise ValueError(f"model={cfg.model.get('name', cfg.model)} is not a trainable network (sample.py only)")
    parts = {"net": instantiate(cfg.model)}
    if cfg.get("diffusion") is not None:
        parts["diffusion"] = instantiate(cfg.diffusion)
    if cfg.get("autoencoder") is not None:
        parts["autoencoder"] = instantiate(cfg.autoencoder)
    return instantiate(cfg.module, **parts)


def _continue_wandb_run(cfg: DictConfig, resume_from: str | None, ckpt_dir: Path) -> None:
    """Reuse the W&B run id of the run being resumed; remember this run's id for later resumes."""
    if "wandb" not in (cfg.get("logger") or {}):
        return
    if resume_from is not None:
        id_file = Path(resume_from).parent / WANDB_ID_FILENAME
        if id_file.is_file():
            cfg.logger.wandb.id = id_file.read_text().strip()


def _wandb_loggers(loggers: list) -> list:
    """The W&B loggers among ``loggers`` (by class name: wandb stays an optional import)."""
    return [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]


@rank_zero_only
def _remember_wandb_id(loggers: list, ckpt_dir: Path) -> None:
    from diffusionlab.utils.io import atomic_write_text

    for lg in _wandb_loggers(loggers):
        atomic_write_text(ckpt_dir / WANDB_ID_FILENAME, str(lg.experiment.id))


@rank_zero_only
def _finish_wandb_runs(loggers: list) -> None:
    """Close this session's W&B run: the next job of a multirun in this process (Hydra's basic launcher runs
    them one after another) would otherwise log into it instead of starting its own."""
    for lg in _wandb_loggers(loggers):
        if lg._experiment is not None:
            lg.experiment.finish()


class SaveRunConfig(L.Callback):
    """Write the session's config beside the checkpoints when training starts, i.e. after a resumed checkpoint
    has loaded: a resume that fails to load (weights of another shape) leaves ``config.yaml`` describing the
    checkpoints that are there."""

    def __init__(self, cfg: DictConfig, ckpt_dir: Path):
        self.cfg, self.ckpt_dir = cfg, ckpt_dir

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        save_run_config(self.cfg, self.ckpt_dir)


@rank_zero_only
def _remove_half_written(run_dir: Path) -> None:
    """Temporary files a killed session left in the run folder (the complete files they were to replace stay)."""
    for stale in remove_stale_temp_files(run_dir):
        log.info("removed %s, left half-written by an interrupted session", stale)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model described by ``cfg``; returns the trainer's final callback metrics."""
    resume_from = resolve_resume_path(cfg.get("ckpt_path"), Path(cfg.paths.log_dir) / cfg.task_name)
    if resume_from is not None:
        check_resume_config(cfg, resume_from)
        # Continue the same run: checkpoints, sample grids and logs go on in the original run folder.
        cfg.paths.output_dir = str(Path(resume_from).resolve().parent.parent)
    out_dir = check_writable_dir(cfg.paths.output_dir)
    if resume_from is not None:
        _remove_half_written(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    _continue_wandb_run(cfg, resume_from, ckpt_dir)

    log.info("data: %s", cfg.data.name)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    callbacks = instantiate_group(cfg.get("callbacks"))
    if resume_from is not None:  # the config is rewritten once the checkpoint has loaded into this session
        callbacks.append(SaveRunConfig(cfg, ckpt_dir))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    if trainer.is_global_zero:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            save_run_config(cfg, ckpt_dir)
    _remember_wandb_id(loggers, ckpt_dir)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    n_params = sum(p.numel() for p in module.net.parameters())
    log.info("network %s: %.2fM parameters", type(module.net).__name__, n_params / 1e6)
    if resume_from:
        log.info("resuming from %s", resume_from)

    try:
        with warnings.catch_warnings():
            # the EMA copy and a frozen autoencoder stay in eval mode on purpose
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
            # our training sampler does resume mid-epoch (data/samplers.py: ResumableSampler), Lightning cannot tell
            warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch")
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        if cfg.get("test_after_fit"):  # e.g. the autoencoder's reconstruction metrics on the test split
            trainer.test(module, datamodule=datamodule)
    finally:
        _finish_wandb_runs(loggers)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("done: global step %d, run folder %s", trainer.global_step, out_dir)
    return metrics
