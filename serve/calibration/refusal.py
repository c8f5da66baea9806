"""Why nothing was certified, in words that are true of the data (issue 24).

Three different situations end in "no threshold certified", and each calls for a different fix:

* **too few samples**: fewer accepted samples than even zero errors would need
  (⌈log δ / log(1 − r*)⌉, "the floor"): give the floor and the count;
* **risk above the target**: the observed selective risk exceeds r* at every tested threshold:
  give the lowest observed risk and the coverage up to which the observed risk is ≤ r* (if any);
* **the first test failed**: somewhere the observed risk is ≤ r*, but the sequence's first test
  (the planned start, or the floored sequence's first threshold) did not pass: give its counts and
  p-value beside the coverage where the observed risk is ≤ r*.

None of them suggests another seed or another method: re-running until something passes is
exactly what voids a certificate. The sample-size estimate (``samples_needed``) says what more
data would do.
"""

from __future__ import annotations

import math

import numpy as np

from serve.calibration.binomial import binomial_p_values
from serve.selective_metrics import RiskCoverageCurve

TOO_FEW, RISK_ABOVE, FIRST_FAILED = "too few samples", "risk above target", "first test failed"


def samples_needed(curve: RiskCoverageCurve, target_risk: float, delta: float, zero: int
                   ) -> int | None:
    """Estimate the certification-set size at which this risk profile would certify something.

    For each curve point with empirical risk p̂ < r*, the smallest accepted count m whose binomial
    test passes at p̂·m errors, divided by the point's coverage; the minimum over points, and never
    less than ``zero`` (the zero-error minimum). None when no point has empirical risk below r*.
    """
    ok = np.flatnonzero(curve.n_errors < target_risk * curve.n_accepted)
    ok = ok[curve.n_accepted[ok] >= min(10, curve.n)]
    if ok.size == 0:
        return None
    pts = ok[np.unique(np.linspace(0, ok.size - 1, 200).round().astype(np.int64))]
    phat = curve.risk[pts]                                           # (P,)
    cov = curve.coverage[pts]                                        # (P,)
    m = np.unique(np.geomspace(zero, 1e9, 600).round())              # (M,) accepted counts tried
    k = np.floor(phat[:, None] * m[None, :])                         # (P, M)
    passes = binomial_p_values(k, np.broadcast_to(m, k.shape), target_risk) <= delta
    first = np.where(passes.any(axis=1), passes.argmax(axis=1), -1)
    need = [math.ceil(m[f] / c) for f, c in zip(first, cov, strict=True) if f >= 0]
    return max(zero, min(need)) if need else None


def too_few(n: int, what: str, target_risk: float, delta: float, zero: int) -> str:
    return (f"not enough samples even with zero errors: {n} {what}, fewer than {zero}, the floor "
            f"that certifies selective risk ≤ {target_risk:g} at δ = {delta:g} even with zero "
            "errors")


def where_below(curve: RiskCoverageCurve, target_risk: float) -> str:
    """The coverage up to which the observed risk is ≤ r* (thresholds accepting ≥ 10 samples)."""
    sized = curve.n_accepted >= min(10, curve.n)
    ok = np.flatnonzero(sized & (curve.n_errors <= target_risk * curve.n_accepted))
    if ok.size == 0:
        return (f"the observed risk is above {target_risk:g} at every threshold accepting "
                f"≥ {min(10, curve.n)} samples (lowest: {float(curve.risk[sized].min()):.4f})")
    g = ok[-1]
    return (f"the observed risk is ≤ {target_risk:g} up to coverage {curve.coverage[g]:.4f} "
            f"(accepting {int(curve.n_accepted[g])}, {int(curve.n_errors[g])} errors)")


def risk_above(n_acc: np.ndarray, n_err: np.ndarray, n: int, target_risk: float, tested: str,
               curve: RiskCoverageCurve) -> str:
    """Every tested threshold's observed risk exceeds r*: the lowest of them, and where it is ≤ r*."""
    risk = n_err / np.maximum(n_acc, 1)
    b = int(np.argmin(risk))
    return (f"the observed risk exceeds {target_risk:g} at every tested threshold ({tested}): "
            f"lowest {risk[b]:.4f} at coverage {n_acc[b] / n:.4f} ({int(n_acc[b])} accepted, "
            f"{int(n_err[b])} errors); {where_below(curve, target_risk)}")


def first_failed(what: str, n_acc: int, n_err: int, n: int, p: float, level: float,
                 target_risk: float, curve: RiskCoverageCurve) -> str:
    """The sequence's first test failed although the observed risk is ≤ r* somewhere."""
    return (f"{what} failed its binomial test: accepting {n_acc} of {n} with {n_err} errors "
            f"(observed risk {n_err / max(n_acc, 1):.4f}), p-value {p:.3g} > δ = {level:.3g}; "
            f"{where_below(curve, target_risk)}")


def hint(curve: RiskCoverageCurve, target_risk: float, delta: float, zero: int, kind: str,
         needed: int | None) -> str:
    """What would change the outcome, from the observed error rates (never "another seed")."""
    if needed is None:
        return "more data will not help: raise --target-risk or improve the model"
    if needed > curve.n:
        return (f"needs at least {needed} certification samples (has {curve.n}) to certify "
                f"selective risk ≤ {target_risk:g} at δ = {delta:g}: that is the estimate for this "
                f"model's risk profile (its certification error rates); the floor, reached only "
                f"with zero errors, is {zero}. Add calibration data or "
                "raise --target-risk / --delta")
    lead = ("a fixed sequence stops at its first failed test; " if kind == FIRST_FAILED else "")
    return (f"{lead}at these observed error rates about {needed} samples would certify something: more "
            "calibration data or a higher --target-risk make a pass likelier (retrying other "
            "splits or methods until one passes would void the guarantee)")
