"""Learning-rate schedules as ``LambdaLR`` factories (used with ``_partial_: true`` in configs)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    cosine: bool = False,
    min_factor: float = 0.0,
) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then constant, or (``cosine=True``) cosine decay to
    ``min_factor * lr`` at ``total_steps`` (the trainer's estimated total when used in a module)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if not cosine or not total_steps or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
