"""The label-free shift monitor: its e-value, its false-alarm rate with ĉ estimated, its delay."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import beta, binom

from serve.monitoring.drift import DriftDetector
from serve.monitoring.shift import (
    ShiftConfigError,
    ShiftMonitor,
    alternatives,
    coverage_interval,
    log_bet,
)

N_CERT = 2100
REPS = 500


def _simulate(c: float, horizon: int, step: int, seed: int, drop: float = 0.0,
              change: int = 0, alpha: float = 0.01, monitor_horizon: int | None = None
              ) -> np.ndarray:
    """First alarm (in predictions) of REPS streams, each with its own ĉ ~ Bin(2100, c)/2100;
    -1 when none. The live rate is c, then c − drop from prediction ``change`` on."""
    rng = np.random.default_rng(seed)
    k = rng.binomial(N_CERT, c, REPS)
    mon = ShiftMonitor(k / N_CERT, N_CERT, alpha=alpha, horizon=monitor_horizon or horizon,
                       streams=REPS)
    first = np.full(REPS, -1)
    for i in range(horizon // step):
        p = c - drop if i * step >= change else c
        mon.update(rng.binomial(step, p, REPS), step)
        first[mon.detected & (first < 0)] = (i + 1) * step
    return first


@settings(max_examples=40, deadline=None)
@given(k=st.integers(0, 60), n=st.integers(60, 80), t=st.integers(1, 40),
       tail=st.sampled_from([0.0, 0.3, 1.0]))
def test_each_bet_is_a_supermartingale_whenever_c_is_in_the_interval(k: int, n: int, t: int,
                                                                     tail: float) -> None:
    """E[e↓] ≤ 1 at every rate p ≥ lo and E[e↑] ≤ 1 at every p ≤ hi, by exact enumeration."""
    k = min(k, n)
    lo, hi = coverage_interval(np.array([k]), n, 0.05)
    down, up = alternatives(lo, hi)
    a = np.arange(t + 1)[None, :]
    tt = np.full_like(a, t)
    for p0, q, p in ((lo, down, lo + tail * (hi - lo)), (hi, up, hi - tail * (hi - lo))):
        e = np.exp(log_bet(a, tt, p0, q))[0]                       # (t + 1,)
        assert float(binom.pmf(a[0], t, p[0]) @ e) <= 1 + 1e-9


def test_interval_is_clopper_pearson() -> None:
    lo, hi = coverage_interval(np.array([1995, 0, 2100]), N_CERT, 0.005)
    assert lo[0] == pytest.approx(beta.ppf(0.0025, 1995, 106)) and lo[1] == 0.0
    assert hi[0] == pytest.approx(beta.ppf(0.9975, 1996, 105)) and hi[2] == 1.0
    down, up = alternatives(lo, hi)
    assert np.all(np.isnan(down[1])) and np.all(np.isnan(up[2]))   # nothing below 0 or above 1
    assert np.nanmax(down[0]) < lo[0] < hi[0] < np.nanmin(up[0])


@pytest.mark.parametrize("c", [0.95, 0.8])
def test_no_more_false_alarms_than_alpha_with_the_coverage_estimated(c: float) -> None:
    horizon, alpha = 20_000, 0.01
    first = _simulate(c, horizon, step=50, seed=int(c * 100), alpha=alpha)
    alarms = int((first >= 0).sum())
    assert alarms <= binom.ppf(0.999, REPS, alpha), alarms
    # The window test of drift.py, fed the same kind of streams, flags far more often:
    # it treats ĉ as exact (issue 25 item 4).
    rng = np.random.default_rng(1)
    flagged = 0
    for k in rng.binomial(N_CERT, c, 100):
        det = DriftDetector(k / N_CERT, window=1000, alpha=0.001, every=100)
        flagged += any(det.update(rng.random(100) < c).detected for _ in range(horizon // 100))
    assert flagged / 100 > 10 * alpha, flagged


@pytest.mark.parametrize(("c", "after", "median", "found"), [(0.95, 15_000, 2500, 0.95),
                                                               (0.8, 30_000, 12_000, 0.8)])
def test_a_five_point_drop_after_calm_is_found_within_thousands_of_predictions(
        c: float, after: int, median: int, found: float) -> None:
    first = _simulate(c, 5000 + after, step=50, seed=5, drop=0.05, change=5000,
                      monitor_horizon=1_000_000)
    assert (first[first >= 0] < 5000).sum() == 0
    delay = np.where(first >= 0, first - 5000, np.inf)
    assert np.median(delay) <= median, np.median(delay)
    assert np.isfinite(delay).mean() >= found, np.isfinite(delay).mean()


def test_status_names_the_direction_and_latches() -> None:
    mon = ShiftMonitor(0.95, N_CERT, alpha=0.01, horizon=10_000)
    rng = np.random.default_rng(0)
    s = mon.update(int((rng.random(2000) < 0.95).sum()), 2000)
    assert not s.detected and s.seen == 2000 and abs(s.live_coverage - 0.95) < 0.02
    changed = []
    for _ in range(20):
        s = mon.update(int((rng.random(500) < 0.6).sum()), 500)
        changed.append(s.changed)
    assert s.detected and s.direction == "fewer accepted" and sum(changed) == 1
    for _ in range(20):
        s = mon.update(500, 500)                       # everything accepted again
    assert s.detected and not s.changed
    up = ShiftMonitor(0.7, N_CERT, horizon=10_000)
    for _ in range(10):
        s = up.update(500, 500)
    assert s.detected and s.direction == "more accepted"
    # The statistic is the e-detector over the kept components (recomputed from the bets).
    a = up.accepted[:, None] - up._start_a
    t = (up.seen - up._start_t)[None, :]
    down_bets, up_bets = log_bet(a, t, up.lo, up._down), log_bet(a, t, up.hi, up._up)
    assert up.log_e[0] == pytest.approx(np.logaddexp(
        logsumexp(down_bets), logsumexp(up_bets)) - math.log(2), rel=1e-9)
    assert s.log_threshold == pytest.approx(math.log(2 * (1 + 10_000 / 1000) / 0.01))


@pytest.mark.parametrize(("kw", "match"), [({"coverage": 1.5}, "coverage"),
                                           ({"n_cert": 0}, "size"), ({"alpha": 1.0}, "alpha"),
                                           ({"horizon": 0}, "horizon"), ({"every": 2.5}, "every")])
def test_bad_settings_are_refused(kw: dict, match: str) -> None:
    args = {"coverage": 0.9, "n_cert": 100, **kw}
    with pytest.raises(ShiftConfigError, match=match):
        ShiftMonitor(**args)
