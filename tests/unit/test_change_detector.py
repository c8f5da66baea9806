"""The e-detector on audited errors: its recursion, its false-alarm rate, its delay after calm."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from serve.feedback.change import ARL, MULTIPLES, detect, grid, log_statistic

R_STAR = 0.02
REPS = 600


def _slack(p: float, n: int) -> float:
    """One-sided 99.9% binomial slack above p for a rate measured on n repetitions."""
    return binom.ppf(0.999, n, p) / n - p


@settings(max_examples=40, deadline=None)
@given(errors=st.lists(st.booleans(), min_size=1, max_size=60),
       target=st.sampled_from([0.01, 0.05, 0.2]))
def test_statistic_is_the_sum_over_every_start(errors: list[bool], target: float) -> None:
    x = np.array(errors, np.float64)
    q = grid(target)
    brute = []
    for t in range(1, x.size + 1):
        total = 0.0
        for qk in q:
            lr = np.where(x[:t] == 1, qk / target, (1 - qk) / (1 - target))
            total += sum(np.prod(lr[j:t]) for j in range(t)) / q.size
        brute.append(math.log(total))
    np.testing.assert_allclose(log_statistic(x, target), brute, rtol=1e-9, atol=1e-9)


def test_false_alarms_at_a_stationary_risk_equal_to_the_target_stay_under_n_over_a() -> None:
    rng = np.random.default_rng(11)
    n_labels = 5000
    x = (rng.random((REPS, n_labels)) < R_STAR).astype(np.float64)
    stat = log_statistic(x, R_STAR)
    rate = float((stat >= math.log(ARL)).any(axis=1).mean())
    bound = n_labels / ARL                        # P(τ ≤ N) ≤ N / A
    assert rate <= bound + _slack(bound, REPS), rate
    # A lower threshold alarms more often, and its bound still holds: the test can see alarms.
    low = 10_000.0
    rate_low = float((stat >= math.log(low)).any(axis=1).mean())
    assert rate < rate_low <= n_labels / low
    assert rate_low > 0.1


def test_a_jump_to_three_times_the_target_after_calm_alarms_within_a_median_of_400() -> None:
    rng = np.random.default_rng(12)
    calm = rng.random((REPS, 2000)) < 0.5 * R_STAR
    jump = rng.random((REPS, 3000)) < 3 * R_STAR
    stat = log_statistic(np.concatenate([calm, jump], axis=1).astype(np.float64), R_STAR)
    hit = stat >= math.log(ARL)
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), 10**9)
    assert (first < 2000).mean() <= 0.01         # calm at 0.5 r*: almost never before the jump
    delay = np.where(first >= 2000, first - 1999, np.inf)
    assert np.median(delay) <= 400, np.median(delay)
    assert np.isfinite(delay).mean() >= 0.99       # nearly all found within 3,000 labels


def test_detect_reports_the_first_crossing_and_latches() -> None:
    x = np.r_[np.zeros(500), np.ones(40), np.zeros(2000)]
    s = detect(x, R_STAR)
    assert s.alarm and s.alarm_at is not None and 500 < s.alarm_at <= 540
    assert s.log_statistic < s.log_threshold     # the statistic fell back; the alarm stays
    assert s.observations == x.size and s.arl == ARL
    quiet = detect(np.zeros(3000), R_STAR)
    assert not quiet.alarm and quiet.alarm_at is None
    assert not detect([], R_STAR).alarm and not detect([1, 1, 1], None).alarm


def test_grid_stays_below_one_and_rejects_a_bad_target() -> None:
    assert np.all(grid(0.3) < 1) and grid(0.3).size == 3
    assert grid(0.9).size == 1 and 0.9 < grid(0.9)[0] < 1
    assert len(MULTIPLES) == grid(R_STAR).size
    with pytest.raises(ValueError, match="target risk"):
        log_statistic([0, 1], 1.0)
