"""Callbacks: labelled sample grids from the EMA weights, and the inference export (EMA safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from safetensors.torch import save_file

from diffusionlab.lit.checkpoint_io import RESUME_HINT
from diffusionlab.utils import faults
from diffusionlab.utils.images import labelled_grid
from diffusionlab.utils.io import atomic_path

EMA_FILENAME = "ema.safetensors"


def log_image(trainer: Trainer, key: str, image, step: int) -> None:
    """Send a PIL image to every logger that takes images (W&B, TensorBoard); others are skipped."""
    import numpy as np

    for logger in trainer.loggers:
        name = type(logger).__name__
        if name == "WandbLogger":
            logger.log_image(key=key, images=[image], step=step)
        elif name == "TensorBoardLogger":
            logger.experiment.add_image(key, np.asarray(image), step, dataformats="HWC")


class SampleGridCallback(Callback):
    """Every ``every_n_epochs`` epochs (and at the end of fit) sample a grid with the EMA weights.

    Conditional models get one row per class (``per_class`` samples each, rows labelled with class
    names); unconditional ones ``per_class * 10`` samples in rows of ``per_class``, unlabelled (``guidance``
    applies to conditional models only); super-resolution models (``comparison_grid``) ``per_class``
    validation images as rows low-res | bicubic | ours | ground truth. The noise seed is fixed, so grids of
    successive epochs show the same samples improving. Written as ``<out_dir>/epoch_XXXX_step_XXXXXXX.png``
    and logged.
    """

    def __init__(
        self,
        out_dir: str | None = None,
        every_n_epochs: int = 1,
        per_class: int = 8,
        sampler: str = "ddim",
        steps: int = 50,
        guidance: float = 1.0,
        seed: int = 0,
        class_names: list[str] | None = None,
    ):
        self.out_dir, self.every_n_epochs, self.per_class = out_dir, every_n_epochs, per_class
        self.sampler, self.steps, self.guidance, self.seed = sampler, steps, guidance, seed
        self.class_names = class_names
        self.last_path: Path | None = None

    def _grid(self, trainer: Trainer, pl_module: LightningModule) -> None:
        k = pl_module.num_classes
        if hasattr(pl_module, "comparison_grid"):  # image-conditioned (super-resolution): validation images
            opts = {"sampler": self.sampler, "steps": self.steps, "seed": self.seed, "progress": False}
            grid = pl_module.comparison_grid(self.per_class, **opts)
        elif k is not None:
            labels = torch.arange(k).repeat_interleave(self.per_class)
            images, _ = pl_module.sample(
                labels=labels,
                sampler=self.sampler,
                steps=self.steps,
                guidance=self.guidance,
                seed=self.seed,
                progress=False,
            )
            names = self.class_names or [str(i) for i in range(k)]
            grid = labelled_grid(images, names, nrow=self.per_class)
        else:
            images, _ = pl_module.sample(
                n=self.per_class * 10, sampler=self.sampler, steps=self.steps, seed=self.seed, progress=False
            )
            grid = labelled_grid(images, None, nrow=self.per_class)
        out_dir = Path(self.out_dir or Path(trainer.default_root_dir) / "samples")
        path = out_dir / f"epoch_{trainer.current_epoch:04d}_step_{trainer.global_step:07d}.png"
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, disk_full_hint=RESUME_HINT) as tmp:
            grid.save(tmp, format="PNG")
            faults.fault_point("sample_grid", trainer.global_step)
        self.last_path = path
        log_image(trainer, "samples", grid, trainer.global_step)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._grid(trainer, pl_module)

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.last_path is None or f"step_{trainer.global_step:07d}" not in self.last_path.name:
            self._grid(trainer, pl_module)


class ExportEMACallback(Callback):
    """Whenever a checkpoint is saved (and at the end of fit), write the EMA weights of the network as
    ``<dirpath>/ema.safetensors`` (atomically, rank 0), with the global step in its metadata. Together with
    the run's ``config.yaml`` this is all that ``sample.py`` and ``evaluate.py`` need."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    @rank_zero_only
    def export(self, trainer: Trainer, pl_module: LightningModule) -> Path:
        state = {k: v.detach().cpu().contiguous() for k, v in pl_module.ema.shadow.state_dict().items()}
        path = self.dirpath / EMA_FILENAME
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, disk_full_hint=RESUME_HINT) as tmp:
            save_file(state, str(tmp), metadata={"global_step": str(trainer.global_step)})
        return path

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        self.export(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.export(trainer, pl_module)
