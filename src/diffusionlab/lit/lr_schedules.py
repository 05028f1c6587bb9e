"""Learning-rate schedules as ``LambdaLR`` factories (used with ``_partial_: true`` in configs)."""

from __future__ import annotations

import math
from collections.abc import Callable

from lightning.pytorch.callbacks import Timer
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer,
    warmup_steps: int = 0,
    total_steps: int | Callable[[], int] | None = None,
    cosine: bool = False,
    min_factor: float = 0.0,
    time_budget: bool = False,
    time_used: Callable[[], float | None] | None = None,
) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then constant, or (``cosine=True``) cosine decay to
    ``min_factor * lr`` at ``total_steps`` (the trainer's estimated total when used in a module).

    ``total_steps`` may be a callable, asked once, when the first step after the warm-up needs it: a module
    passes ``lambda: trainer.estimated_stepping_batches``, which builds the training loader, and that must not
    happen in ``configure_optimizers`` (before a resumed checkpoint has restored the loop's position: the
    loader would start the interrupted epoch from its first batch).

    ``time_budget=True`` makes the decay machine-independent under a wall-clock limit: the cosine's progress is
    the larger of the step fraction and ``time_used()`` (the fraction of ``trainer.max_time`` spent, in [0, 1],
    or None without a limit; a module passes it), so a run that ``max_time`` stops before its last epoch still
    ends at ``min_factor``. The learning rate then depends on the machine's speed: seeded runs repeat bit for
    bit only with it off."""
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
        progress = (step - warmup_steps) / (n - warmup_steps) if n and n > warmup_steps else 0.0
        used = time_used() if time_budget and time_used is not None else None
        if used is not None:
            progress = max(progress, used)
        progress = min(1.0, progress)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def max_time_used(trainer) -> float | None:
    """Fraction in [0, 1] of ``trainer.max_time`` that fit has spent (resumed runs included: Lightning's
    ``Timer`` callback keeps its elapsed time in the checkpoint), or None when no ``max_time`` is set."""
    timer = next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if remaining is None:
        return None
    elapsed = timer.time_elapsed()
    budget = elapsed + remaining
    return min(1.0, max(0.0, elapsed / budget)) if budget > 0 else 1.0
