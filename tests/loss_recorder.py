"""A test callback: the training loss of every step averaged over all ranks, written to JSON by rank 0."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class GlobalLossRecorder(Callback):
    """Appends ``mean over ranks of the step's loss`` after every training batch; rank 0 writes the list to
    ``path`` when training ends (all ranks take part in the reduction, so use it on every rank)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"].detach().float()
        self.losses.append(float(trainer.strategy.reduce(loss, reduce_op="mean")))

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.path.write_text(json.dumps(self.losses))
