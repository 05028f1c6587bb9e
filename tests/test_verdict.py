"""The schedule study's verdict: a winner only when the difference of the means beats the seed spread."""

from __future__ import annotations

import pytest

from diffusionlab.cli.report import verdict_lines
from diffusionlab.cli.verdict import compare, summary_sentence


def test_a_difference_larger_than_the_spread_names_the_winner():
    v = compare({"linear": [30.0, 32.0, 31.0], "cosine": [20.0, 21.0, 22.0]}, steps=10)
    assert (v.best, v.runner_up) == ("cosine", "linear")
    assert v.best_mean == pytest.approx(21.0) and v.runner_up_mean == pytest.approx(31.0)
    assert v.difference == pytest.approx(10.0) and v.spread == pytest.approx(2.0) and v.decided is True
    assert v.sentence() == (
        "At 10 steps cosine has the lower FID (21.00 ± 1.00 against 31.00 ± 1.00 for linear); "
        "the difference 10.00 exceeds the seed spread 2.00: cosine wins."
    )


def test_a_difference_within_the_spread_names_no_winner():
    v = compare({"linear": [20.0, 26.0, 23.0], "cosine": [21.0, 25.0, 24.0]}, steps=50)
    assert v.best == "linear" and v.decided is False  # 23.0 vs 23.33: the stds (3.0, 2.08) dwarf 0.33
    assert "within the seed spread" in v.sentence() and "no winner at this budget" in v.sentence()


def test_one_run_per_group_has_no_spread_and_says_so():
    v = compare({"linear": [30.0], "cosine": [20.0]}, steps=20)
    assert v.best == "cosine" and v.spread is None and v.decided is None
    assert "no seed spread" in v.sentence()
    assert summary_sentence([v]) == "No winner at 20 steps (one run per group)."


def test_higher_is_better_metrics_and_missing_values():
    v = compare({"a": [0.90, 0.91], "b": [0.97, 0.98, None]}, steps=20, metric="class accuracy", lower_is_better=False)
    assert v.best == "b" and v.decided is True and "higher" not in v.sentence()
    with pytest.raises(ValueError, match="at least two groups"):
        compare({"a": [1.0], "b": [None]}, steps=20)


def test_summary_and_report_section_over_step_counts():
    vs = [
        compare({"linear": [30.0, 31.0, 32.0], "cosine": [20.0, 21.0, 22.0]}, steps=10),
        compare({"linear": [30.0, 31.0, 32.0], "cosine": [25.0, 27.0, 29.0]}, steps=20),
        compare({"linear": [20.0, 21.0, 22.0], "cosine": [24.0, 25.0, 26.0]}, steps=50),
        compare({"linear": [20.0, 22.0, 24.0], "cosine": [21.0, 23.0, 25.0]}, steps=100),
    ]
    assert [v.decided for v in vs] == [True, True, True, False]
    assert summary_sentence(vs) == (
        "Cosine wins at 10, 20 steps; linear wins at 50 steps; no winner at 100 steps (within the seed spread)."
    )
    text = "\n".join(verdict_lines(vs, "diffusion.schedule"))
    assert "## Which diffusion.schedule wins (FID, lower is better)" in text
    assert "| 10 | cosine 21.00 ± 1.00 | linear 31.00 ± 1.00 | 10.00 | 2.00 | yes |" in text
    assert "| 100 | linear 22.00 ± 2.00 | cosine 23.00 ± 2.00 | 1.00 | 4.00 | no |" in text
    assert text.rstrip().endswith(
        "**Cosine wins at 10, 20 steps; linear wins at 50 steps; no winner at 100 steps (within the seed spread).**"
    )
    assert verdict_lines([], "diffusion.schedule") == []
