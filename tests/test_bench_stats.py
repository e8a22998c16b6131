"""The bench's interval for a median: the order statistics that textbooks tabulate, and coverage."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatapp.bench.report import format_markdown, format_report
from chatapp.bench.stats import median_interval


@pytest.mark.parametrize(("n", "low_rank", "high_rank"), [(6, 1, 6), (10, 2, 9), (22, 6, 17), (40, 14, 27), (44, 16, 29)])
def test_the_interval_is_the_tabulated_pair_of_ranks(n, low_rank, high_rank):
    values = [float(rank) for rank in range(n, 0, -1)]  # unsorted on purpose
    assert median_interval(values) == (low_rank, high_rank)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_too_few_values_give_the_whole_range(n):
    values = [float(rank) for rank in range(1, n + 1)]
    assert median_interval(values) == (1, n)


def test_an_empty_list_is_an_error():
    with pytest.raises(ValueError):
        median_interval([])


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=80))
def test_the_interval_holds_the_sample_median_and_is_made_of_values(values):
    low, high = median_interval(values)
    assert low in values and high in values
    assert low <= statistics.median(values) <= high


def test_about_95_percent_of_intervals_hold_the_true_median():
    rng = random.Random(5)
    trials = 2000
    held = sum(low <= 0.0 <= high for low, high in
               (median_interval([rng.gauss(0.0, 1.0) for _ in range(40)]) for _ in range(trials)))
    assert 0.94 <= held / trials <= 0.99  # 40 values: the exact coverage of ranks 14-27 is 96.2%


def _report(**tui) -> dict:
    config = {"label": "(x)", "dtype": "float32", "tok_per_s": 10.0, "ttft_ms": 100.0, "rss_mb": 1.0}
    return {
        "model": "m", "device": "cpu", "tokens": 8, "runs": 1,
        "machine": {"cpu": "cpu", "cores": 2, "torch": "2", "threads": 2},
        "configs": {key: dict(config) for key in "abcd"},
        "ratios": {"b_over_c": 1.0, "a_over_d": 3.0, "a_over_c": 3.0},
        "multi_turn": {"turn1_ttft_ms": 100.0, "turn8_ttft_ms": 90.0, "turn8_over_turn1": 0.9},
        "tui": {"tok_per_s": 9.5, "headless_tok_per_s": 10.0, "tui_over_headless": 0.95, "pairs": 40, **tui},
        "warm_start": {"tui_ready_s": 2.0, "tui_prompt_s": 0.5, "ready_s": 1.5},
        "memory": {"peak_rss_mb": 100.0},
    }


def test_the_reports_give_the_interval_and_older_reports_still_format():
    with_interval = _report(tui_over_headless_ci95=[0.91, 0.97])
    for text in (format_report(with_interval), format_markdown(with_interval)):
        assert "median of 40 pairs, 95% interval 0.91 to 0.97" in text
    for text in (format_report(_report()), format_markdown(_report())):
        assert "median of 40 pairs;" in text
