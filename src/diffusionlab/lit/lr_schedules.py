"""Learning-rate schedules as ``LambdaLR`` factories (used with ``_partial_: true`` in configs)."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer,
    warmup_steps: int = 0,
    total_steps: int | Callable[[], int] | None = None,
    cosine: bool = False,
    min_factor: float = 0.0,
) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then constant, or (``cosine=True``) cosine decay to
    ``min_factor * lr`` at ``total_steps`` (the trainer's estimated total when used in a module).

    ``total_steps`` may be a callable, asked once, when the first step after the warm-up needs it: a module
    passes ``lambda: trainer.estimated_stepping_batches``, which builds the training loader, and that must not
    happen in ``configure_optimizers`` (before a resumed checkpoint has restored the loop's position: the
    loader would start the interrupted epoch from its first batch)."""
    total: dict[str, int | None] = {}

    def resolved_total() -> int | None:
        if "n" not in total:
            total["n"] = total_steps() if callable(total_steps) else total_steps
        return total["n"]

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if not cosine or step <= warmup_steps:  # the cosine starts at 1 whatever the total
            return 1.0
        n = resolved_total()
        if not n or n <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (n - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
