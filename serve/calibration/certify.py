"""Certification-split threshold choice with a finite-sample guarantee (METHODS.md §4).

Goal: a threshold λ with P(selective risk at λ ≤ r*) ≥ 1 − δ, accepting iff ``score ≥ λ``.

* **LTT** (Learn-then-Test, Angelopoulos et al. 2021): thresholds from strict to permissive (one
  per distinct certification score), null H_λ: SR(λ) > r*, exact binomial p-value
  ``BinomCDF(k; n, r*)`` on integer counts, fixed-sequence testing (certify while p ≤ δ, stop at
  the first failure), deploy the most permissive certified λ. The sequence starts only where at
  least ``max(30, ⌈log δ / log(1 − r*)⌉)`` samples are accepted: below that not even zero errors
  can be certified, and a sequence starting there would stop at once.
* **SGR** (Geifman & El-Yaniv 2017): binary search for ⌈log₂ m⌉ steps, each tested with an exact
  Clopper–Pearson upper bound at δ/⌈log₂ m⌉; deploy the last safe threshold.
* **planned LTT**: grid, start and direction fixed on the tuning split, see
  serve.calibration.plan.
* **the default** when a tuning split exists: serve.calibration.union (the planned LTT ∪ the
  floored fixed sequence on all samples).
* **coverage**: the strictest threshold reaching a target coverage, with the (1 − δ)
  Clopper–Pearson upper bound of its risk (a bound reported, not a risk target certified).

What is certified is "selective risk ≤ r* with probability ≥ 1 − δ". ``risk_upper_bound`` is a
Clopper–Pearson bound computed *after* the threshold was selected on the same data: it is
post-selection and indicative only (in simulation the true risk exceeds it more often than δ).

Every function works on the tie-grouped risk–coverage curve of serve.selective_metrics, so tied scores
are accepted or rejected together, and costs O(n log n).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from serve.calibration import refusal
from serve.calibration.binomial import binomial_p_values, clopper_pearson_upper
from serve.calibration.plan import LttPlan, run_plan
from serve.errors import AbstainError
from serve.selective_metrics import RiskCoverageCurve, risk_coverage_curve

CertMethod = Literal["ltt", "sgr", "coverage"]
MIN_FLOOR = 30
_FST = "fixed sequence from the floor, strict → permissive"


class CertifyError(AbstainError, ValueError):
    """Bad certification parameters."""


@dataclass(frozen=True)
class Certificate:
    """The outcome of certification on ``n`` certification samples.

    ``threshold`` is None when nothing could be certified; then ``needed`` estimates how many
    certification samples would be needed and ``detail`` says why. ``risk_upper_bound`` is the
    post-selection (indicative) Clopper–Pearson bound at the deployed threshold, not the
    guarantee. ``procedure`` names the test that certified and ``start`` where it started.
    """

    method: CertMethod
    threshold: float | None
    n: int
    n_accepted: int
    n_errors: int
    risk_upper_bound: float
    target_risk: float
    delta: float
    min_accepted: int = 0
    needed: int | None = None
    detail: str = ""
    procedure: str = ""
    start: str = ""
    why: str = ""
    refusal: str = ""

    @property
    def coverage(self) -> float:
        return self.n_accepted / self.n

    @property
    def risk(self) -> float:
        return self.n_errors / self.n_accepted if self.n_accepted else 0.0

    @property
    def certified(self) -> bool:
        return self.threshold is not None


def check_risk_and_delta(target_risk: float, delta: float) -> None:
    """Refuse r* or δ outside (0, 1) with the flag's name (every method checks first)."""
    if not (isinstance(target_risk, (int, float)) and 0.0 < target_risk < 1.0):
        raise CertifyError(f"--target-risk must be strictly between 0 and 1; got {target_risk!r}")
    if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
        raise CertifyError(f"--delta must be strictly between 0 and 1; got {delta!r}")


def zero_error_minimum(target_risk: float, delta: float) -> int:
    """Accepted samples needed to certify SR ≤ r* at level δ with zero errors: ⌈log δ / log(1−r*)⌉."""
    check_risk_and_delta(target_risk, delta)
    return math.ceil(math.log(delta) / math.log1p(-target_risk) - 1e-12)


def min_accepted(target_risk: float, delta: float) -> int:
    """LTT's floor on the accepted count where the fixed sequence starts: max(30, zero-error minimum)."""
    return max(MIN_FLOOR, zero_error_minimum(target_risk, delta))


def samples_needed(curve: RiskCoverageCurve, target_risk: float, delta: float) -> int | None:
    """Estimate the certification-set size at which this risk profile would certify something
    (serve.calibration.refusal.samples_needed, never below the zero-error minimum)."""
    return refusal.samples_needed(curve, target_risk, delta, zero_error_minimum(target_risk, delta))


