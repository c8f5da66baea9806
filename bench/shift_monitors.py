"""Simulation: the two monitors' false-alarm rates and detection delays (docs/METHODS.md §9).

Label-free shift monitor (serve/monitoring/shift.py): each repetition draws its own ĉ from
n_cert = 2,100 certification samples, then streams stationary predictions (accepted with the
true rate c) to the horizon, updating per batch as a server does; a false alarm is any alarm.
Then a 5-point coverage drop after 5,000 calm predictions: the delay to the alarm.

Risk-change detector (serve/feedback/change.py): false alarms at a stationary error rate equal
to r*; the delay after 2,000 calm labels at 0.5 r* for jumps to 1.5, 2 and 3 r*, beside the
live-risk confidence sequence's (serve/feedback/risk.py) delay on the same streams.

    PYTHONPATH=. .venv/bin/python bench/shift_monitors.py [--reps 500] [--horizon 1000000]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
from scipy.stats import beta
from tqdm import tqdm

from serve.feedback.change import ARL, log_statistic
from serve.feedback.risk import excludes
from serve.monitoring.shift import STEPS, ShiftMonitor

N_CERT = 2100


def cp(k: int, n: int) -> str:
    """k/n with its two-sided 95% Clopper–Pearson interval."""
    lo = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    hi = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    return f"{k}/{n} = {k / n:.4f} [{lo:.4f}, {hi:.4f}]"


def shift_run(c: float, reps: int, horizon: int, step: int, seed: int, drop: float = 0.0,
              change: int = 0, monitor_horizon: int = 1_000_000, alpha: float = 0.01,
              desc: str = "") -> np.ndarray:
    """First alarm (in predictions) per repetition, −1 when none."""
    rng = np.random.default_rng(seed)
    mon = ShiftMonitor(rng.binomial(N_CERT, c, reps) / N_CERT, N_CERT, alpha=alpha,
                       horizon=monitor_horizon, streams=reps)
    first = np.full(reps, -1)
    for i in tqdm(range(horizon // step), desc=desc, leave=False, mininterval=2):
        p = c - drop if i * step >= change else c
        mon.update(rng.binomial(step, p, reps), step)
        first[mon.detected & (first < 0)] = (i + 1) * step
    return first


def delays(first: np.ndarray, change: int) -> str:
    d = np.where(first >= change, first - change, np.inf)
    found = np.isfinite(d)
    if not found.any():
        return "none found"
    with np.errstate(invalid="ignore"):
        q50, q90 = np.percentile(d, [50, 90])
    show = lambda v: f"{v:,.0f}" if math.isfinite(v) else "not found"  # noqa: E731
    return f"median {show(q50)}, 90% {show(q90)}; found {found.sum()}/{d.size}"


def cs_first_alarm(x: np.ndarray, target: float, delta: float = 0.05) -> np.ndarray:
    """Index of the first label at which the live-risk sequence's lower end exceeds r*."""
    s = np.cumsum(x, axis=1)
    t = np.arange(1, x.shape[1] + 1)[None, :]
    hit = excludes(target, s, t, delta, target) & (s / t > target)
    return np.where(hit.any(axis=1), hit.argmax(axis=1), 10**9)


def cost(evaluations: int = 5000) -> int:
    """Microseconds per update of one server's shift monitor once all its components run."""
    mon = ShiftMonitor(0.95, N_CERT)
    for _ in range(60):
        mon.update(1216, 1280)
    t0 = time.perf_counter()
    for _ in range(evaluations):
        mon.update(61, 64)
    us = (time.perf_counter() - t0) / evaluations * 1e6
    print(f"shift monitor: {us:.0f} µs per update with evaluation "
          f"({mon._start_t.size} components × {2 * len(STEPS)} bets; mean of {evaluations:,})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=500)
    ap.add_argument("--horizon", type=int, default=1_000_000)
    ap.add_argument("--step", type=int, default=100, help="predictions per update (a batch)")
    ap.add_argument("--cost-only", action="store_true",
                    help="only time one evaluation of a server's monitor (41 components)")
    a = ap.parse_args(argv)
    if a.cost_only:
        return cost()
    if a.reps < 1 or a.horizon < a.step or a.step < 1:
        ap.error("--reps ≥ 1 and --horizon ≥ --step ≥ 1")
    t0 = time.perf_counter()
    print(f"## Label-free shift monitor (alpha = 0.01 over 10^6; n_cert = {N_CERT}; "
          f"{a.reps} repetitions, updates of {a.step})\n")
    for c in (0.95, 0.8):
        first = shift_run(c, a.reps, a.horizon, a.step, seed=int(c * 1000),
                          desc=f"null c={c}")
        print(f"- c = {c}: stationary, any alarm within {a.horizon:,} predictions: "
              f"{cp(int((first >= 0).sum()), a.reps)}")
        change, after = 5000, 50_000
        first = shift_run(c, a.reps, change + after, 50, seed=int(c * 1000) + 1, drop=0.05,
                          change=change, desc=f"drop c={c}")
        early = int(((first >= 0) & (first < change)).sum())
        print(f"- c = {c} → {c - 0.05:.2f} after {change:,} calm predictions: delay "
              f"{delays(first, change)} within {after:,} (alarms before the drop: {early})")
    r = 0.02
    print(f"\n## Risk-change detector (A = {ARL:,.0f}; r* = {r}; {a.reps * 2} repetitions)\n")
    rng = np.random.default_rng(7)
    reps = 2 * a.reps
    for n_labels in (5000, 20_000):
        x = (rng.random((reps, n_labels)) < r).astype(np.float64)
        fired = (log_statistic(x, r) >= math.log(ARL)).any(axis=1)
        print(f"- stationary at p = r*: any alarm within {n_labels:,} labels "
              f"{cp(int(fired.sum()), reps)} (bound N/A = {n_labels / ARL:.2f})")
    for mult in (3.0, 2.0, 1.5):
        calm = rng.random((reps, 2000)) < 0.5 * r
        jump = rng.random((reps, 20_000)) < mult * r
        x = np.concatenate([calm, jump], axis=1).astype(np.float64)
        hit = log_statistic(x, r) >= math.log(ARL)
        first = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, -1)
        cs = cs_first_alarm(x, r)
        cs = np.where(cs < 10**9, cs + 1, -1)
        print(f"- 2,000 labels at 0.5 r*, then {mult:g} r*: detector {delays(first, 2000)}; "
              f"live-risk sequence {delays(cs, 2000)} (within 20,000)")
    print(f"\n(wall time {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
