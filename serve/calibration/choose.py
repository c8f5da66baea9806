"""Tuning-split choices: the temperature and the confidence score (METHODS.md §2).

Cattelan & Silva's rule with a burden of proof: MSP (at the fitted temperature) is the
incumbent; a centred ``pnorm:p`` from the grid p = 0…10 replaces it only if its tuning AURC is
lower *significantly*: with the AURC gain = AURC(MSP) − AURC(challenger) (> 0 is better),
z = gain / SE > Φ⁻¹(1 − α/m) with α = ``SWITCH_ALPHA`` and m the number of challengers (Bonferroni), SE from a paired Poisson bootstrap (the same resampled weights for
every score). On pure noise some challenger is "strictly lower" in most draws (38 of 40 in the
unit test); this rule switches with probability about α (2 of 40). With K = 2 the p ≥ 1 norms
are constant, so only MSP and ``pnorm:0`` are considered. Scores come from serve.scores and AURCs
from serve.selective_metrics: the functions the server and `abstain evaluate` use.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from serve import selective_metrics as metrics
from serve.errors import AbstainError
from serve.scores import Score, create_score, logsumexp

log = logging.getLogger(__name__)

CHUNK = 4096                        # rows per float64 block: fits in cache, no page-fault churn
P_GRID = tuple(range(11))           # pnorm:0 (centred MaxLogit) … pnorm:10
T_BOUNDS = (0.01, 100.0)
CURVE_POINTS = 800                  # risk–coverage points kept per candidate for plotting
SWITCH_ALPHA = 0.05                 # family-wise rate of switching away from MSP on no evidence
BOOT_RESAMPLES = 200
BOOT_MAX_ROWS = 10_000              # bootstrap on a fixed subsample beyond this; SE rescaled


class ChooseError(AbstainError, ValueError):
    """Inputs the score choice cannot work with."""


def predictions(logits: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """Argmax labels ``(n,)`` int64, computed in float64 blocks exactly as DecisionRule does."""
    z = np.asarray(logits)
    out = np.empty(len(z), np.int64)
    for a in range(0, len(z), chunk):
        out[a:a + chunk] = z[a:a + chunk].astype(np.float64).argmax(axis=1)
    return out


def score_in_chunks(score: Score, logits: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """``score(logits)`` as float64 ``(n,)``, evaluated block by block to bound memory."""
    z = np.asarray(logits)
    out = np.empty(len(z), np.float64)
    for a in range(0, len(z), chunk):
        out[a:a + chunk] = score(z[a:a + chunk])
    return out


def _nll_derivatives(z: np.ndarray, y: np.ndarray, beta: float, chunk: int) -> tuple[float, float, float]:
    """Mean NLL of softmax(β·z) and its first two derivatives in β (convex in β)."""
    f = g = h = 0.0
    for a in range(0, len(z), chunk):
        c = z[a:a + chunk].astype(np.float64)               # (b, K)
        yc = y[a:a + chunk]
        zy = c[np.arange(len(c)), yc]                       # (b,) true-class logit
        lse = logsumexp(beta * c)                           # (b,)
        p = np.exp(beta * c - lse[:, None])                 # (b, K) softmax(βz)
        mean_z = (p * c).sum(axis=1)                        # E_p[z]
        var_z = (p * c * c).sum(axis=1) - mean_z ** 2       # Var_p[z] ≥ 0
        f += float((lse - beta * zy).sum())
        g += float((mean_z - zy).sum())
        h += float(np.maximum(var_z, 0.0).sum())
    n = len(z)
    return f / n, g / n, h / n


def fit_temperature(logits: np.ndarray, labels: np.ndarray, chunk: int = CHUNK,
                    bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The temperature T minimising the mean NLL of ``softmax(z / T)``, in float64.

    The NLL is convex in β = 1/T, so a Newton iteration on β safeguarded by a bisection bracket
    converges in a handful of passes over the data (each pass gives value, gradient, curvature).
    The result is clipped to ``bounds`` (a separable tuning set drives T → 0).
    """
    z = np.asarray(logits)
    y = np.asarray(labels, dtype=np.int64)
    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    beta = 1.0
    for _ in range(60):
        _, g, h = _nll_derivatives(z, y, beta, chunk)
        if g > 0:
            hi = beta
        else:
            lo = beta
        step = -g / h if h > 1e-300 else np.inf
        nxt = beta + step
        if not (lo < nxt < hi):
            nxt = 0.5 * (lo + hi) if np.isfinite(hi) else 2 * beta
        if abs(nxt - beta) <= 1e-7 * beta or hi - lo <= 1e-9 * beta:
            beta = nxt
            break
        beta = nxt
    beta = float(np.clip(beta, 1.0 / bounds[1], 1.0 / bounds[0]))
    return 1.0 / beta