def _not_certified(method: CertMethod, curve: RiskCoverageCurve, target_risk: float, delta: float,
                   floor: int, why: str, kind: str, procedure: str = "", start: str = ""
                   ) -> Certificate:
    needed = samples_needed(curve, target_risk, delta)
    zero = zero_error_minimum(target_risk, delta)
    hint = refusal.hint(curve, target_risk, delta, zero, kind, needed)
    return Certificate(method=method, threshold=None, n=curve.n, n_accepted=0, n_errors=0,
                       risk_upper_bound=0.0, target_risk=target_risk, delta=delta,
                       min_accepted=floor, needed=needed, detail=f"{why}: {hint}",
                       procedure=procedure, start=start, why=why, refusal=kind)


def _sequence_refusal(method: CertMethod, c: RiskCoverageCurve, n_acc: np.ndarray,
                      n_err: np.ndarray, target_risk: float, delta: float, floor: int, what: str,
                      tested: str, procedure: str, start: str) -> Certificate:
    """A fixed sequence whose first test (counts ``n_acc[0]``, ``n_err[0]``) failed."""
    if (n_err > target_risk * n_acc).all():
        why, kind = refusal.risk_above(n_acc, n_err, c.n, target_risk, tested, c), refusal.RISK_ABOVE
    else:
        p = float(binomial_p_values(n_err[0], n_acc[0], target_risk))
        zero = zero_error_minimum(target_risk, delta)
        if n_acc[0] < zero:
            what += (f" accepted only {int(n_acc[0])}, fewer than {zero}, the count that passes "
                     "even with zero errors, so it")
        why = refusal.first_failed(what, int(n_acc[0]), int(n_err[0]), c.n, p, delta, target_risk,
                                   c)
        kind = refusal.FIRST_FAILED
    return _not_certified(method, c, target_risk, delta, floor, why, kind, procedure, start)


def certify_planned(scores: np.ndarray, errors: np.ndarray, plan: LttPlan, target_risk: float,
                    delta: float, curve: RiskCoverageCurve | None = None) -> Certificate:
    """LTT on a plan fixed by the tuning split (serve.calibration.plan); the default procedure."""
    check_risk_and_delta(target_risk, delta)
    c = curve or risk_coverage_curve(scores, errors)
    procedure = "planned fixed sequence (grid, start and direction from the tuning split)"
    start = plan.describe()
    zero = zero_error_minimum(target_risk, delta)
    if c.n < zero:
        return _not_certified("ltt", c, target_risk, delta, 0,
                              refusal.too_few(c.n, "certification samples", target_risk, delta,
                                              zero), refusal.TOO_FEW, procedure, start)
    g, n_acc, n_err, certified = run_plan(plan, scores, errors, target_risk)
    if g < 0:
        s0 = plan.starts[0]
        return _sequence_refusal(
            "ltt", c, n_acc[s0:], n_err[s0:], target_risk, delta, 0,
            f"the planned start (tuning coverage {plan.tune_coverage[s0]:.4f}, predicted pass "
            f"probability {plan.pass_prob[s0]:.2f})",
            "the planned grid from its start toward permissive", procedure, start)
    k, n = int(n_err[g]), int(n_acc[g])
    return Certificate(method="ltt", threshold=float(plan.thresholds[g]), n=c.n, n_accepted=n,
                       n_errors=k, risk_upper_bound=float(clopper_pearson_upper(k, n, delta)),
                       target_risk=target_risk, delta=delta,
                       detail=f"planned sequence certified {' + '.join(map(str, certified))} of "
                              f"{len(plan.thresholds)} thresholds",
                       procedure=procedure, start=start)


def certify_ltt(scores: np.ndarray, errors: np.ndarray, target_risk: float, delta: float,
                curve: RiskCoverageCurve | None = None) -> Certificate:
    """Learn-then-Test with fixed-sequence testing from strict to permissive (see module doc).

    ``risk_upper_bound`` is the (1 − δ) Clopper–Pearson bound at the deployed threshold (≤ r* by
    duality with the binomial test), computed after selection: indicative, not the guarantee.
    """
    check_risk_and_delta(target_risk, delta)
    c = curve or risk_coverage_curve(scores, errors)
    floor = min_accepted(target_risk, delta)
    start = int(np.searchsorted(c.n_accepted, floor))     # first point accepting ≥ floor samples
    if start >= len(c.n_accepted):
        zero = zero_error_minimum(target_risk, delta)
        why = (refusal.too_few(c.n, "samples", target_risk, delta, zero) if c.n < zero
               else f"not enough samples: {c.n}, fewer than the sequence's floor of {floor}")
        return _not_certified("ltt", c, target_risk, delta, floor, why, refusal.TOO_FEW, _FST, "")
    p = binomial_p_values(c.n_errors[start:], c.n_accepted[start:], target_risk)   # (G − start,)
    failed = p > delta
    n_ok = int(failed.argmax()) if failed.any() else len(p)
    if n_ok == 0:
        return _sequence_refusal("ltt", c, c.n_accepted[start:], c.n_errors[start:], target_risk,
                                 delta, floor, f"the first tested threshold (the first accepting "
                                 f"≥ {floor})", f"every threshold accepting ≥ {floor}", _FST,
                                 f"first threshold accepting ≥ {floor}")
    g = start + n_ok - 1
    k, n = int(c.n_errors[g]), int(c.n_accepted[g])
    return Certificate(method="ltt", threshold=float(c.thresholds[g]), n=c.n, n_accepted=n,
                       n_errors=k, risk_upper_bound=float(clopper_pearson_upper(k, n, delta)),
                       target_risk=target_risk, delta=delta, min_accepted=floor,
                       detail=f"fixed sequence certified {n_ok} of {len(p)} thresholds",
                       procedure=_FST, start=f"first threshold accepting ≥ {floor} samples")


