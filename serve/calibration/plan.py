"""Learn-then-Test planned on the tuning split (METHODS.md §4, "hypotheses fixed in advance").

The fixed sequence of :func:`serve.calibration.certify.certify_ltt` starts at the strictest
threshold that accepts enough samples and stops at its first failure, so when the strictest
thresholds are noisy (a weak model, a small set) it certifies nothing although a permissive
threshold would pass easily. Here the tuning split, which is independent of the certification
split, fixes everything the test needs *before* a certification label is seen:

* the **grid**: thresholds at evenly spaced tuning coverages (≤ ``GRID_POINTS``), strict →
  permissive;
* the **start**: for every grid point the probability that its binomial test will pass on
  ``n_cert`` certification samples, with *both* counts random (:func:`predicted_pass_counts`:
  acceptance rate and risk from Jeffreys posteriors of the tuning counts, no prior toward the
  overall error rate, which erased the clean top region of weak models in issue 24). The
  sequence starts where pass probability × tuning coverage is largest, among ``PASS_POINTS``
  evenly spaced points (``START_RULE = "coverage"``); issue 13's rule (a prior of
  200 pseudo-samples, count = scale × tuning count, most permissive point with
  pass probability ≥ 0.95 × the best) is kept behind arguments for the comparisons;
* the **direction**: from the start toward permissive, stopping at the first failure.

Validity: the plan is a function of the tuning split only, so on the certification split it is a
fixed sequence of pre-ordered hypotheses and fixed-sequence testing at level δ controls the
family-wise error (Angelopoulos et al. 2021, Prop. on FST): the deployed threshold has selective
risk ≤ r* with probability ≥ 1 − δ. The default runs it at 0.1 δ beside the floored sequence
(serve.calibration.union.certify_union); the candidates compared by simulation are in
docs/calibration.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from serve.calibration.binomial import binomial_p_values
from serve.selective_metrics import risk_coverage_curve

GRID_POINTS = 1000
START_FRACTION = 0.95      # start where P(pass) ≥ 0.95·best and P(fail) ≤ min(2·best, best + 0.05)
START_SLACK = (2.0, 0.05)
PRIOR_STRENGTH = 0.0     # pseudo-samples of prior risk (issue 13 used 200; it can erase a good region)
PRIOR_CENTRE = "error"   # prior risk: the overall tuning error rate ("error") or r* ("target")
COUNT_VARIANCE = True    # predict with the certification count random (predicted_pass_counts)
START_RULE = "coverage"  # "fraction" (issue 13) or "coverage" (max pass probability × coverage)
PASS_DRAWS = 128         # Monte Carlo draws per grid point in predicted_pass_counts
PASS_POINTS = 200        # grid points where predicted_pass_counts is evaluated (start candidates)


@dataclass(frozen=True)
class LttPlan:
    """Pre-registered hypotheses: ``thresholds`` strict → permissive, where to start, at what level.

    Attributes:
        thresholds: (G,) descending thresholds taken from the tuning scores.
        tune_coverage: (G,) tuning coverage of each threshold.
        pass_prob: (G,) predicted probability that each test passes on the certification split.
        starts: grid indices where a fixed sequence starts (walking toward permissive).
        levels: the level of each start's sequence; they sum to δ.
        n_tune: tuning samples the plan was made from.
    """

    thresholds: np.ndarray
    tune_coverage: np.ndarray
    pass_prob: np.ndarray
    starts: tuple[int, ...]
    levels: tuple[float, ...]
    n_tune: int

    def describe(self) -> str:
        parts = [f"grid index {s} (tuning coverage {self.tune_coverage[s]:.4f}, predicted pass "
                 f"probability {self.pass_prob[s]:.2f}) at level {lv:.3g}"
                 for s, lv in zip(self.starts, self.levels, strict=True)]
        return (f"{len(self.thresholds)} thresholds from {self.n_tune} tuning scores; start "
                + "; ".join(parts))


def counts_at(scores: np.ndarray, errors: np.ndarray, thresholds: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Accepted and error counts ``(G,)`` of ``score ≥ t`` for each threshold t (O((n + G) log n))."""
    s = np.asarray(scores, dtype=np.float64)
    e = np.asarray(errors, dtype=bool)
    asc = np.sort(s)
    err_asc = np.sort(s[e])
    n_acc = s.size - np.searchsorted(asc, thresholds, side="left")
    n_err = err_asc.size - np.searchsorted(err_asc, thresholds, side="left")
    return n_acc.astype(np.int64), n_err.astype(np.int64)


