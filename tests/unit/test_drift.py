"""The sliding-window binomial drift detector: window bookkeeping, exact p-values, the flag."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from serve.monitoring.drift import DriftConfigError, DriftDetector, two_sided_p_values


@pytest.mark.parametrize(("n", "p"), [(1000, 0.8), (1000, 0.5), (60, 0.93), (200, 0.0),
                                      (200, 1.0), (1000, 0.999), (7, 0.3), (25, 0.5)])
def test_p_value_table_equals_scipy_binomtest(n: int, p: float) -> None:
    table = two_sided_p_values(n, p)
    ref = np.array([binomtest(k, n, p).pvalue for k in range(n + 1)])
    assert table.shape == (n + 1,)
    np.testing.assert_allclose(table, ref, rtol=1e-9, atol=1e-300)


@settings(max_examples=60, deadline=None)
@given(window=st.integers(1, 40),
       batches=st.lists(st.lists(st.booleans(), min_size=0, max_size=90), min_size=1, max_size=12))
def test_window_matches_a_naive_last_n_list(window: int, batches: list[list[bool]]) -> None:
    det = DriftDetector(0.7, window=window, alpha=0.01, every=1)
    history: list[bool] = []
    for b in batches:
        s = det.update(np.array(b, dtype=bool))
        history.extend(b)
        last = history[-window:]
        assert s.n == len(last)
        assert s.accepted == sum(last)
        if last:
            assert s.window_coverage == pytest.approx(sum(last) / len(last), abs=0)
        if len(last) == window:   # every=1: tested on each update once full
            assert s.p_value == pytest.approx(binomtest(sum(last), window, 0.7).pvalue, rel=1e-9)
            assert s.detected == (s.p_value < 0.01)
        else:
            assert math.isnan(s.p_value) and not s.detected


def test_flag_rises_on_shift_and_clears_after_recovery() -> None:
    rng = np.random.default_rng(0)
    det = DriftDetector(0.8, window=500, alpha=0.001, every=50)
    flips = []
    for _ in range(20):             # in distribution: accept ~80 %
        s = det.update(rng.random(50) < 0.8)
        assert not s.detected
    for _ in range(20):             # shifted: accept ~40 %
        s = det.update(rng.random(50) < 0.4)
        flips.append(s.changed)
    assert s.detected and s.p_value < 1e-20 and s.window_coverage < 0.5
    assert sum(flips) == 1          # rose exactly once
    for _ in range(20):
        s = det.update(rng.random(50) < 0.8)
    assert not s.detected and s.changed is False
    assert s.window_coverage == pytest.approx(0.8, abs=0.06)


def test_too_many_accepts_is_drift_too() -> None:
    det = DriftDetector(0.5, window=200, alpha=0.001)
    s = det.update(np.ones(200, dtype=bool))
    assert s.detected and s.changed and s.p_value < 1e-50


def test_test_runs_at_most_every_k_samples() -> None:
    det = DriftDetector(0.5, window=100, alpha=0.001, every=30)
    det.update(np.ones(100, dtype=bool))           # window full → first test at once
    assert det.detected
    det.update(np.zeros(29, dtype=bool))           # 29 < 30 new samples: no re-test
    p_before = det.p_value
    assert det.status().accepted == 71 and det.p_value == p_before
    det.update(np.zeros(1, dtype=bool))            # 30th sample: re-test with 70 / 100
    assert det.p_value == pytest.approx(binomtest(70, 100, 0.5).pvalue, rel=1e-9)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"coverage": 0.5, "window": 0}, "window"),
    ({"coverage": 0.5, "alpha": 0.0}, "alpha"),
    ({"coverage": 1.5}, "coverage"),
    ({"coverage": 0.5, "every": 0}, "interval"),
])
def test_bad_settings_say_what_is_wrong(kwargs: dict, match: str) -> None:
    with pytest.raises(DriftConfigError, match=match):
        DriftDetector(**kwargs)