@dataclass(frozen=True)
class Candidate:
    """One score's ranking quality on the tuning split, with a thinned curve for plotting."""

    spec: str
    aurc: float
    e_aurc: float
    auroc: float
    coverage: np.ndarray = field(repr=False)     # (≤ CURVE_POINTS,)
    risk: np.ndarray = field(repr=False)         # (≤ CURVE_POINTS,)
    delta_aurc: float = 0.0                      # AURC gain, AURC(MSP) − AURC(this): > 0 is better
    z: float = 0.0                               # delta_aurc / its paired-bootstrap SE


@dataclass(frozen=True)
class ScoreChoice:
    """The chosen score spec, the fitted temperature, and every candidate considered."""

    spec: str
    temperature: float
    candidates: list[Candidate]
    reason: str
    error_rate: float
    tune_scores: np.ndarray | None = field(default=None, repr=False)   # (n_tune,) chosen score
    fitted_temperature: float | None = None   # the tuning fit, when a fixed-score rule was deployed

    @property
    def score(self) -> Score:
        return create_score(self.spec, self.temperature)

    @property
    def probability_temperature(self) -> float:
        """The temperature for reported probabilities: the tuning fit (or the user's
        ``--temperature``) even when the deployed score is fixed at another one."""
        return self.temperature if self.fitted_temperature is None else self.fitted_temperature

    def aurcs(self) -> dict[str, float]:
        return {c.spec: c.aurc for c in self.candidates}


