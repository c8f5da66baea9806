"""An anytime-valid label-free shift monitor: is the live acceptance rate still the certified one?

Calibration accepted K of n certification samples (ĉ = K/n). With the traffic unchanged, the live
accept/defer outcomes are i.i.d. Bernoulli(c) for the *unknown* c that ĉ estimates: the monitor
must not treat ĉ as exact (the sliding-window binomial test of ``drift.py`` does, and flags
falsely every few tens of thousands of predictions). The level α is split in two:

1. **ĉ's uncertainty**: the two-sided Clopper–Pearson interval [lo, hi] for c from K of n at
   level α/2 misses c with probability ≤ α/2 (over the certification draw).
2. **The live stream**, given c ∈ [lo, hi]: component j, started after j·B live predictions with
   A_j accepted of t_j since, bets on "the rate is below lo" and "above hi":

       e↓_j = mean_q∈Q↓ (q/lo)^A_j ((1−q)/(1−lo))^(t_j−A_j),   Q↓ = {lo − s : s ∈ STEPS, > 0},

   and e↑_j likewise with hi and Q↑ = {hi + s}. For q < lo each factor has expectation ≤ 1 under
   any rate p ≥ lo (and for q > hi under any p ≤ hi), so e↓_j and e↑_j are nonnegative
   supermartingales from 1 at time j whenever c ∈ [lo, hi]. The statistic is the
   Shiryaev–Roberts-type e-detector (Shin, Ramdas & Rinaldo 2022)

       D_t = ½ Σ_{j ∈ S_t} (e↓_j + e↑_j)

   over the epoch's first component and the ``keep`` most recent (any subset is allowed: with
   every start, D_t plus the starts still to come before N is a nonnegative supermartingale from
   1 + N/B). By Ville's inequality P(∃ t ≤ N : D_t ≥ C) ≤ (1 + N/B)/C, so C = 2(1 + N/B)/α.

Together: the probability of *any* false alarm within the horizon N (default 10⁶ predictions) is
at most α/2 + α/2 = α, ĉ's sampling error included; beyond N the bound grows linearly. Components
restarted every B predictions let a shift after a long calm period be found as fast as one at the
start. Caveat: the guarantee assumes i.i.d. traffic; bursts of correlated requests make real
false alarms more frequent (docs/monitoring.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import logsumexp, xlogy
from scipy.stats import beta

from serve.errors import AbstainError

STEPS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)   # alternatives: lo − step below, hi + step above


class ShiftConfigError(AbstainError):
    """Invalid shift-monitor settings."""


def coverage_interval(k: ArrayLike, n: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Clopper–Pearson interval for c from k of n: misses c with probability ≤ level."""
    k = np.asarray(k, np.float64)
    with np.errstate(invalid="ignore"):
        lo = np.where(k > 0, beta.ppf(level / 2, np.maximum(k, 1.0), n - k + 1), 0.0)
        hi = np.where(k < n, beta.ppf(1 - level / 2, k + 1, np.maximum(n - k, 1.0)), 1.0)
    return lo, hi


