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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def live_risk(model: str, version: str, calibration_sha256: str, target_risk: float | None,
              errors: int, labels: int, pending: int, delta: float) -> LiveRisk:
    """Bound and status from counts of labelled audited accepted samples.

    Status: ``alarm`` when the lower end exceeds r* (the guarantee no longer holds), ``ok`` when
    the upper end is ≤ r*, ``insufficient`` while even zero errors could not reach ``ok`` yet,
    ``watch`` otherwise. ``upper_pessimistic`` counts pending audits as errors (labellers who
    skip hard items make the labelled ones look better than traffic is).
    """
    r = target_risk if target_risk is not None and 0 < target_risk < 1 else 0.05
    lo, hi = confidence_sequence(errors, labels, delta, r)
    _, hi_pess = confidence_sequence(errors + pending, labels + pending, delta, r)
    if target_risk is None:
        status = "insufficient"
    elif labels and lo > target_risk:
        status = "alarm"
    elif labels and hi <= target_risk:
        status = "ok"
    elif confidence_sequence(0, labels, delta, r)[1] > target_risk:
        status = "insufficient"
    else:
        status = "watch"
    return LiveRisk(model, version, calibration_sha256, target_risk, delta, labels, errors, pending,
                    errors / labels if labels else None, lo, hi, hi_pess, status)
