"""A study's runs count as converged only when their training-time FID has stopped falling."""

from __future__ import annotations

import pytest

from diffusionlab.cli.convergence import convergence_sentence, last_interval
from diffusionlab.cli.report import convergence_lines


def history(*fids: float, every: int = 429) -> list[dict]:
    protocol = {"reference": {"split": "mnist:train"}}
    entries = [
        {"global_step": every * (i + 1), "fid": f, "num_samples": 200, "protocol": protocol} for i, f in enumerate(fids)
    ]
    return list(reversed(entries))  # order in the file must not matter


def test_the_last_interval_decides_not_the_best_or_the_first():
    c = last_interval(history(190.0, 120.0, 100.0, 97.0))
    assert (c.previous_step, c.last_step, c.previous_fid, c.last_fid) == (1287, 1716, 100.0, 97.0)
    assert c.change == pytest.approx(-0.03) and c.converged
    still = last_interval(history(190.0, 120.0, 110.0))
    assert still.change == pytest.approx(-10 / 120) and not still.converged
    assert last_interval(history(50.0, 52.0)).converged  # rising: stopped improving
    assert last_interval(history(50.0)) is None and last_interval([{"global_step": 1, "fid": None}]) is None


def test_the_sentence_counts_the_runs_that_still_improve():
    runs = [last_interval(history(100.0, 98.0)), last_interval(history(100.0, 90.0)), None]
    text = convergence_sentence(runs)
    assert text.startswith("Not converged: 1 of 2 runs'") and "median -10.0%" in text
    assert "-10.0% to -2.0%" in text and "1 run(s) without a history" in text
    done = convergence_sentence([last_interval(history(100.0, 98.0)), last_interval(history(80.0, 81.0))])
    assert done.startswith("Converged:") and "-2.0% to +1.2%" in done
    assert "unknown" in convergence_sentence([None])


def test_the_report_section_names_the_evaluation_it_judges_by():
    runs = [{"history": h, "last_interval": last_interval(h)} for h in (history(120.0, 100.0), history(90.0, 89.0))]
    lines = convergence_lines(runs)  # runs as describe_run gives them
    text = "\n".join(lines)
    assert "## Convergence" in text and "(n=200 against mnist:train)" in text
    assert "**Not converged: 1 of 2 runs'" in text