def alternatives(lo: ArrayLike, hi: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The rates bet on, (..., G) below ``lo`` and above ``hi`` (NaN where off (0, 1))."""
    steps = np.asarray(STEPS)
    down = np.asarray(lo, np.float64)[..., None] - steps
    up = np.asarray(hi, np.float64)[..., None] + steps
    return np.where(down > 0, down, np.nan), np.where(up < 1, up, np.nan)


def log_bet(a: ArrayLike, t: ArrayLike, p0: ArrayLike, q: ArrayLike) -> np.ndarray:
    """log of the mean over q (NaN = absent) of (q/p0)^a ((1−q)/(1−p0))^(t−a).

    Shapes: ``a`` (S, J), ``t`` (S, J) or (1, J), ``p0`` (S,), ``q`` (S, G) → (S, J); −inf when
    no q is present.
    """
    a, t = np.asarray(a, np.float64)[..., None], np.asarray(t, np.float64)[..., None]
    p0 = np.asarray(p0, np.float64)[:, None, None]
    q = np.asarray(q, np.float64)[:, None, :]
    present = ~np.isnan(q)
    with np.errstate(invalid="ignore", divide="ignore"):
        llr = xlogy(a, q / p0) + xlogy(t - a, (1.0 - q) / (1.0 - p0))
    llr = np.where(present, llr, -np.inf)
    g = present.sum(axis=-1)
    with np.errstate(divide="ignore"):
        return logsumexp(llr, axis=-1) - np.log(np.maximum(g, 1))


@dataclass(frozen=True)
class ShiftStatus:
    """The monitor's state after an update (of stream 0 when it runs several).

    Attributes:
        seen: live predictions since the epoch started.
        live_coverage: accepted / seen since the start (NaN before any).
        log_e: log D_t, the e-detector (alarm at ≥ ``log_threshold``).
        log_threshold: log C = log(2 (1 + horizon/every) / alpha).
        detected: D reached C at some update of this epoch (it stays set: a new calibration
            starts a new monitor).
        changed: ``detected`` became true in this update.
        direction: "fewer accepted" or "more accepted" than certified, for the component that
            carries most of D ("" before an alarm).
    """

    seen: int
    live_coverage: float
    log_e: float
    log_threshold: float
    detected: bool
    changed: bool
    direction: str


class ShiftMonitor:
    """The e-detector of one epoch, over ``streams`` independent streams (1 for a server).

    Args:
        coverage: ĉ, the certification split's acceptance rate (one per stream, or one for all).
        n_cert: n, the certification split's size (K = round(ĉ·n)).
        alpha: the probability of any false alarm within ``horizon`` predictions.
        horizon: N, the number of stationary predictions ``alpha`` covers.
        every: B, predictions between component starts.
        keep: restarted components kept besides the epoch's first (older ones are dropped; the
            bound holds for any subset).
        streams: independent streams updated side by side (simulations).
        min_interval_s: evaluate the statistic at most this often (the counts are always
            kept; checking at fewer times only delays an alarm, Ville's bound covers any times).
    """

    def __init__(self, coverage: float | ArrayLike, n_cert: int, alpha: float = 0.01,
                 horizon: int = 1_000_000, every: int = 1000, keep: int = 40,
                 streams: int = 1, min_interval_s: float = 0.0) -> None:
        cov = np.asarray(coverage, np.float64)
        if not (cov.size and np.all((cov >= 0.0) & (cov <= 1.0))):
            raise ShiftConfigError(f"certified coverage must be in [0, 1]; got {coverage!r}")
        if not (isinstance(n_cert, int) and n_cert >= 1):
            raise ShiftConfigError(f"the certification split's size must be a positive integer; "
                                   f"got {n_cert!r}")
        if not 0.0 < alpha < 1.0:
            raise ShiftConfigError(f"shift alpha must be in (0, 1); got {alpha!r}")
        for name, v in (("horizon", horizon), ("every", every), ("keep", keep),
                        ("streams", streams)):
            if not (isinstance(v, int) and v >= 1):
                raise ShiftConfigError(f"shift {name} must be a positive integer; got {v!r}")
        self.k = np.broadcast_to(np.round(cov * n_cert), (streams,)).astype(np.float64)  # (S,)
        self.n = n_cert
        self.alpha, self.horizon, self.every, self.keep = float(alpha), horizon, every, keep
        self.lo, self.hi = coverage_interval(self.k, n_cert, alpha / 2)        # (S,) each
        self._down, self._up = alternatives(self.lo, self.hi)                    # (S, G) each
        # The bets as per-outcome log factors, both sides side by side: (S, 2G) each.
        q = np.concatenate([self._down, self._up], axis=1)
        p0 = np.concatenate([np.repeat(self.lo[:, None], len(STEPS), 1),
                             np.repeat(self.hi[:, None], len(STEPS), 1)], axis=1)
        present = ~np.isnan(q)
        with np.errstate(invalid="ignore", divide="ignore"):
            self._l1 = np.where(present, np.log(q / p0), 0.0)
            self._l0 = np.where(present, np.log((1.0 - q) / (1.0 - p0)), 0.0)
            g = np.stack([present[:, :len(STEPS)].sum(1), present[:, len(STEPS):].sum(1)], 1)
            w = np.log(0.5) - np.log(np.maximum(g, 1))                             # (S, 2)
        self._logw = np.where(present, np.repeat(w, len(STEPS), axis=1), -np.inf)  # (S, 2G)
        self.min_interval_s = float(min_interval_s)
        self._evaluated_at = -math.inf
        self.log_threshold = math.log(2.0 * (1.0 + horizon / every) / alpha)
        self.seen = 0
        self.accepted = np.zeros(streams, np.int64)           # (S,) live accepted since start
        self._start_t = np.zeros(1, np.int64)                  # (J,) seen at each start
        self._start_a = np.zeros((streams, 1), np.int64)       # (S, J) accepted at each start
        self._blocks = 0
        self.log_e = np.full(streams, -math.inf)
        self.detected = np.zeros(streams, bool)
        self._fewer = np.zeros(streams, bool)

    def update(self, accepted: ArrayLike, n: int) -> ShiftStatus:
        """Add ``n`` predictions of which ``accepted`` (one count per stream) were accepted."""
        acc = np.broadcast_to(np.asarray(accepted, np.int64), self.accepted.shape)
        if n <= 0:
            return self.status()
        self.seen += int(n)
        self.accepted = self.accepted + acc
        was = self.detected.copy()
        now = time.monotonic() if self.min_interval_s else 0.0
        if now - self._evaluated_at >= self.min_interval_s:
            self._evaluated_at = now
            a = (self.accepted[:, None] - self._start_a)[..., None]            # (S, J, 1)
            t = (self.seen - self._start_t)[None, :, None]                      # (1, J, 1)
            bets = (a * self._l1[:, None, :] + (t - a) * self._l0[:, None, :]
                    + self._logw[:, None, :])                                    # (S, J, 2G)
            self.log_e = logsumexp(bets, axis=(1, 2))
            self.detected |= self.log_e >= self.log_threshold
            half = len(STEPS)                                            # which side led, then
            fewer = bets[..., :half].max(axis=(1, 2)) >= bets[..., half:].max(axis=(1, 2))
            self._fewer = np.where(self.detected & ~was, fewer, self._fewer)
        blocks = self.seen // self.every
        if blocks > self._blocks:                                    # start a component now
            self._blocks = blocks
            self._start_t = np.append(self._start_t, self.seen)
            self._start_a = np.concatenate([self._start_a, self.accepted[:, None]], axis=1)
            if self._start_t.size > self.keep + 1:                   # keep the first + `keep`
                self._start_t = np.delete(self._start_t, 1)
                self._start_a = np.delete(self._start_a, 1, axis=1)
        return self.status(bool(self.detected[0] and not was[0]))

    def status(self, changed: bool = False) -> ShiftStatus:
        seen = self.seen
        cov = float(self.accepted[0]) / seen if seen else math.nan
        direction = ""
        if self.detected[0]:
            direction = "fewer accepted" if self._fewer[0] else "more accepted"
        return ShiftStatus(seen, cov, float(self.log_e[0]), self.log_threshold,
                           bool(self.detected[0]), changed, direction)