def critical_errors(n: np.ndarray, target_risk: float, delta: float) -> np.ndarray:
    """Largest k with BinomCDF(k; n, r*) ≤ δ (the most errors a pass allows); −1 where none."""
    n = np.asarray(n, dtype=np.float64)
    k = np.nan_to_num(stats.binom.ppf(delta, n, target_risk), nan=-1.0)   # smallest cdf ≥ δ
    k = np.where(stats.binom.cdf(k, n, target_risk) <= delta, k, k - 1.0)
    return np.where(n > 0, k, -1.0)


def predicted_pass(n_tune_acc: np.ndarray, k_tune: np.ndarray, scale: float, target_risk: float,
                   delta: float, prior: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """P(the binomial test passes) for points with ``k_tune`` errors in ``n_tune_acc`` accepted.

    The certification count is ``round(scale · n_tune_acc)`` and its error count beta-binomial
    with the Jeffreys posterior of the tuning risk.
    """
    n_t = np.asarray(n_tune_acc, dtype=np.float64)
    k_t = np.asarray(k_tune, dtype=np.float64)
    m = np.rint(n_t * scale)
    c = critical_errors(m, target_risk, delta)
    p = stats.betabinom.cdf(np.maximum(c, 0.0), m, k_t + prior[0], n_t - k_t + prior[1])
    return np.where((c >= 0) & (m > 0), p, 0.0)


def critical_table(n_cert: int, target_risk: float, delta: float) -> np.ndarray:
    """``critical_errors(m)`` for every accepted count m = 0 … ``n_cert`` → ``(n_cert + 1,)``.

    The critical count steps up by one at m_k, the smallest m with BinomCDF(k; m, r*) ≤ δ. Since
    BinomCDF(k; m, r) = P(the (k + 1)-th error comes after trial m), m_k is the (1 − δ) quantile
    of that trial: k + 1 + a negative-binomial quantile. One quantile per k ≤ n·r* instead of one
    per m; the boundary is then checked with exact binomial CDFs.
    """
    ks = np.arange(int(math.ceil(n_cert * target_risk)) + 2, dtype=np.float64)
    first = ks + 1.0 + stats.nbinom.ppf(1.0 - delta, ks + 1.0, target_risk)       # (k,) m_k
    # Exactness at the boundary: m_k passes, m_k − 1 does not (float rounding in the quantile).
    for _ in range(3):
        up = stats.binom.cdf(ks, first, target_risk) > delta
        down = (first > ks + 1) & (stats.binom.cdf(ks, first - 1.0, target_risk) <= delta)
        if not (up.any() or down.any()):
            break
        first = first + up - down
    m = np.arange(n_cert + 1, dtype=np.float64)
    return np.searchsorted(first, m, side="right").astype(np.float64) - 1.0


def predicted_pass_counts(n_tune_acc: np.ndarray, k_tune: np.ndarray, n_tune: int, n_cert: int,
                          target_risk: float, delta: float, prior: tuple[float, float] = (0.5, 0.5),
                          draws: int = PASS_DRAWS, seed: int = 0) -> np.ndarray:
    """P(the binomial test passes on ``n_cert`` fresh samples), both counts random.

    For a grid point with ``n_tune_acc`` accepted tuning samples of ``n_tune`` and ``k_tune``
    errors: acceptance rate q ~ Beta(n_acc + ½, n_tune − n_acc + ½), risk ρ ~ Beta(k + a, n_acc − k
    + b) (``prior`` = (a, b), Jeffreys by default: no pull toward any rate), then the certification
    counts M ~ Binomial(n_cert, q) and K ~ Binomial(M, ρ); the test passes iff K ≤ the critical
    count of M. Monte Carlo with ``draws`` joint draws per point and a fixed ``seed``: the plan is
    still a function of the tuning split alone. Unlike :func:`predicted_pass`, a point whose
    *expected* certification count only just clears the zero-error floor gets the probability that
    the realised count falls short.
    """
    n_t = np.asarray(n_tune_acc, dtype=np.float64)[:, None]          # (G, 1)
    k_t = np.asarray(k_tune, dtype=np.float64)[:, None]
    rng = np.random.default_rng(seed)
    shape = (n_t.shape[0], draws)
    q = rng.beta(n_t + 0.5, n_tune - n_t + 0.5, shape)               # (G, D)
    rho = rng.beta(k_t + prior[0], n_t - k_t + prior[1], shape)
    m = rng.binomial(n_cert, q)
    k = rng.binomial(m, rho)
    crit = critical_table(n_cert, target_risk, delta)                # (n_cert + 1,)
    return (k <= crit[m]).mean(axis=1)


def plan_ltt(tune_scores: np.ndarray, tune_errors: np.ndarray, n_cert: int, target_risk: float,
             delta: float, pass_prob: float | None = None,
             start_slack: tuple[float, float] = START_SLACK, start_fraction: float = START_FRACTION,
             prior_strength: float = PRIOR_STRENGTH,
             backup: tuple[float, float] | None = None,
             prior_centre: str = PRIOR_CENTRE, count_variance: bool = COUNT_VARIANCE,
             start_rule: str = START_RULE) -> LttPlan:
    """The grid, start and levels for certifying on ``n_cert`` samples (see module doc).

    Args:
        pass_prob: start at the most permissive point with this absolute predicted pass
            probability instead of ``start_fraction`` × the best (measured, not the default).
        backup: optional ``(pass_prob, share)``: a second sequence starting at the most permissive
            point predicted to pass with that probability (0 = the most permissive point), at
            level ``share · δ``; the main one then runs at ``(1 − share) · δ``. Measured, not used
            by default.
        count_variance: predict with :func:`predicted_pass_counts` (certification count random)
            instead of :func:`predicted_pass` (count = scale × tuning count).
        start_rule: ``"coverage"``: start where predicted pass probability × tuning coverage is
            largest (the expected coverage of the start); ``"fraction"``: the issue-13 rule
            (``start_fraction``, ``start_slack``).
    """
    curve = risk_coverage_curve(tune_scores, tune_errors)
    n = curve.n
    want = np.ceil(np.linspace(1.0, n, min(GRID_POINTS, n)) - 1e-9)         # accepted counts aimed at
    idx = np.unique(np.minimum(np.searchsorted(curve.n_accepted, want), len(curve.n_accepted) - 1))
    thresholds = curve.thresholds[idx]
    n_t, k_t = curve.n_accepted[idx], curve.n_errors[idx]
    scale = n_cert / n
    p0 = (target_risk if prior_centre == "target"
          else (curve.n_errors[-1] + 0.5) / (n + 1.0))                 # or the tuning error rate
    prior = (prior_strength * p0 + 0.5, prior_strength * (1.0 - p0) + 0.5)
    cov = n_t / n

    nodes = np.unique(np.linspace(0, len(idx) - 1, min(PASS_POINTS, len(idx))).round()
                      ).astype(np.int64)                  # where the start may be (count variance)

    def start_for(prob: float | None, level: float) -> tuple[int, np.ndarray]:
        if count_variance:
            at = predicted_pass_counts(n_t[nodes], k_t[nodes], n, n_cert, target_risk, level, prior)
            pp = np.interp(np.arange(len(idx)), nodes, at)                 # for the report only
            eligible = np.zeros(len(idx), bool)
            eligible[nodes] = True
        else:
            pp = predicted_pass(n_t, k_t, scale, target_risk, level, prior)
            eligible = np.ones(len(idx), bool)
        if start_rule == "coverage" and prob is None:
            gain = np.where(eligible, pp * cov, -1.0)
            if gain.max() <= 0.0:         # nothing predicted to pass: the least hopeless point,
                gain = np.where(eligible, -(k_t + 0.5) / (n_t + 1.0), -np.inf)  # not the last
            return int(np.flatnonzero(gain >= gain.max() - 1e-12)[-1]), pp
        pp = np.where(eligible, pp, 0.0) if count_variance else pp
        best = float(pp.max())
        f = 1.0 - best                      # the smallest predicted failure probability
        need = (min(prob, best) if prob is not None else
                max(start_fraction * best, 1.0 - min(start_slack[0] * f, f + start_slack[1])))
        return int(np.flatnonzero(pp >= need - 1e-12)[-1]), pp

    if backup is None:
        s, pp = start_for(pass_prob, delta)
        starts, levels = (s,), (delta,)
    else:
        main_level, back_level = (1.0 - backup[1]) * delta, backup[1] * delta
        s1, pp = start_for(pass_prob, main_level)
        s2, _ = start_for(backup[0], back_level)
        starts, levels = (s1, s2), (main_level, back_level)
    return LttPlan(thresholds=thresholds, tune_coverage=cov, pass_prob=pp, starts=starts,
                   levels=levels, n_tune=n)


def run_plan(plan: LttPlan, scores: np.ndarray, errors: np.ndarray, target_risk: float
             ) -> tuple[int, np.ndarray, np.ndarray, list[int]]:
    """Test the plan on certification data.

    Returns:
        (g, n_acc, n_err, certified): the most permissive certified grid index (−1 if none), the
        certification counts at every grid point, and how many thresholds each start certified.
    """
    n_acc, n_err = counts_at(scores, errors, plan.thresholds)
    p = binomial_p_values(n_err, n_acc, target_risk)
    best, certified = -1, []
    for start, level in zip(plan.starts, plan.levels, strict=True):
        failed = p[start:] > level
        n_ok = int(failed.argmax()) if failed.any() else len(failed)
        certified.append(n_ok)
        if n_ok:
            best = max(best, start + n_ok - 1)
    return best, n_acc, n_err, certified
