"""Deferral-rate drift: is the live acceptance rate still the one calibration certified?

Calibration measured a coverage ĉ (fraction of certification samples accepted). If the input
distribution is unchanged, the number of accepted samples among the last N is approximately
Binomial(N, ĉ). A two-sided exact binomial test of the sliding window against ĉ flags a shift in
either direction: more deferrals (new, unfamiliar inputs) or fewer (overconfidence on shifted
inputs, which is where the risk guarantee silently breaks).

Caveats (also in docs/monitoring.md): ĉ is itself an estimate from n_cert samples, so a very long run at
a tiny α will eventually flag a true rate that differs from ĉ by its sampling error; live traffic is
often autocorrelated (bursts from one client), which makes the binomial variance too small and the
test anti-conservative; and repeating the test every k samples is multiple testing over time, so the
false-alarm rate per test is α but the chance of *some* false alarm over a day is higher. Hence a
small default α (0.001) and a flag that alerts only when it persists (see deploy/prometheus).
This test stays as a fast signal without a stated overall rate; ``shift.py`` is the monitor whose
probability of any false alarm over a horizon is bounded, ĉ's uncertainty included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from serve.errors import AbstainError


class DriftConfigError(AbstainError):
    """Invalid drift-test settings."""


@dataclass(frozen=True)
class DriftStatus:
    """The detector's state after an update.

    Attributes:
        n: samples in the window (≤ window).
        accepted: accepted samples in the window.
        window_coverage: accepted / n (NaN while the window is empty).
        p_value: two-sided exact binomial p-value of the last test (NaN before the window fills).
        detected: p_value < alpha at the last test.
        changed: ``detected`` flipped in this update.
    """

    n: int
    accepted: int
    window_coverage: float
    p_value: float
    detected: bool
    changed: bool


def two_sided_p_values(n: int, p: float) -> np.ndarray:
    """Exact two-sided binomial p-values for every outcome k = 0..n, shape (n + 1,).

    The same definition as ``scipy.stats.binomtest(k, n, p).pvalue``: the probability, under
    Binomial(n, p), of an outcome no more likely than k (with scipy's relative tolerance 1e-7 for
    ties). Tabulated once per (n, p) in O(n log n), so each later test is one lookup rather than
    the ~0.6 ms binary search binomtest does per call.
    """
    pmf = binom.pmf(np.arange(n + 1), n, p)              # (n + 1,) float64
    order = np.sort(pmf)                                  # ascending: small terms summed first
    cum = np.cumsum(order)
    idx = np.searchsorted(order, pmf * (1.0 + 1e-7), side="right") - 1
    return np.minimum(1.0, cum[idx])


class DriftDetector:
    """Sliding window of the last ``window`` accept/defer outcomes, tested against ``coverage``.

    Updates are vectorised over a batch (O(batch)); the binomial test runs once the window is full
    and then at most once every ``every`` new samples, so its cost is amortised.
    """

    def __init__(self, coverage: float, window: int = 1000, alpha: float = 0.001,
                 every: int | None = None) -> None:
        if not (isinstance(window, int) and window >= 1):
            raise DriftConfigError(f"drift window must be a positive integer; got {window!r}")
        if not (0.0 < alpha < 1.0):
            raise DriftConfigError(f"drift alpha must be in (0, 1); got {alpha!r}")
        if not (0.0 <= coverage <= 1.0):
            raise DriftConfigError(f"certified coverage must be in [0, 1]; got {coverage!r}")
        every = max(1, window // 10) if every is None else every
        if not (isinstance(every, int) and every >= 1):
            raise DriftConfigError(f"drift test interval must be a positive integer; got {every!r}")
        self.coverage = float(coverage)
        self.window = window
        self.alpha = float(alpha)
        self.every = every
        self._buf = np.zeros(window, dtype=bool)    # (window,) ring buffer, True = accepted
        self._pos = 0                               # next write position
        self._count = 0                             # valid entries (≤ window)
        self._accepted = 0                          # valid True entries
        self._since_test = 0
        self._tested = False
        self.p_value = math.nan
        self.detected = False
        self._p_table = two_sided_p_values(window, self.coverage)   # (window + 1,)

    def update(self, accepted: np.ndarray) -> DriftStatus:
        """Append a batch of outcomes (bool, True = accepted) and re-test when due."""
        a = np.asarray(accepted, dtype=bool).ravel()  # (m,)
        m = a.size
        n_win = self.window
        if m >= n_win:
            self._buf[:] = a[-n_win:]
            self._pos, self._count = 0, n_win
            self._accepted = int(self._buf.sum())
        elif m:
            idx = (self._pos + np.arange(m)) % n_win     # (m,) positions overwritten
            old = self._buf[idx]
            if self._count < n_win:
                old = old[idx < self._count]             # only entries that were filled
            self._accepted += int(a.sum()) - int(old.sum())
            self._buf[idx] = a
            self._pos = (self._pos + m) % n_win
            self._count = min(n_win, self._count + m)
        self._since_test += m
        was = self.detected
        if self._count == n_win and (not self._tested or self._since_test >= self.every):
            self.p_value = float(self._p_table[self._accepted])
            self.detected = self.p_value < self.alpha
            self._tested = True
            self._since_test = 0
        return self.status(changed=self.detected != was)

    def status(self, changed: bool = False) -> DriftStatus:
        cov = self._accepted / self._count if self._count else math.nan
        return DriftStatus(n=self._count, accepted=self._accepted, window_coverage=cov,
                           p_value=self.p_value, detected=self.detected, changed=changed)
