"""Which group of runs wins a metric at each sampling step count, and whether that beats the seed spread.

A study such as linear vs cosine trains several seeds per group. The difference between two groups' mean FIDs
means something only when it is larger than the run-to-run scatter, so each verdict compares the best group
with the runner-up by one plain rule: the difference of the means must exceed the sum of the two sample
standard deviations (the ``mean ± std`` ranges do not overlap). With one run in a group there is no spread and
the verdict says so instead of naming a winner.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

RULE = (
    "the difference of the means exceeds the sum of the two seed standard deviations "
    "(the mean ± std ranges do not overlap)"
)


@dataclass(frozen=True)
class Verdict:
    """The comparison at one sampling step count; ``decided`` is None when a group has fewer than 2 runs."""

    steps: int
    metric: str
    best: str
    runner_up: str
    best_mean: float
    best_std: float | None
    runner_up_mean: float
    runner_up_std: float | None
    difference: float
    spread: float | None
    decided: bool | None

    def sentence(self) -> str:
        a = mean_pm(self.best_mean, self.best_std)
        b = mean_pm(self.runner_up_mean, self.runner_up_std)
        head = f"At {self.steps} steps {self.best} has the lower {self.metric} ({a} against {b} for {self.runner_up})"
        if self.decided is None:
            return f"{head}; with one run per group there is no seed spread to compare it with: train more seeds."
        if self.decided:
            return (
                f"{head}; the difference {self.difference:.2f} exceeds the seed spread {self.spread:.2f}: "
                f"{self.best} wins."
            )
        return (
            f"{head}, but the difference {self.difference:.2f} is within the seed spread {self.spread:.2f}: "
            "no winner at this budget."
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "sentence": self.sentence()}


def mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample std of the non-None ``values``; std None for one value, both None for none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def mean_pm(mean: float, std: float | None, digits: int = 2) -> str:
    """``12.34 ± 0.56``, or ``12.34`` without a std."""
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def compare(values: dict[str, list[float]], steps: int, metric: str = "FID", lower_is_better: bool = True) -> Verdict:
    """``values``: group -> the metric of each of its runs (at least two groups, each with a value)."""
    stats = {g: mean_std(vals) for g, vals in values.items()}
    stats = {g: ms for g, ms in stats.items() if ms[0] is not None}
    if len(stats) < 2:
        raise ValueError(f"a verdict needs at least two groups with a {metric} value, got {sorted(stats)}")
    order = sorted(stats, key=lambda g: stats[g][0], reverse=not lower_is_better)
    (bm, bs), (rm, rs) = stats[order[0]], stats[order[1]]
    spread = None if bs is None or rs is None else bs + rs
    difference = abs(rm - bm)
    return Verdict(
        steps=steps,
        metric=metric,
        best=order[0],
        runner_up=order[1],
        best_mean=bm,
        best_std=bs,
        runner_up_mean=rm,
        runner_up_std=rs,
        difference=difference,
        spread=spread,
        decided=None if spread is None else difference > spread,
    )


def summary_sentence(verdicts: list[Verdict]) -> str:
    """One line over all step counts: where a group wins and where the seeds cannot tell."""
    if not verdicts:
        return "No step counts to compare."
    wins: dict[str, list[int]] = {}
    for v in verdicts:
        if v.decided:
            wins.setdefault(v.best, []).append(v.steps)
    open_steps = [v.steps for v in verdicts if not v.decided]
    parts = [f"{g} wins at {_steps(s)}" for g, s in wins.items()]
    if open_steps:
        reason = "one run per group" if any(v.decided is None for v in verdicts) else "within the seed spread"
        parts.append(f"no winner at {_steps(open_steps)} ({reason})")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def _steps(steps: list[int]) -> str:
    return ", ".join(str(s) for s in steps) + (" step" if steps == [1] else " steps")