def certify_sgr(scores: np.ndarray, errors: np.ndarray, target_risk: float, delta: float,
                curve: RiskCoverageCurve | None = None) -> Certificate:
    """Selection with guaranteed risk: ⌈log₂ m⌉ binary-search steps, CP bounds at δ/⌈log₂ m⌉."""
    check_risk_and_delta(target_risk, delta)
    c = curve or risk_coverage_curve(scores, errors)
    steps = max(1, math.ceil(math.log2(c.n)))
    level = delta / steps
    lo, hi, best, best_bound = 0, len(c.n_accepted) - 1, -1, 1.0
    for _ in range(steps):
        if lo > hi:
            break
        mid = (lo + hi) // 2
        bound = float(clopper_pearson_upper(int(c.n_errors[mid]), int(c.n_accepted[mid]), level))
        if bound <= target_risk:
            best, best_bound, lo = mid, bound, mid + 1       # safe: try more permissive
        else:
            hi = mid - 1
    if best < 0:
        below = (c.n_errors <= target_risk * c.n_accepted).any()
        return _not_certified("sgr", c, target_risk, delta, zero_error_minimum(target_risk, level),
                              f"no binary-search step had a Clopper–Pearson bound ≤ {target_risk:g} "
                              f"at δ/{steps}; {refusal.where_below(c, target_risk)}",
                              refusal.FIRST_FAILED if below else refusal.RISK_ABOVE,
                              "SGR binary search", "median threshold")
    k, n = int(c.n_errors[best]), int(c.n_accepted[best])
    return Certificate(method="sgr", threshold=float(c.thresholds[best]), n=c.n, n_accepted=n,
                       n_errors=k, risk_upper_bound=best_bound, target_risk=target_risk, delta=delta,
                       detail=f"{steps} binary-search steps at δ' = {level:.3g}",
                       procedure="SGR binary search", start="median threshold")


def certify_coverage(scores: np.ndarray, errors: np.ndarray, target_coverage: float, delta: float,
                     target_risk: float, curve: RiskCoverageCurve | None = None) -> Certificate:
    """The strictest threshold with coverage ≥ ``target_coverage`` and its (1 − δ) CP risk bound."""
    check_risk_and_delta(target_risk, delta)
    if not (isinstance(target_coverage, (int, float)) and 0.0 < target_coverage <= 1.0):
        raise CertifyError(f"--target-coverage must be in (0, 1]; got {target_coverage!r}")
    c = curve or risk_coverage_curve(scores, errors)
    g = int(np.searchsorted(c.n_accepted, math.ceil(target_coverage * c.n - 1e-9)))
    g = min(g, len(c.n_accepted) - 1)
    k, n = int(c.n_errors[g]), int(c.n_accepted[g])
    bound = float(clopper_pearson_upper(k, n, delta))
    verdict = "meets" if bound <= target_risk else "does NOT meet"
    return Certificate(method="coverage", threshold=float(c.thresholds[g]), n=c.n, n_accepted=n,
                       n_errors=k, risk_upper_bound=bound, target_risk=target_risk, delta=delta,
                       detail=f"coverage {n / c.n:.4f}: risk bound {bound:.4f} {verdict} the "
                              f"target {target_risk:g}", procedure="target coverage (no test)")


def certify(scores: np.ndarray, errors: np.ndarray, target_risk: float, delta: float,
            method: Literal["ltt", "sgr"] = "ltt", target_coverage: float | None = None,
            plan: LttPlan | None = None) -> Certificate:
    """Dispatch: ``target_coverage`` set → coverage mode; else LTT (planned when a ``plan`` from
    the tuning split is given, else the floored fixed sequence) or SGR."""
    curve = risk_coverage_curve(scores, errors)
    if target_coverage is not None:
        return certify_coverage(scores, errors, target_coverage, delta, target_risk, curve)
    if method == "ltt" and plan is not None:
        return certify_planned(scores, errors, plan, target_risk, delta, curve)
    if method == "ltt":
        return certify_ltt(scores, errors, target_risk, delta, curve)
    if method == "sgr":
        return certify_sgr(scores, errors, target_risk, delta, curve)
    raise CertifyError(f"unknown method {method!r}; valid: ltt, sgr")
