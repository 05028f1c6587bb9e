"""Samplers that make multi-process runs see what one process would: a training sampler that shuffles by
(seed, epoch), shards across ranks and can start part-way into an epoch (a resumed run sees exactly the batches
an uninterrupted run would have seen), and an evaluation batch sampler that deals whole batches to ranks."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Indices of a dataset of size ``n``: a permutation seeded by ``seed + epoch``, this rank's share
    (``perm[rank::world_size]`` after trimming to a multiple of ``world_size``), skipping the first
    ``skip`` indices in epoch ``skip_epoch`` only (the part consumed before a checkpoint)."""

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch = 0
        self.skip_epoch, self.skip = -1, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def resume_at(self, epoch: int, skip: int) -> None:
        """Start epoch ``epoch`` after its first ``skip`` indices (of this rank's share)."""
        self.epoch, self.skip_epoch, self.skip = epoch, epoch, skip

    def _share(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        perm = perm[: self.n - self.n % self.world_size]
        return perm[self.rank :: self.world_size]

    def __iter__(self):
        share = self._share()
        if self.epoch == self.skip_epoch:
            share = share[self.skip :]
        return iter(share.tolist())

    def __len__(self) -> int:
        """The whole epoch's share, also in the resumed epoch: Lightning counts the batches consumed before the
        checkpoint itself (a shorter length would end the resumed epoch early)."""
        return self.n // self.world_size


class EpochTaggedSampler(Sampler[tuple[int, int]]):
    """``(epoch, i)`` for every index ``i`` of a :class:`ResumableSampler` (whose epoch Lightning sets through
    ``set_epoch``), so a dataset can seed per-item randomness by epoch and index instead of the global RNG."""

    def __init__(self, sampler: ResumableSampler):
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def training_sampler(n: int, seed: int, batch_size: int, trainer=None) -> ResumableSampler:
    """The training sampler of a DataModule attached to ``trainer`` (or none): seeded, sharded over the
    trainer's ranks and, when Lightning has restored a mid-epoch checkpoint, starting after the batches that
    epoch already consumed (``batch_progress`` is restored before the loaders are built)."""
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    sampler = ResumableSampler(n, seed=seed, rank=rank, world_size=world)
    if trainer is not None:
        # a checkpoint saved in on_train_batch_end has processed = completed + 1 (Lightning completes the
        # batch after the hooks and fixes the count on restart): processed is what was trained on
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        done = max(progress.processed, progress.completed)
        sampler.resume_at(trainer.current_epoch, done * batch_size)
    return sampler


class EvalBatchSampler(Sampler[list[int]]):
    """Batches of a fixed-order evaluation set dealt to ranks whole: batch ``i`` holds items
    ``[i * B, (i + 1) * B)`` and rank ``r`` of ``W`` gets batches ``r, r + W, ...``. Every batch is evaluated
    once, by one rank, exactly as a single process evaluates it (seed per-batch noise with
    :func:`global_batch_index`). With fewer batches than ranks the batches are made smaller
    (``ceil(n / W)`` items) so that every rank has at least one and takes part in the epoch-end reduction."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n < world_size:
            raise ValueError(f"an evaluation set of {n} items cannot give each of {world_size} ranks a batch")
        if math.ceil(n / batch_size) < world_size:
            batch_size = math.ceil(n / world_size)
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size

    def _mine(self) -> range:
        return range(self.rank, math.ceil(self.n / self.batch_size), self.world_size)

    def __iter__(self):
        for i in self._mine():
            yield list(range(i * self.batch_size, min(self.n, (i + 1) * self.batch_size)))

    def __len__(self) -> int:
        return len(self._mine())


def eval_batch_sampler(n: int, batch_size: int, trainer=None) -> EvalBatchSampler:
    """The validation/test batch sampler of a DataModule attached to ``trainer`` (or none: one process)."""
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    return EvalBatchSampler(n, batch_size, rank, world)


def global_batch_index(batch_idx: int, trainer=None) -> int:
    """The position of this rank's ``batch_idx``-th evaluation batch in the single-process order
    (:class:`EvalBatchSampler` deals batch ``batch_idx * W + rank`` to rank ``rank``)."""
    if trainer is None:
        return batch_idx
    return batch_idx * trainer.world_size + trainer.global_rank
