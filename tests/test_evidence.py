"""Verdict rules and intervals, on synthetic numbers whose answer is known."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from batchnorm.experiments.runner.evidence import (
    MIXED,
    NOT_SUPPORTED,
    SUPPORTED,
    Interval,
    Rule,
    combine,
    decide,
    mean_interval,
    paired_interval,
)


def test_mean_interval_is_the_student_t_interval():
    values = [0.971, 0.975, 0.969, 0.978, 0.973]
    got = mean_interval(values)
    mean = sum(values) / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    half = stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert got.n == 5
    assert got.mean == pytest.approx(mean, rel=1e-12)
    assert got.low == pytest.approx(mean - half, rel=1e-12)
    assert got.high == pytest.approx(mean + half, rel=1e-12)
    # 3 seeds: the t quantile is 4.30, not the normal 1.96
    three = mean_interval([0.0, 1.0, 2.0])
    assert three.high - three.mean == pytest.approx(4.302652729911275 / math.sqrt(3), rel=1e-9)


def test_one_seed_has_no_interval_and_decides_nothing():
    single = mean_interval([0.5])
    assert (single.low, single.high) == (None, None)
    assert decide(Rule("c", "q"), single) == MIXED
    assert "no interval" in single.format()


def test_paired_interval_uses_differences():
    a = [0.98, 0.97, 0.99]
    b = [0.96, 0.95, 0.97]
    assert paired_interval(a, b).mean == pytest.approx(0.02)
    # perfectly paired differences: zero spread, a point interval
    assert paired_interval(a, b).low == pytest.approx(0.02)
    with pytest.raises(ValueError, match="pair them by seed"):
        paired_interval([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        mean_interval([1.0, float("nan")])


@pytest.mark.parametrize(
    ("low", "high", "direction", "margin", "expected"),
    [
        (0.1, 0.3, "greater", 0.0, SUPPORTED),
        (-0.3, -0.1, "greater", 0.0, NOT_SUPPORTED),
        (-0.1, 0.3, "greater", 0.0, MIXED),
        (0.1, 0.3, "greater", 0.2, MIXED),
        (0.25, 0.3, "greater", 0.2, SUPPORTED),
        (-0.3, -0.1, "less", 0.0, SUPPORTED),
        (0.1, 0.3, "less", 0.0, NOT_SUPPORTED),
        (-0.3, 0.1, "less", 0.0, MIXED),
        (0.5, 0.9, "less", 1.0, SUPPORTED),
    ],
)
def test_decide(low, high, direction, margin, expected):
    interval = Interval((low + high) / 2, low, high, 3)
    assert decide(Rule("claim", "q", direction, margin), interval) == expected


def test_combine():
    assert combine([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert combine([NOT_SUPPORTED]) == NOT_SUPPORTED
    assert combine([SUPPORTED, NOT_SUPPORTED]) == MIXED
    assert combine([SUPPORTED, MIXED]) == MIXED
    with pytest.raises(ValueError):
        combine([])


def test_rule_describes_itself():
    text = Rule("BN trains faster", "steps saved", "greater", 0.0).describe()
    assert "entirely > 0" in text and "mixed" in text


def test_intervals_round_trip_through_their_dict():
    interval = mean_interval([0.1, 0.3, 0.2])
    assert Interval.from_dict(interval.to_dict()) == interval


def test_side_of_an_interval():
    assert Interval(0.2, 0.1, 0.3, 3).side() == "above"
    assert Interval(-0.2, -0.3, -0.1, 3).side() == "below"
    assert Interval(0.0, -0.1, 0.1, 3).side() == "straddles"
    assert Interval(0.2, 0.1, 0.3, 3).side(0.1) == "straddles"  # touching is not beyond
    assert Interval(0.2, 0.1, 0.3, 3).side(0.35) == "below"
    assert Interval(0.2, None, None, 1).side() == "unknown"
    assert Interval(0.2, float("-inf"), 0.3, 3).side() == "unknown"
