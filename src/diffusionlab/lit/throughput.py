"""Training throughput: global images per second of every step, logged and written to JSON."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from lightning import Callback, LightningModule, Trainer

from diffusionlab.utils.io import atomic_write_text


class ThroughputCallback(Callback):
    """Times every training batch (wall clock, rank 0) and logs ``perf/images_per_s`` (global batch = local
    batch x world size, divided by the step time). The first ``warmup`` steps are left out of the summary
    (allocation, compilation); at the end of fit the summary ``{steps, median_step_s, images_per_s,
    global_batch, world_size}`` is written to ``path`` when given.
        python train.py +callbacks@callbacks.throughput=throughput
    """

    def __init__(self, path: str | None = None, warmup: int = 2, log: bool = True):
        self.path = Path(path) if path else None
        self.warmup, self.log = warmup, log
        self.step_times: list[float] = []
        self.global_batch = 0
        self._start = 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        elapsed = time.perf_counter() - self._start
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        self.global_batch = len(x) * trainer.world_size
        self.step_times.append(elapsed)
        if self.log and trainer.loggers:
            pl_module.log("perf/images_per_s", self.global_batch / elapsed, on_step=True, rank_zero_only=True)

    def summary(self, world_size: int = 1) -> dict:
        times = self.step_times[self.warmup :] or self.step_times
        median = statistics.median(times) if times else float("nan")
        return {
            "steps": len(times),
            "median_step_s": median,
            "images_per_s": self.global_batch / median if times else float("nan"),
            "global_batch": self.global_batch,
            "world_size": world_size,
        }

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.path is not None and trainer.is_global_zero:
            atomic_write_text(self.path, json.dumps(self.summary(trainer.world_size), indent=2))
