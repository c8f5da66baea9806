"""An anytime-valid label-free shift monitor: is the live acceptance rate still the certified one?

Calibration accepted K of n certification samples (ĉ = K/n). With the traffic unchanged, the
certification outcomes and the live accept/defer outcomes are i.i.d. Bernoulli(c) for one
*unknown* c: ĉ is an estimate, and the monitor must not treat it as exact (the sliding-window
binomial test of ``drift.py`` does, and flags falsely every few tens of thousands of predictions).

Each *component* j, started after j·B live predictions, is a universal-inference e-value
(Wasserman, Ramdas & Balakrishnan 2020) for "certification and live outcomes since j share one
rate":

    e_j,t = m(K; n) · m(A_j; t_j) / max_c c^(K + A_j) (1 − c)^(n − K + t_j − A_j)

where A_j of t_j live predictions since the start were accepted and m is the Beta(½, ½)
(Krichevsky–Trofimov) marginal likelihood. For the true c the denominator is at least the
likelihood at c, so e_j,t ≤ E_cert · M_j,t, with E_cert = m(K; n) / L(c; cert) (expectation 1)
and M_j,t a test martingale that starts at 1 at time j. The monitor's statistic is the
Shiryaev–Roberts-type e-detector (Shin, Ramdas & Rinaldo 2022) over started components,

    D_t = Σ_{j ∈ S_t} e_j,t,

summed over any subset S_t of the starts (the epoch's start and the most recent ``keep``): the
sum over every start is, given the certification data, E_cert times a nonnegative submartingale
of mean ≤ 1 + t/B, so by Doob's inequality

    P(∃ t ≤ N : D_t ≥ C) ≤ (1 + N/B) / C.

The threshold C = (1 + N/B)/α therefore makes the probability of *any* false alarm within the
horizon N (default 10⁶ predictions) at most α, with ĉ's own sampling error included; beyond N the
bound grows linearly. Components restarted every B predictions let a shift after a long calm
period be found in a few thousand predictions rather than diluted by everything before it.
Caveats: the guarantee assumes i.i.d. traffic; bursts of correlated requests make real false
alarms more frequent (docs/monitoring.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import betaln, logsumexp, xlogy

from serve.errors import AbstainError

KT = 0.5   # Beta(½, ½) mixing prior of the Krichevsky–Trofimov estimator


class ShiftConfigError(AbstainError):
    """Invalid shift-monitor settings."""


def log_mixture(a: ArrayLike, t: ArrayLike) -> np.ndarray:
    """log m(a; t): the KT marginal likelihood of one sequence with ``a`` ones in ``t``."""
    a, t = np.asarray(a, np.float64), np.asarray(t, np.float64)
    return betaln(KT + a, KT + t - a) - betaln(KT, KT)


def log_max_likelihood(a: ArrayLike, t: ArrayLike) -> np.ndarray:
    """log max_c c^a (1 − c)^(t − a), with 0 log 0 = 0."""
    a, t = np.asarray(a, np.float64), np.asarray(t, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(t > 0, a / np.maximum(t, 1.0), 0.5)
    return xlogy(a, p) + xlogy(t - a, 1.0 - p)


def log_e_value(k: int, n: int, a: ArrayLike, t: ArrayLike) -> np.ndarray:
    """log e of "the live rate over (a, t) equals the certification rate over (k, n)"."""
    a, t = np.asarray(a, np.float64), np.asarray(t, np.float64)
    return (log_mixture(k, n) + log_mixture(a, t) - log_max_likelihood(k + a, n + t))


@dataclass(frozen=True)
class ShiftStatus:
    """The monitor's state after an update (of stream 0 when it runs several).

    Attributes:
        seen: live predictions since the epoch started.
        live_coverage: accepted / seen since the start (NaN before any).
        log_e: log D_t, the e-detector (alarm at ≥ ``log_threshold``).
        log_threshold: log C = log((1 + horizon/every) / alpha).
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
    """

    def __init__(self, coverage: float | ArrayLike, n_cert: int, alpha: float = 0.01,
                 horizon: int = 1_000_000, every: int = 250, keep: int = 40,
                 streams: int = 1) -> None:
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
        self.log_threshold = math.log((1.0 + horizon / every) / alpha)
        self.seen = 0
        self.accepted = np.zeros(streams, np.int64)           # (S,) live accepted since start
        self._start_t = np.zeros(1, np.int64)                  # (J,) seen at each start
        self._start_a = np.zeros((streams, 1), np.int64)       # (S, J) accepted at each start
        self._blocks = 0
        self.log_e = np.full(streams, -math.inf)
        self.detected = np.zeros(streams, bool)
        self._lead_rate = np.full(streams, math.nan)           # live rate of the largest e_j

    def update(self, accepted: ArrayLike, n: int) -> ShiftStatus:
        """Add ``n`` predictions of which ``accepted`` (one count per stream) were accepted."""
        acc = np.broadcast_to(np.asarray(accepted, np.int64), self.accepted.shape)
        if n <= 0:
            return self.status()
        self.seen += int(n)
        self.accepted = self.accepted + acc
        a = self.accepted[:, None] - self._start_a                  # (S, J)
        t = (self.seen - self._start_t)[None, :]                     # (1, J)
        comp = log_e_value(self.k[:, None], self.n, a, t)                    # (S, J)
        self.log_e = logsumexp(comp, axis=1)
        lead = comp.argmax(axis=1)[:, None]                          # (S, 1) the largest e_j
        self._lead_rate = (np.take_along_axis(a, lead, 1)[:, 0]
                           / np.maximum(np.take_along_axis(np.broadcast_to(t, a.shape), lead, 1)[:, 0], 1))
        was = self.detected.copy()
        self.detected |= self.log_e >= self.log_threshold
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
            below = self._lead_rate[0] < self.k[0] / self.n
            direction = "fewer accepted" if below else "more accepted"
        return ShiftStatus(seen, cov, float(self.log_e[0]), self.log_threshold,
                           bool(self.detected[0]), changed, direction)
