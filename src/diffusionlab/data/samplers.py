"""A training sampler that shuffles by (seed, epoch), shards across ranks and can start part-way into an
epoch, so a resumed run sees exactly the batches an uninterrupted run would have seen."""

from __future__ import annotations

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
        full = self.n // self.world_size
        return max(0, full - self.skip) if self.epoch == self.skip_epoch else full


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
