"""Live selective risk from audited accepted samples: an anytime-valid confidence sequence.

X_i = 1 when the i-th labelled audited *accepted* sample was wrong; S_t = Σ X_i. The
beta-binomial mixture martingale of Howard, Ramdas, McAuliffe & Sekhon (2021)

    M_t(p) = B(a + S_t, b + t − S_t) / B(a, b) / (p^S_t (1 − p)^(t − S_t))

is a nonnegative martingale with M_0 = 1 under p, so by Ville's inequality
P(∃t: M_t(p_true) ≥ 1/δ) ≤ δ and C_t = {p : M_t(p) < 1/δ} holds at every t at once: it may be
looked at after every label (METHODS §7). log M_t is convex in p with its minimum ≤ 0 at S_t/t,
so C_t is an interval around S_t/t whose ends are found by bisection. The prior
a = c·r*, b = c·(1 − r*) puts the mixture's power near the target r*.

A Clopper–Pearson interval recomputed after every label is *not* valid under these looks;
:func:`fixed_interval` exists so the tests can show it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from scipy.special import betaln

PRIOR_STRENGTH = 20.0
STATUSES = ("insufficient", "ok", "watch", "alarm")


def prior(target: float, strength: float = PRIOR_STRENGTH) -> tuple[float, float]:
    """Beta(a, b) mixing prior with mean r*: a = c·r*, b = c·(1 − r*)."""
    return strength * target, strength * (1.0 - target)


def log_martingale(p: ArrayLike, s: ArrayLike, t: ArrayLike, a: float, b: float) -> np.ndarray:
    """log M_t(p) of the beta-binomial mixture (0 < p < 1); vectorised over p, s and t."""
    p, s, t = np.asarray(p, np.float64), np.asarray(s, np.float64), np.asarray(t, np.float64)
    return betaln(a + s, b + t - s) - betaln(a, b) - s * np.log(p) - (t - s) * np.log1p(-p)


def excludes(p: ArrayLike, s: ArrayLike, t: ArrayLike, delta: float, target: float,
             strength: float = PRIOR_STRENGTH) -> np.ndarray:
    """Whether p lies outside C_t (vectorised): the event whose probability Ville bounds by δ."""
    return log_martingale(p, s, t, *prior(target, strength)) >= math.log(1.0 / delta)


def confidence_sequence(s: int, t: int, delta: float, target: float,
                        strength: float = PRIOR_STRENGTH) -> tuple[float, float]:
    """(lower, upper) of C_t after ``s`` errors in ``t`` labels, valid over all t at level δ."""
    if t == 0:
        return 0.0, 1.0
    if not 0 <= s <= t:
        raise ValueError(f"errors {s} must be between 0 and labels {t}")
    a, b = prior(target, strength)
    level = math.log(1.0 / delta)
    eps = 1e-12
    centre = min(max(s / t, eps), 1.0 - eps)

    def outside(p: float) -> bool:
        return float(log_martingale(p, s, t, a, b)) >= level

    def edge(inside: float, out: float) -> float:
        for _ in range(60):
            mid = 0.5 * (inside + out)
            inside, out = (inside, mid) if outside(mid) else (mid, out)
        return inside

    lower = 0.0 if not outside(eps) else edge(centre, eps)
    upper = 1.0 if not outside(1.0 - eps) else edge(centre, 1.0 - eps)
    return lower, upper


def fixed_interval(s: int, t: int, delta: float) -> tuple[float, float]:
    """Two-sided Clopper–Pearson interval at level δ: valid for ONE look, not for many."""
    if t == 0:
        return 0.0, 1.0
    lo = 0.0 if s == 0 else float(stats.beta.ppf(delta / 2, s, t - s + 1))
    hi = 1.0 if s == t else float(stats.beta.ppf(1 - delta / 2, s + 1, t - s))
    return lo, hi


def labels_to_reach(s: float, t: float, rate: float, delta: float, target: float, goal: str,
                    strength: float = PRIOR_STRENGTH) -> int | None:
    """How many more labels would take the sequence at (S, T) = (``s``, ``t``) to ``goal`` ("ok":
    upper ≤ r*; "alarm": lower > r*) if they were wrong at ``rate`` (the labelled rate so far).

    A projection, not a promise: None when the goal is out of reach at that rate (ok needs a rate
    below r*, an alarm one above it) or beyond 10⁷ labels; 0 when it already holds.
    """
    if (goal == "ok" and rate >= target) or (goal == "alarm" and rate <= target):
        return None
    a, b = prior(target, strength)
    level = math.log(1.0 / delta)
    p = min(max(target, 1e-12), 1.0 - 1e-12)

    def reached(m: int) -> bool:     # C excludes r* from the goal's side after m more labels
        ss, tt = s + rate * m, t + m
        centre = ss / tt if tt else 0.0
        side = centre < p if goal == "ok" else centre > p
        return tt > 0 and side and float(log_martingale(p, ss, tt, a, b)) >= level

    if reached(0):
        return 0
    hi = 1
    while not reached(hi):
        hi *= 2
        if hi > 10**7:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reached(mid) else (mid, hi)
    return hi


@dataclass(frozen=True)
class LiveRisk:
    """The live risk of one (model, version, calibration) epoch."""

    model: str
    version: str
    calibration_sha256: str
    target_risk: float | None
    delta: float
    labels: int
    errors: int
    pending_audits: int
    risk: float | None
    lower: float
    upper: float
    upper_pessimistic: float
    status: str
    expired_audits: int = 0
    status_basis: str = "labelled"
    labels_to_ok: int | None = None
    labels_to_alarm: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _status(target_risk: float | None, s: int, t: int, delta: float, r: float) -> tuple[str, float, float]:
    lo, hi = confidence_sequence(s, t, delta, r)
    if target_risk is None:
        return "insufficient", lo, hi
    if t and lo > target_risk:
        return "alarm", lo, hi
    if t and hi <= target_risk:
        return "ok", lo, hi
    if confidence_sequence(0, t, delta, r)[1] > target_risk:
        return "insufficient", lo, hi
    return "watch", lo, hi


def live_risk(model: str, version: str, calibration_sha256: str, target_risk: float | None,
              errors: int, labels: int, pending: int, delta: float, *, expired: int = 0
              ) -> LiveRisk:
    """Bounds and status from counts of audited accepted samples (METHODS §7).

    ``lower``/``upper`` use the labelled audits only; ``upper_pessimistic`` counts every
    unlabelled audit (``pending`` within the review time-to-live, ``expired`` past it) as an
    error, a bound that holds whatever the missing labels are (labellers who skip hard items make
    the labelled ones look better than traffic is). The status is the labelled sequence's while no
    audit has expired; once some have, it is that of the sequence counting the expired ones as
    errors (they stay counted as missing): ``alarm`` when the lower end exceeds r* (the guarantee
    no longer holds), ``ok`` when the upper end is ≤ r*, ``insufficient`` while even zero further
    errors could not reach ``ok``, ``watch`` otherwise. ``labels_to_ok``/``labels_to_alarm``
    project how many more labels would reach either at the error rate seen so far.
    """
    r = target_risk if target_risk is not None and 0 < target_risk < 1 else 0.05
    s, t = errors + expired, labels + expired          # the status's basis
    status, lo_s, hi_s = _status(target_risk, s, t, delta, r)
    lo, hi = confidence_sequence(errors, labels, delta, r) if expired else (lo_s, hi_s)
    _, hi_pess = confidence_sequence(s + pending, t + pending, delta, r)
    to_ok = to_alarm = None
    if target_risk is not None:
        rate = errors / labels if labels else 0.0
        to_ok = labels_to_reach(s, t, rate, delta, target_risk, "ok")
        to_alarm = labels_to_reach(s, t, rate, delta, target_risk, "alarm")
    basis = f"labelled + {expired} expired audits counted as errors" if expired else "labelled"
    return LiveRisk(model, version, calibration_sha256, target_risk, delta, labels, errors, pending,
                    errors / labels if labels else None, lo, hi, hi_pess, status, expired, basis,
                    to_ok, to_alarm)