def _thin(curve: metrics.RiskCoverageCurve, points: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.unique(np.linspace(0, len(curve.thresholds) - 1, points).round().astype(np.int64))
    return curve.coverage[idx], curve.risk[idx]


def _bootstrap_aurcs(scores: np.ndarray, errors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AURC (right-Riemann over tie groups) under each row of sample ``weights`` (B, n) → (B,)."""
    order = np.argsort(-scores, kind="stable")
    s, e = scores[order], errors[order].astype(np.float64)
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    at_end = ends[np.searchsorted(ends, np.arange(s.size))]     # (n,) last index of each tie group
    w = weights[:, order]                                       # (B, n)
    cw = np.cumsum(w, axis=1)[:, at_end]
    ce = np.cumsum(w * e, axis=1)[:, at_end]
    risk = np.divide(ce, cw, out=np.zeros_like(ce), where=cw > 0)
    return (w * risk).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-300)


def paired_bootstrap_se(score_sets: list[np.ndarray], errors: np.ndarray,
                        resamples: int = BOOT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """SE of AURC(first) − AURC(each other) by a paired Poisson bootstrap → (len − 1,).

    Beyond ``BOOT_MAX_ROWS`` samples the bootstrap runs on a fixed random subsample and the SE is
    rescaled by √(m/n) (AURC differences are means, so their SE falls as 1/√n).
    """
    rng = np.random.default_rng(seed)
    n = errors.size
    rows = np.sort(rng.choice(n, BOOT_MAX_ROWS, replace=False)) if n > BOOT_MAX_ROWS else None
    e = errors if rows is None else errors[rows]
    sets = score_sets if rows is None else [s[rows] for s in score_sets]
    diffs = []
    for a in range(0, resamples, 50):
        w = rng.poisson(1.0, (min(50, resamples - a), e.size)).astype(np.float64)
        base = _bootstrap_aurcs(sets[0], e, w)
        diffs.append(np.stack([base - _bootstrap_aurcs(s, e, w) for s in sets[1:]], axis=1))
    se = np.concatenate(diffs).std(axis=0, ddof=1)
    return se * (np.sqrt(e.size / n) if rows is not None else 1.0)


def evaluate_candidate(spec: str, scores: np.ndarray, errors: np.ndarray) -> Candidate:
    curve = metrics.risk_coverage_curve(scores, errors)
    cov, risk = _thin(curve, CURVE_POINTS)
    return Candidate(spec=spec, aurc=metrics.aurc(scores, errors, curve),
                     e_aurc=metrics.e_aurc(scores, errors, curve),
                     auroc=metrics.auroc(scores, errors, curve), coverage=cov, risk=risk)


def _switch_on_evidence(candidates: list[Candidate], score_sets: list[np.ndarray],
                        errors: np.ndarray) -> tuple[str, str, list[Candidate]]:
    """Keep MSP unless a challenger's AURC is significantly lower (see module doc)."""
    from dataclasses import replace

    from scipy import stats

    msp = candidates[0]
    se = paired_bootstrap_se(score_sets, errors)
    m = len(candidates) - 1
    crit = float(stats.norm.ppf(1.0 - SWITCH_ALPHA / m))
    out = [msp]
    for c, s in zip(candidates[1:], se, strict=True):
        d = msp.aurc - c.aurc
        z = d / s if s > 0 else (math.inf if d > 0 else 0.0)
        out.append(replace(c, delta_aurc=d, z=z))
    eligible = [c for c in out[1:] if c.z > crit]
    rule = (f"paired bootstrap ({BOOT_RESAMPLES} resamples): switch only if z = AURC gain/SE > "
            f"{crit:.2f} (one-sided {SWITCH_ALPHA:g}, Bonferroni over {m})")
    if not eligible:
        best = max(out[1:], key=lambda c: c.delta_aurc)
        return "msp", (f"MSP kept: no significant improvement; best challenger {best.spec} "
                       f"AURC gain {best.delta_aurc:+.5f}, z = {best.z:.2f}; {rule}"), out
    best = min(eligible, key=lambda c: c.aurc)
    return best.spec, (f"{best.spec} replaces MSP: AURC {best.aurc:.5f} < {msp.aurc:.5f}, "
                       f"z = {best.z:.2f}; {rule}"), out


def choose_score(logits: np.ndarray, labels: np.ndarray, score: str = "auto",
                 p_grid: Sequence[float] = P_GRID, chunk: int = CHUNK,
                 temperature: float | None = None) -> ScoreChoice:
    """Fit the temperature and choose the score on the tuning split.

    Args:
        logits: (n, K) tuning logits (any real dtype; processed in float64 blocks).
        labels: (n,) true labels.
        score: ``"auto"`` (the rule above) or a fixed spec such as ``"msp"`` or ``"pnorm:2"``.
        p_grid: p values tried by ``auto``.
        temperature: fixed temperature (``--temperature``); fitted on the tuning split when None.
    """
    z = np.asarray(logits)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or len(z) != len(y) or len(y) < 2:
        raise ChooseError(f"need (n, K) logits and n labels with n ≥ 2; got {z.shape} and {y.shape}")
    K = z.shape[1]
    errors = predictions(z, chunk) != y
    if temperature is None:
        temperature = fit_temperature(z, y, chunk)
        log.info("temperature %.4f (tuning NLL minimum)", temperature)

    specs = ["msp"]
    if score == "auto":
        if K >= 3:
            specs += [f"pnorm:{p:g}" for p in p_grid]
        else:  # p ≥ 1 norms are constant for K = 2; pnorm:0 (half the margin) still ranks
            specs.append("pnorm:0")
    else:
        fixed = create_score(score, temperature)   # validates the spec (lists valid ones on error)
        if fixed.min_classes > K:
            fixed(np.zeros((1, K)))                # raises the score's own K-too-small message
        if fixed.spec != "msp":
            specs.append(fixed.spec)

    score_sets = [score_in_chunks(create_score(s, temperature), z, chunk) for s in specs]
    candidates = [evaluate_candidate(s, v, errors) for s, v in zip(specs, score_sets, strict=True)]
    if score == "auto" and len(candidates) > 1:
        chosen, reason, candidates = _switch_on_evidence(candidates, score_sets, errors)
        if K < 3:
            reason += " (K = 2: only pnorm:0 is a candidate, p ≥ 1 norms are constant)"
    else:
        chosen = specs[-1]
        reason = f"fixed by --score {score}"
    return ScoreChoice(spec=chosen, temperature=temperature, candidates=candidates, reason=reason,
                       error_rate=float(errors.mean()),
                       tune_scores=score_sets[[c.spec for c in candidates].index(chosen)])
