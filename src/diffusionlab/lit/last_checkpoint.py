"""``last.ckpt`` that always holds where training stopped."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint(save_last=True, save_top_k=0)`` that writes ``last.ckpt`` every
    ``every_n_train_steps``, at the end of every epoch *and* after the final batch (``max_steps`` reached, or
    ``trainer.should_stop`` set by ``max_time``). Lightning's own writes ``last.ckpt`` at the step interval only
    when no top-k checkpoint is kept, so a run that stopped between two intervals left up to
    ``every_n_train_steps - 1`` steps out of the file ``ckpt_path=last`` resumes from.

    The final write happens in ``on_train_batch_end``, where the loop state is that of a run in the middle of
    its epoch (a checkpoint written at train end would mark the epoch finished, and a resume with a larger
    budget would skip the rest of it): resuming it with a larger ``max_steps`` continues exactly."""

    def _save_last_now(self, trainer: Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        max_steps_reached = trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps
        if max_steps_reached or trainer.should_stop:
            self._save_last_now(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)
