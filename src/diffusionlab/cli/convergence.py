"""Has a run converged? The change of its training-time FID over the last evaluation interval.

A study's verdict is worth reading only for runs that have stopped improving: a schedule that learns faster
can win an early-training comparison and lose a converged one. The eval callback scores the EMA weights after
every epoch (``eval_history.json``); a run counts as converged when its FID fell by less than ``tolerance``
(relative) between its last two evaluations. Rising FID counts as converged too (the run stopped improving;
at n = 200 the evaluation itself scatters by a few percent).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

TOLERANCE = 0.05


@dataclass(frozen=True)
class Convergence:
    """The last evaluation interval of one run; ``change`` = (last - previous) / previous (negative: better)."""

    previous_step: int
    last_step: int
    previous_fid: float
    last_fid: float
    change: float
    converged: bool


def last_interval(history: list[dict], tolerance: float = TOLERANCE) -> Convergence | None:
    """The FID change between the last two scored entries of an eval history; None with fewer than two."""
    scored = sorted((e for e in history if e.get("fid") is not None), key=lambda e: e["global_step"])
    if len(scored) < 2:
        return None
    a, b = scored[-2], scored[-1]
    change = (b["fid"] - a["fid"]) / a["fid"]
    return Convergence(a["global_step"], b["global_step"], a["fid"], b["fid"], change, change > -tolerance)


def convergence_sentence(intervals: list[Convergence | None], tolerance: float = TOLERANCE) -> str:
    """One plain sentence over a study's runs: all converged, how many still improve, or no history."""
    known = [c for c in intervals if c is not None]
    if not known:
        return "No run has two training-time evaluations: convergence unknown (train with callbacks=with_eval)."
    changes = [c.change for c in known]
    span = f"{100 * min(changes):+.1f}% to {100 * max(changes):+.1f}%"
    unknown = len(intervals) - len(known)
    tail = f" ({unknown} run(s) without a history)" if unknown else ""
    falling = [c for c in known if not c.converged]
    if not falling:
        return (
            f"Converged: no run's training-time FID fell by {100 * tolerance:.0f}% or more over its last "
            f"evaluation interval (changes {span}){tail}."
        )
    median = statistics.median(c.change for c in falling)
    return (
        f"Not converged: {len(falling)} of {len(known)} runs' training-time FID still fell by "
        f"{100 * tolerance:.0f}% or more over the last evaluation interval (median {100 * median:+.1f}%; all runs "
        f"{span}){tail}: a longer budget may change the verdict."
    )
