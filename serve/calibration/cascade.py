"""Certify a cascade as one system: per-stage thresholds with P(system risk ≤ r*) ≥ 1 − δ.

Stage k (small → large) accepts a sample that reaches it when its score is ≥ λ_k and defers it
to stage k + 1 otherwise; the last stage's deferrals go to a person. The *system risk* is the
error rate over every sample any stage accepts (each judged by the stage that accepted it).
Derivation and validity: docs/METHODS.md ("Cascades") and docs/cascade.md. The grid and path
(tuning split only) are planned in :mod:`serve.calibration.cascade_plan`; this module tests them.

* **grid** (tuning split): per stage, thresholds at evenly spaced tuning coverages plus +∞
  ("this stage accepts nothing": stage 1 at +∞ is the last stage alone).
* **path** (tuning split): of every threshold vector on the grid, the Pareto front of (accepted
  ↑, errors ↓) among those meeting the compute budgets, ordered strict → permissive (errors, or
  a continuous proxy of them such as 1 − the calibrated top-class probability, which gives a
  dense front where a good model makes few tuning errors); each front point is then swapped for
  the vector with the fewest later-stage calls that accepts as many and is about as likely to
  pass (``CHEAP_SLACK``), so where r* leaves room the path spares stage 2. Beside this
  cascade path, each stage's own thresholds (the others at +∞) form a path too, and the one
  tested is chosen on the tuning split (:func:`_choose_path`), so a small set does not leave the
  cascade worse than its own stage 1 alone. Pass probabilities are :mod:`serve.calibration.plan`'s
  prior-free ones with both certification counts random
  (:func:`~serve.calibration.plan.predicted_pass_counts`); issue 27's prior of 200
  pseudo-samples at r* kept them below 0.5 on small sets (docs/cascade.md, "Small calibration
  sets").
* **test** (certification split): fixed-sequence testing from the start toward permissive, each
  vector with the exact binomial p-value ``BinomCDF(k; n, r*)`` of its accepted set, stopping at
  the first failure. Every vector certified is valid simultaneously with probability ≥ 1 − δ, so
  the one deployed may be chosen among them on the certification split: the smallest human share
  whose budgets hold with (1 − δ) Clopper–Pearson upper bounds.

Counting is vectorised over the whole grid (serve.calibration.cascade_grid), O(n + Gᴷ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve.calibration.binomial import binomial_p_values, clopper_pearson_upper
from serve.calibration.cascade_grid import check_arrays, grid_counts
from serve.calibration.cascade_plan import (
    NO_BUDGETS,
    BudgetError,
    Budgets,
    CascadePlan,
    share_upper,
)
from serve.calibration.certify import check_risk_and_delta, zero_error_minimum

PROCEDURE = ("fixed sequence on a Pareto path of threshold vectors (grid, path and start from "
             "the tuning split)")


@dataclass(frozen=True)
class CascadeCertificate:
    """What certification found. ``thresholds`` is None when nothing was certified; a stage
    threshold of +∞ (None in JSON) means that stage accepts nothing."""

    thresholds: list[float] | None
    target_risk: float
    delta: float
    n: int
    accepted: list[int]          # per stage
    errors: list[int]            # per stage
    reach: list[int]             # samples reaching each stage
    human_upper: float           # (1 − δ) CP upper bound on the human share
    reach_upper: list[float]     # (1 − δ) CP upper bounds on each stage's share
    risk_upper_bound: float      # post-selection CP bound (indicative)
    certified_count: int
    path_length: int
    detail: str
    start: str
    procedure: str = PROCEDURE

    @property
    def certified(self) -> bool:
        return self.thresholds is not None

    @property
    def n_accepted(self) -> int:
        return sum(self.accepted)

    @property
    def n_errors(self) -> int:
        return sum(self.errors)

    @property
    def risk(self) -> float:
        return self.n_errors / self.n_accepted if self.n_accepted else 0.0

    @property
    def human_share(self) -> float:
        return 1.0 - self.n_accepted / self.n if self.n else 1.0

    def stage_rows(self) -> list[dict[str, Any]]:
        """Per stage: reached, accepted share (of all samples), risk among its acceptances."""
        return [{"stage": k + 1, "reach_share": r / self.n, "reach_upper": ru,
                 "accepted_share": a / self.n, "risk": (e / a if a else 0.0),
                 "accepted": a, "errors": e}
                for k, (a, e, r, ru) in enumerate(zip(self.accepted, self.errors, self.reach,
                                                      self.reach_upper, strict=True))]


def certify_cascade(scores: np.ndarray, errors: np.ndarray, plan: CascadePlan,
                    target_risk: float, delta: float,
                    budgets: Budgets = NO_BUDGETS) -> CascadeCertificate:
    """Run the planned fixed sequence on certification data and choose among what it certifies.

    Raises:
        BudgetError: vectors were certified, but none meets a budget (the message has numbers).
    """
    check_risk_and_delta(target_risk, delta)
    s, e = check_arrays(scores, errors)
    n, k_stages = s.shape
    c = grid_counts(s, e, plan.grids)
    at = tuple(plan.path.T)
    acc_k, err_k, reach_k = c.accepted[at], c.errors[at], c.reach[at]     # (P, K)
    acc, err = acc_k.sum(axis=1), err_k.sum(axis=1)
    p = binomial_p_values(err, acc, target_risk)
    failed = p[plan.start:] > delta
    n_ok = int(failed.argmax()) if failed.any() else len(failed)
    start = plan.describe()
    empty = CascadeCertificate(None, target_risk, delta, n, [0] * k_stages, [0] * k_stages,
                               [0] * k_stages, 1.0, [1.0] * k_stages, 0.0, 0, len(plan.path),
                               "", start)
    if n < zero_error_minimum(target_risk, delta):
        return _replace(empty, detail=f"only {n} certification samples, fewer than "
                        f"{zero_error_minimum(target_risk, delta)}, the floor that certifies "
                        f"risk ≤ {target_risk:g} at δ = {delta:g} even with zero errors")
    if n_ok == 0:
        s0 = plan.start
        return _replace(empty, detail=(
            f"the first tested vector (thresholds {_fmt(plan.thresholds(s0))}: accepting "
            f"{int(acc[s0])} of {n} certification samples, {int(err[s0])} errors, risk "
            f"{err[s0] / max(acc[s0], 1):.4f}) failed its binomial test (p = {p[s0]:.3g} > δ = "
            f"{delta:g}); more calibration data or a higher --target-risk may certify"
            + _budget_note(plan, budgets)))
    ok = np.arange(plan.start, plan.start + n_ok)
    human_up = share_upper(n - acc[ok], n, delta)
    reach_up = share_upper(reach_k[ok], n, delta)                        # (m, K)
    feasible = np.ones(len(ok), bool)
    for k, share in budgets.max_stage_share.items():
        feasible &= reach_up[:, k - 1] <= share
    if budgets.max_defer is not None:
        feasible &= human_up <= budgets.max_defer
    if not feasible.any():
        raise BudgetError(_budget_why(budgets, ok, acc, reach_k, human_up, reach_up, n,
                                      target_risk, delta))
    f = np.flatnonzero(feasible)
    best = f[np.lexsort((reach_k[ok[f], 1:].sum(axis=1), -acc[ok[f]]))[0]]
    i = int(ok[best])
    k_err, n_acc = int(err[i]), int(acc[i])
    return CascadeCertificate(
        thresholds=plan.thresholds(i), target_risk=target_risk, delta=delta, n=n,
        accepted=[int(v) for v in acc_k[i]], errors=[int(v) for v in err_k[i]],
        reach=[int(v) for v in reach_k[i]], human_upper=float(human_up[best]),
        reach_upper=[float(v) for v in reach_up[best]],
        risk_upper_bound=float(clopper_pearson_upper(k_err, n_acc, delta)),
        certified_count=n_ok, path_length=len(plan.path),
        detail=f"fixed sequence certified {n_ok} of {len(plan.path) - plan.start} vectors from "
               f"the start; deployed the one with the smallest human share within budget "
               f"(path index {i})", start=start)


def _budget_note(plan: CascadePlan, budgets: Budgets) -> str:
    if not budgets.max_stage_share:
        return ""
    shares = ", ".join(f"{k}={v:g}" for k, v in sorted(budgets.max_stage_share.items()))
    return (f". Within --max-stage-share {shares} the tuning split predicted a pass probability "
            f"of at most {float(plan.pass_prob.max()):.2f} for any vector: the budget is likely "
            "what cannot be met at this r*")


def _replace(c: CascadeCertificate, **kw: Any) -> CascadeCertificate:
    from dataclasses import replace

    return replace(c, **kw)


def _fmt(thresholds: list[float]) -> str:
    return "(" + ", ".join("+∞" if math.isinf(t) else f"{t:.4g}" for t in thresholds) + ")"


def _budget_why(budgets: Budgets, ok: np.ndarray, acc: np.ndarray, reach: np.ndarray,
                human_up: np.ndarray, reach_up: np.ndarray, n: int, target_risk: float,
                delta: float) -> str:
    """Why no certified vector meets the budgets, with the best each budget could get."""
    parts = []
    if budgets.max_defer is not None:
        j = int(np.argmin(human_up))
        parts.append(f"--max-defer {budgets.max_defer:g}: the lowest human share certified at "
                     f"r* = {target_risk:g} is {1 - acc[ok[j]] / n:.4f} (upper {1 - delta:g} "
                     f"bound {human_up[j]:.4f})")
    for k, share in sorted(budgets.max_stage_share.items()):
        j = int(np.argmin(reach_up[:, k - 1]))
        parts.append(f"--max-stage-share {k}={share:g}: the lowest stage-{k} share among the "
                     f"certified vectors is {reach[ok[j], k - 1] / n:.4f} (upper bound "
                     f"{reach_up[j, k - 1]:.4f})")
    return (f"{len(ok)} threshold vectors were certified at r* = {target_risk:g}, δ = {delta:g} "
            f"on {n} samples, but none meets every budget: " + "; ".join(parts)
            + ". Raise the budget or r*, or add calibration data")
