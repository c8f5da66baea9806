"""Selective-classification metrics on ``(scores, errors)``: tie-aware, float64, O(n log n).

Formulas: METHODS.md §3. Conventions, stated once for every function here:

* Higher score = accepted first. Samples with tied scores are accepted together: the
  risk–coverage curve has a point only where the score changes, so no result depends on sample
  order.
* Areas are the **expectation over random orders within tie groups** of the per-sample mean of
  prefix risks ``(1/n) Σ_i SR_i`` (Geifman et al.). A tie group g of m samples with k errors,
  after a accepted samples with e errors, contributes in closed form
  ``Σ_{j=1..m} (e + j·k/m)/(a + j) = k + (e − a·k/m)·Σ_{j=1..m} 1/(a + j)`` to AURC and
  ``(m·e + k(m + 1)/2)/n`` to AUGRC (divide by n). Without ties (m = 1) this is exactly the
  per-sample mean; with ties it neither charges every tied sample the risk at the group's end
  (an upper bound) nor its start. AUROC's "ties count ½" is the same expectation.
* AURC* is the exact finite-sample oracle (all correct samples strictly before all errors; a
  strict order, so the tie expectation is itself), whose n → ∞ limit is METHODS.md's
  ``err + (1 − err)·ln(1 − err)``. Each random tie order is a strict ranking with AURC ≥ AURC*,
  so their mean is too: E-AURC ≥ 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from serve.errors import AbstainError

Array = np.ndarray
ECE_BINS = 15


class MetricError(AbstainError, ValueError):
    """Inputs a metric cannot be computed on."""


def _validate(scores: Array, errors: Array) -> tuple[Array, Array]:
    s = np.asarray(scores)
    e = np.asarray(errors)
    if s.ndim != 1 or e.ndim != 1:
        raise MetricError(f"scores and errors must be 1-D; got shapes {s.shape} and {e.shape}")
    if s.shape != e.shape:
        raise MetricError(f"scores ({s.shape[0]}) and errors ({e.shape[0]}) differ in length")
    if s.size == 0:
        raise MetricError("metrics need at least one sample")
    s = s.astype(np.float64, copy=False)
    if not np.isfinite(s).all():
        raise MetricError("scores contain NaN or inf")
    if e.dtype != np.bool_:
        if not np.isin(e, (0, 1)).all():
            raise MetricError("errors must be 0/1 or boolean (1 = wrong prediction)")
        e = e.astype(np.bool_)
    return s, e


@dataclass(frozen=True)
class RiskCoverageCurve:
    """One point per distinct score, from the strictest threshold to the most permissive.

    Attributes:
        thresholds: (G,) distinct scores, descending; accepting ``s ≥ thresholds[g]`` gives point g.
        n_accepted: (G,) number of accepted samples at each point (int64).
        n_errors: (G,) number of accepted errors at each point (int64).
        n: total number of samples.
    """

    thresholds: Array
    n_accepted: Array
    n_errors: Array
    n: int

    # Cached: summary() reads each of these several times on curves of up to n points.
    @cached_property
    def coverage(self) -> Array:
        return self.n_accepted / self.n

    @cached_property
    def risk(self) -> Array:
        """Selective risk: error rate among accepted samples."""
        return self.n_errors / self.n_accepted

    @cached_property
    def generalized_risk(self) -> Array:
        """``coverage · risk``: accepted errors over all samples."""
        return self.n_errors / self.n

    @property
    def error_rate(self) -> float:
        return float(self.n_errors[-1] / self.n)


def risk_coverage_curve(scores: Array, errors: Array) -> RiskCoverageCurve:
    """The tie-grouped risk–coverage curve (O(n log n)).

    Two plain sorts (all scores, the errors' scores) instead of an argsort and gathers: at
    n = 10⁷ this is about 3× faster, and sample order within ties cannot matter by construction.
    """
    s, e = _validate(scores, errors)
    n = s.size
    asc = np.sort(s)                                            # (n,) ascending
    err_asc = np.sort(s[e])                                     # (n_err,) errors' scores, ascending
    run_start = np.empty(n, dtype=bool)                         # (n,) first sample of a tie run
    run_start[0] = True
    np.not_equal(asc[1:], asc[:-1], out=run_start[1:])
    starts = np.flatnonzero(run_start)[::-1]                    # (G,) run starts, highest score first
    thresholds = asc[starts]                                    # (G,) distinct scores, descending
    # Errors with score ≥ threshold: the tail of err_asc from the first element ≥ threshold
    # (searched in ascending key order, which is cache-friendly).
    n_errors = np.searchsorted(err_asc, thresholds[::-1], side="left")[::-1]
    return RiskCoverageCurve(
        thresholds=thresholds, n_accepted=(n - starts).astype(np.int64, copy=False),
        n_errors=(err_asc.size - n_errors).astype(np.int64, copy=False), n=int(n))


def _group_sizes(curve: RiskCoverageCurve) -> Array:
    return np.diff(curve.n_accepted, prepend=0)


def _aurc(c: RiskCoverageCurve) -> float:
    """Mean prefix risk, in expectation over random orders within each tie group (O(n))."""
    m = _group_sizes(c)                                          # (G,) group sizes
    k = np.diff(c.n_errors, prepend=0)                           # (G,) errors per group
    a = c.n_accepted - m                                         # (G,) accepted before the group
    e = c.n_errors - k                                           # (G,) errors before the group
    inv = 1.0 / np.arange(1, c.n + 1, dtype=np.float64)          # (n,) 1/position
    harmonic = np.add.reduceat(inv, a)                           # (G,) Σ_{j=1..m} 1/(a + j)
    return float(np.sum(k + (e - a * (k / m)) * harmonic) / c.n)


def _aurc_optimal_counts(n: int, n_errors: int) -> float:
    # Oracle prefix risks: 0 for the first n_c samples, then (i − n_c)/i for i = n_c+1 … n.
    n_correct = n - n_errors
    i = np.arange(n_correct + 1, n + 1, dtype=np.float64)       # (n_errors,)
    return float(np.sum((i - n_correct) / i) / n)


def aurc(scores: Array, errors: Array, curve: RiskCoverageCurve | None = None) -> float:
    """Area under the risk–coverage curve: mean prefix risk, ties in random order (expected)."""
    return _aurc(curve or risk_coverage_curve(scores, errors))


def aurc_optimal(errors: Array) -> float:
    """AURC* of the oracle ranking: every correct sample strictly before every error.

    ``(1/n) Σ_{i=n_c+1}^{n} (i − n_c)/i``; tends to ``err + (1 − err) ln(1 − err)``.
    """
    _, e = _validate(np.zeros(np.shape(errors)), errors)
    return _aurc_optimal_counts(e.size, int(e.sum()))


def aurc_optimal_asymptotic(error_rate: float) -> float:
    """METHODS.md's closed form ``err + (1 − err)·ln(1 − err)`` (the n → ∞ oracle)."""
    r = float(error_rate)
    if not 0.0 <= r <= 1.0:
        raise MetricError(f"error rate must be in [0, 1]; got {error_rate}")
    return r if r >= 1.0 else r + (1.0 - r) * float(np.log1p(-r))


def _excess(c: RiskCoverageCurve) -> tuple[float, float, float]:
    """AURC, E-AURC and NAURC of one curve, sharing one AURC and one AURC*."""
    n_err = int(c.n_errors[-1])
    area, opt = _aurc(c), _aurc_optimal_counts(c.n, n_err)
    normalised = float("nan") if n_err in (0, c.n) else (area - opt) / (c.error_rate - opt)
    return area, area - opt, normalised


def e_aurc(scores: Array, errors: Array, curve: RiskCoverageCurve | None = None) -> float:
    """Excess AURC: AURC − AURC*. Zero for the oracle ranking, ≥ 0 for any scores (ties included)."""
    return _excess(curve or risk_coverage_curve(scores, errors))[1]


def naurc(scores: Array, errors: Array, curve: RiskCoverageCurve | None = None) -> float:
    """Normalised AURC: (AURC − AURC*)/(err − AURC*); 0 = oracle, ≈1 = random ranking.

    NaN when there are no errors or only errors (nothing to rank). With 0 < err < 1 the
    denominator is > 0 because AURC* < err whenever one sample is correct.
    """
    return _excess(curve or risk_coverage_curve(scores, errors))[2]


def augrc(scores: Array, errors: Array, curve: RiskCoverageCurve | None = None) -> float:
    """Area under the generalised risk–coverage curve (Traub et al.); optimum ≈ err²/2.

    Ties in random order, in expectation: a group of m samples with k errors after e errors
    contributes ``m·e + k(m + 1)/2`` accepted-error counts.
    """
    c = curve or risk_coverage_curve(scores, errors)
    m = _group_sizes(c)
    k = np.diff(c.n_errors, prepend=0)
    e = c.n_errors - k
    return float(np.sum(m * e + k * (m + 1) / 2.0) / c.n / c.n)


def _reaching(c: RiskCoverageCurve, coverage: float) -> Array:
    if not 0.0 < coverage <= 1.0:
        raise MetricError(f"coverage must be in (0, 1]; got {coverage}")
    return c.n_accepted >= coverage * c.n - 1e-9 * c.n           # (G,) points with cov ≥ c


def risk_at_coverage(scores: Array, errors: Array, coverage: float,
                     curve: RiskCoverageCurve | None = None) -> float:
    """Selective risk at the strictest threshold whose coverage reaches ``coverage``.

    With ties the coverage there can exceed ``coverage`` (the whole tie group is accepted).
    """
    c = curve or risk_coverage_curve(scores, errors)
    return float(c.risk[int(np.argmax(_reaching(c, coverage)))])


def min_risk_at_coverage_at_least(scores: Array, errors: Array, coverage: float,
                                  curve: RiskCoverageCurve | None = None) -> float:
    """Smallest selective risk over every threshold with coverage ≥ ``coverage``.

    A working-point rule (the best operating point that keeps at least this coverage), not the
    risk at coverage ``coverage``: that is :func:`risk_at_coverage`.
    """
    c = curve or risk_coverage_curve(scores, errors)
    return float(c.risk[_reaching(c, coverage)].min())


def coverage_at_risk(scores: Array, errors: Array, risk: float,
                     curve: RiskCoverageCurve | None = None) -> float:
    """Largest coverage among curve points with selective risk ≤ ``risk`` (0.0 if none)."""
    if not 0.0 <= risk <= 1.0:
        raise MetricError(f"risk must be in [0, 1]; got {risk}")
    c = curve or risk_coverage_curve(scores, errors)
    ok = c.n_errors <= risk * c.n_accepted + 1e-12 * c.n_accepted
    return float(c.coverage[ok].max()) if ok.any() else 0.0


def auroc(scores: Array, errors: Array, curve: RiskCoverageCurve | None = None) -> float:
    """ROC AUC separating correct (positive) from wrong predictions; ties count ½.

    NaN when one of the two classes is empty.
    """
    c = curve or risk_coverage_curve(scores, errors)
    wrong_g = np.diff(c.n_errors, prepend=0)                      # (G,) errors per group
    correct_g = _group_sizes(c) - wrong_g                          # (G,) correct per group
    n_wrong, n_correct = int(c.n_errors[-1]), c.n - int(c.n_errors[-1])
    if n_wrong == 0 or n_correct == 0:
        return float("nan")
    wrong_below = n_wrong - c.n_errors                             # errors with a lower score
    pairs = np.sum(correct_g * (wrong_below + 0.5 * wrong_g))
    return float(pairs / (n_correct * n_wrong))


def fpr_at_tpr(scores: Array, errors: Array, tpr: float = 0.95,
               curve: RiskCoverageCurve | None = None) -> float:
    """Fraction of errors accepted at the strictest threshold accepting ≥ ``tpr`` of correct ones."""
    if not 0.0 < tpr <= 1.0:
        raise MetricError(f"tpr must be in (0, 1]; got {tpr}")
    c = curve or risk_coverage_curve(scores, errors)
    n_wrong, n_correct = int(c.n_errors[-1]), c.n - int(c.n_errors[-1])
    if n_wrong == 0 or n_correct == 0:
        return float("nan")
    correct_cum = c.n_accepted - c.n_errors
    g = int(np.argmax(correct_cum >= tpr * n_correct - 1e-9 * n_correct))
    return float(c.n_errors[g] / n_wrong)


def ece(confidences: Array, errors: Array, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error over equal-width bins ``(k/B, (k+1)/B]`` (0 goes in bin 0)."""
    if not (isinstance(n_bins, (int, np.integer)) and n_bins >= 1):
        raise MetricError(f"n_bins must be a positive integer; got {n_bins!r}")
    conf, e = _validate(confidences, errors)
    if conf.min() < 0 or conf.max() > 1:
        raise MetricError("ECE needs confidences in [0, 1] (probabilities, e.g. MSP)")
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=(~e).astype(np.float64), minlength=n_bins)
    return float(np.sum(np.abs(acc_sum - conf_sum)) / conf.size)


def summary(scores: Array, errors: Array, coverages: tuple[float, ...] = (0.5, 0.8)) -> dict[str, float]:
    """Every ranking metric at once, sharing one sort.

    For each coverage c (as a percentage P): ``risk_at_P`` = :func:`risk_at_coverage` and
    ``min_risk_cov_ge_P`` = :func:`min_risk_at_coverage_at_least`.
    """
    c = risk_coverage_curve(scores, errors)
    area, excess, normalised = _excess(c)
    out = {
        "n": float(c.n),
        "error_rate": c.error_rate,
        "aurc": area,
        "e_aurc": excess,
        "naurc": normalised,
        "augrc": augrc(scores, errors, c),
        "auroc": auroc(scores, errors, c),
        "fpr_at_95tpr": fpr_at_tpr(scores, errors, 0.95, c),
    }
    for cov in coverages:
        out[f"risk_at_{round(cov * 100)}"] = risk_at_coverage(scores, errors, cov, c)
        out[f"min_risk_cov_ge_{round(cov * 100)}"] = min_risk_at_coverage_at_least(
            scores, errors, cov, c)
    return out
