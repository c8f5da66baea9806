"""Tuning-split choices: the temperature and the confidence score (METHODS.md §2).

Cattelan & Silva's rule: MSP (at the fitted temperature) is the incumbent; a centred
``pnorm:p`` from the grid p = 0…10 replaces it only if its AURC is *strictly* lower. With K = 2
the centred p-norm is constant, so only MSP is considered. Scores come from serve.scores and
AURCs from serve.metrics: the functions the server and `abstain evaluate` use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from serve import metrics
from serve.errors import AbstainError
from serve.scores import Score, create_score, logsumexp

log = logging.getLogger(__name__)

CHUNK = 4096                        # rows per float64 block: fits in cache, no page-fault churn
P_GRID = tuple(range(11))           # pnorm:0 (centred MaxLogit) … pnorm:10
T_BOUNDS = (0.01, 100.0)
CURVE_POINTS = 800                  # risk–coverage points kept per candidate for plotting


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


@dataclass(frozen=True)
class ScoreChoice:
    """The chosen score spec, the fitted temperature, and every candidate considered."""

    spec: str
    temperature: float
    candidates: list[Candidate]
    reason: str
    error_rate: float

    @property
    def score(self) -> Score:
        return create_score(self.spec, self.temperature)

    def aurcs(self) -> dict[str, float]:
        return {c.spec: c.aurc for c in self.candidates}


def _thin(curve: metrics.RiskCoverageCurve, points: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.unique(np.linspace(0, len(curve.thresholds) - 1, points).round().astype(np.int64))
    return curve.coverage[idx], curve.risk[idx]


def evaluate_candidate(spec: str, scores: np.ndarray, errors: np.ndarray) -> Candidate:
    curve = metrics.risk_coverage_curve(scores, errors)
    cov, risk = _thin(curve, CURVE_POINTS)
    return Candidate(spec=spec, aurc=metrics.aurc(scores, errors, curve),
                     e_aurc=metrics.e_aurc(scores, errors, curve),
                     auroc=metrics.auroc(scores, errors, curve), coverage=cov, risk=risk)


def choose_score(logits: np.ndarray, labels: np.ndarray, score: str = "auto",
                 p_grid: Sequence[float] = P_GRID, chunk: int = CHUNK) -> ScoreChoice:
    """Fit the temperature and choose the score on the tuning split.

    Args:
        logits: (n, K) tuning logits (any real dtype; processed in float64 blocks).
        labels: (n,) true labels.
        score: ``"auto"`` (the rule above) or a fixed spec such as ``"msp"`` or ``"pnorm:2"``.
        p_grid: p values tried by ``auto``.
    """
    z = np.asarray(logits)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or len(z) != len(y) or len(y) < 2:
        raise ChooseError(f"need (n, K) logits and n labels with n ≥ 2; got {z.shape} and {y.shape}")
    K = z.shape[1]
    errors = predictions(z, chunk) != y
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

    candidates = [evaluate_candidate(s, score_in_chunks(create_score(s, temperature), z, chunk), errors)
                  for s in specs]
    incumbent = candidates[0]
    if score == "auto":
        best = incumbent
        for c in candidates[1:]:
            if c.aurc < best.aurc:
                best = c
        reason = ("MSP kept: no p-norm has a strictly lower AURC" if best is incumbent else
                  f"{best.spec} replaces MSP: AURC {best.aurc:.5f} < {incumbent.aurc:.5f}")
        if K < 3:
            reason += " (K = 2: only pnorm:0 is a candidate, p ≥ 1 norms are constant)"
        chosen = best.spec
    else:
        chosen = specs[-1]
        reason = f"fixed by --score {score}"
    return ScoreChoice(spec=chosen, temperature=temperature, candidates=candidates, reason=reason,
                       error_rate=float(errors.mean()))
