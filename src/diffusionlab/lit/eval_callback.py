"""Training-time evaluation: FID/KID (+ class accuracy) of the EMA weights every N epochs.

The samples are drawn exactly as ``evaluate.py`` draws them (:func:`diffusionlab.cli.evaluate.sample_batches`):
global batch ``i`` of ``batch_size`` images uses noise seed ``seed + i`` and labels ``(start .. start+b) % K``.
Under DDP the global batches are dealt round-robin to the ranks, so the sample set does not depend on the
number of processes (as long as every rank gets a batch: otherwise the batch size shrinks to ``ceil(n / W)``),
and the metrics :class:`~diffusionlab.metrics.Evaluator` gathers the features of all ranks before scoring.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from torch import Tensor

from diffusionlab.pipelines import check_conditioning, default_sampler_opts
from diffusionlab.utils.io import atomic_write_json

HISTORY_FILENAME = "eval_history.json"
# Metrics of Evaluator.evaluate that are logged (as <prefix>/<name>) when not None, with their direction.
LOGGED = {
    "fid": "min",
    "kid_mean": "min",
    "kid_std": None,
    "precision": "max",
    "recall": "max",
    "class_accuracy": "max",
    "domain_fid": "min",
    "domain_kid_mean": "min",
    "inception_score": "max",
    "pixel_histogram_tv": "min",
    "faint_pixel_fraction": None,
}
CLASSIFIER_CHOICES = ("auto", True, False)


def batch_plan(n: int, batch_size: int, rank: int, world_size: int) -> list[tuple[int, int, int]]:
    """This rank's share of ``n`` samples as ``(global batch index, start, size)`` triples.

    Global batches of ``batch_size`` (shrunk to ``ceil(n / world_size)`` so that every rank gets at least one)
    are dealt round-robin: rank ``r`` takes batches ``r, r + W, ...``.
    """
    if n < world_size:
        raise ValueError(f"num_samples={n} is smaller than the number of processes ({world_size})")
    bs = min(batch_size, math.ceil(n / world_size))
    starts = range(0, n, bs)
    return [(i, s, min(bs, n - s)) for i, s in enumerate(starts) if i % world_size == rank]


class EvalCallback(Callback):
    """Every ``every_n_epochs`` training epochs, sample ``num_samples`` images with the EMA weights and score them.

    Metrics (see :class:`diffusionlab.metrics.Evaluator`) are logged as ``<prefix>/fid``, ``<prefix>/kid_mean``,
    ``<prefix>/kid_std``, ``<prefix>/precision``, ``<prefix>/recall``, ``<prefix>/class_accuracy`` (conditional
    models with a domain classifier), ``<prefix>/domain_fid``, ... through ``pl_module.log``, so a
    ``ModelCheckpoint(monitor="eval/fid")`` or a sweeper can use them. Every evaluation is appended to
    ``history_path`` (default ``<run>/eval_history.json``, written atomically by rank 0) with the global step,
    the validation losses of that moment and the full protocol.

    Args:
        reference: real split to compare with, ``'dataset:split'`` (e.g. ``'mnist:test'``).
        data_dir, cache_dir: where the real images are and where reference features / classifiers are cached.
        every_n_epochs: evaluate after epochs ``N-1, 2N-1, ...`` (0 disables).
        num_samples: images per evaluation (all ranks together); FID is biased at small n, compare equal n only.
        batch_size: images sampled per batch.
        sampler, steps, guidance, seed, sampler_opts: how the samples are drawn; ``sampler_opts`` go on top of
            :func:`default_sampler_opts` (``{'clip_x0': 1.0}`` for pixel-space models, as ``evaluate.py``; ``{}``
            for latent ones), as in ``DiffusionModule.sample``; ``{'clip_x0': None}`` turns the clamp off.
        inception_weights: None downloads the standard FID Inception; a path loads it from disk.
        classifier: ``'auto'`` | True | False: the dataset's domain classifier (class accuracy, domain FID).
        monitor: the logged key whose best value is marked in the history (``best_step``); must be one of the
            lower-is-better keys (``<prefix>/fid``, ``<prefix>/kid_mean``, ``<prefix>/domain_fid``, ...).
        prefix: namespace of the logged keys.
        progress: progress bars for sampling batches and feature extraction (rank 0).
    """

    def __init__(
        self,
        reference: str,
        data_dir: str,
        cache_dir: str | None = None,
        every_n_epochs: int = 1,
        num_samples: int = 1000,
        batch_size: int = 250,
        sampler: str = "ddim",
        steps: int = 50,
        guidance: float = 1.0,
        seed: int = 0,
        sampler_opts: dict | None = None,
        inception_weights: str | None = None,
        classifier: bool | str = "auto",
        history_path: str | None = None,
        monitor: str = "eval/fid",
        prefix: str = "eval",
        progress: bool = True,
    ):
        if not isinstance(every_n_epochs, int) or every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be an integer >= 0 (0 = never), got {every_n_epochs!r}")
        if not isinstance(num_samples, int) or num_samples < 2:
            raise ValueError(f"num_samples must be an integer >= 2 (FID needs a covariance), got {num_samples!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if classifier not in CLASSIFIER_CHOICES:
            raise ValueError(f"classifier must be one of {CLASSIFIER_CHOICES}, got {classifier!r}")
        lower_is_better = [f"{prefix}/{k}" for k, d in LOGGED.items() if d == "min"]
        if monitor not in lower_is_better:
            raise ValueError(f"monitor must be one of {lower_is_better} (lower is better), got {monitor!r}")
        self.reference, self.data_dir, self.cache_dir = reference, data_dir, cache_dir
        self.every_n_epochs, self.num_samples, self.batch_size = every_n_epochs, num_samples, batch_size
        self.sampler, self.steps, self.guidance, self.seed = sampler, steps, guidance, seed
        self.sampler_opts = None if sampler_opts is None else dict(sampler_opts)
        self.inception_weights, self.classifier = inception_weights, classifier
        self.history_path = history_path
        self.monitor, self.prefix, self.progress = monitor, prefix, progress
        self._evaluator = None
        self.last: dict | None = None  # the metrics of the latest evaluation

    # ------------------------------------------------------------------ pieces
    def evaluator(self, device: torch.device, progress: bool):
        """The metrics Evaluator, built on first use on the module's device (loads the feature networks)."""
        if self._evaluator is None:
            from diffusionlab.metrics import Evaluator

            self._evaluator = Evaluator(
                self.reference,
                data_dir=self.data_dir,
                cache_dir=self.cache_dir,
                inception_weights=self.inception_weights,
                classifier=self.classifier,
                device=device,
                progress=progress,
            )
        self._evaluator.progress = progress
        return self._evaluator

    def _opts(self, pl_module: LightningModule) -> dict:
        """The options the samples are drawn with (what ``DiffusionModule.sample`` uses; also the protocol's)."""
        return default_sampler_opts(getattr(pl_module, "latent", False), self.sampler_opts)

    def sample_batches(
        self, pl_module: LightningModule, rank: int, world_size: int, progress: bool
    ) -> Iterator[tuple[Tensor, Tensor | None]]:
        """This rank's batches ``(images [b, C, H, W] in [-1, 1], labels [b] or None)`` from the EMA weights."""
        from tqdm.auto import tqdm

        k = pl_module.num_classes
        opts = self._opts(pl_module)
        plan = batch_plan(self.num_samples, self.batch_size, rank, world_size)
        for i, start, b in tqdm(plan, desc="eval sampling", unit="batch", disable=not progress, leave=False):
            labels = torch.arange(start, start + b) % k if k is not None else None
            images, _ = pl_module.sample(
                labels=labels,
                n=b,
                sampler=self.sampler,
                steps=self.steps,
                guidance=self.guidance,
                seed=self.seed + i,
                sampler_opts=opts,
                progress=False,
            )
            yield images, labels

    def protocol(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        return {
            "mode": "training",
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "weights": "ema",
            "conditional": pl_module.num_classes is not None,
            "sampler": self.sampler,
            "sampler_opts": self._opts(pl_module),
            "steps": self.steps,
            "guidance": self.guidance,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "precision": pl_module.sampling_precision(),
            "channels_last": pl_module.channels_last,
        }

    # ------------------------------------------------------------------ the evaluation
    def run_evaluation(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        """Sample, score, log and record one evaluation; every rank must call this (features are gathered)."""
        rank, world = trainer.global_rank, trainer.world_size
        progress = self.progress and trainer.is_global_zero
        t0 = time.perf_counter()
        ev = self.evaluator(pl_module.device, progress)
        batches = self.sample_batches(pl_module, rank, world, progress)
        with torch.no_grad():
            n_mine = sum(b for _, _, b in batch_plan(self.num_samples, self.batch_size, rank, world))
            metrics = ev.evaluate(batches, num_samples=n_mine, protocol=self.protocol(trainer, pl_module))
        seconds = time.perf_counter() - t0
        for name in LOGGED:
            if metrics.get(name) is not None:
                pl_module.log(f"{self.prefix}/{name}", float(metrics[name]), on_epoch=True, sync_dist=False)
        self.last = metrics
        if trainer.is_global_zero:
            self._append_history(trainer, metrics, seconds)
        return metrics

    def _history_file(self, trainer: Trainer) -> Path:
        return Path(self.history_path or Path(trainer.default_root_dir) / HISTORY_FILENAME)

    def _append_history(self, trainer: Trainer, metrics: dict, seconds: float) -> None:
        path = self._history_file(trainer)
        entries = []
        if path.is_file():
            try:
                entries = read_history(path)["evaluations"]
            except ValueError as err:  # never stop a training for its log: keep the bad file aside
                warnings.warn(f"{err}; moved to {path.name}.bad, starting a new history", stacklevel=2)
                os.replace(path, path.with_name(path.name + ".bad"))
        # a resumed run may re-evaluate a step it had reached before a crash: the newer result replaces it
        entries = [e for e in entries if e["global_step"] != trainer.global_step]
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        entry = {
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "seconds": round(seconds, 3),
            "val": val,
            **{k: metrics.get(k) for k in LOGGED},
            "num_samples": metrics["num_samples"],
            "protocol": metrics["protocol"],
        }
        entries = sorted([*entries, entry], key=lambda e: e["global_step"])
        key = self.monitor.split("/", 1)[1]
        scored = [e for e in entries if e.get(key) is not None]
        best = min(scored, key=lambda e: e[key])["global_step"] if scored else None
        atomic_write_json(path, {"monitor": self.monitor, "best_step": best, "evaluations": entries})

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Stop at once (not after the first epoch) when ``guidance`` does not fit the model."""
        k = pl_module.num_classes
        check_conditioning(k, has_labels=k is not None, guidance=self.guidance)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Runs after the epoch's validation and before ModelCheckpoint (Lightning orders checkpoints last)."""
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            if not trainer.sanity_checking:
                self.run_evaluation(trainer, pl_module)


def read_history(path: str | Path) -> dict:
    """``eval_history.json`` as ``{'monitor', 'best_step', 'evaluations': [entry, ...]}`` (sorted by step)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read evaluation history {str(path)!r}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("evaluations"), list):
        raise ValueError(f"{str(path)!r} is not an evaluation history (no 'evaluations' list)")
    return data
