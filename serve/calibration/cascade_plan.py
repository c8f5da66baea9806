"""Plan a cascade's certification from the tuning split alone: the grid of threshold vectors,
the Pareto path tested strict → permissive, and its start (the *grid* and *path* steps of
:mod:`serve.calibration.cascade`, whose docstring gives the whole procedure), plus the budgets
the path must respect. Nothing here sees the certification split, so the sequence
:func:`serve.calibration.cascade.certify_cascade` tests is pre-registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from serve.calibration.binomial import clopper_pearson_upper
from serve.calibration.cascade_grid import check_arrays, grid_counts, grid_sums, stage_grid
from serve.calibration.certify import CertifyError, check_risk_and_delta
from serve.calibration.plan import predicted_pass_counts
from serve.errors import AbstainError

GRID_POINTS = {2: 200, 3: 30}      # thresholds per stage (the grid has Gᴷ vectors)
START_FRACTION = 0.95             # the start rule (see _start)
START_SLACK = (2.0, 0.05)
START_RULE = "fraction"
PASS_DRAWS = 512                  # Monte Carlo draws per (accepted, errors) pair (seeded)
PATH_SLACK = 0.05                 # a path this close in predicted gain may win by fewer calls
CHEAP_FROM = 0.99                 # a front point this likely to pass may be swapped for one
CHEAP_SLACK = 0.01                # … that is at most this much less likely but spares stage 2


class BudgetError(AbstainError):
    """A compute or reviewer budget that no certified threshold vector meets."""

    status = 422
    reason = "budget_not_met"


@dataclass(frozen=True)
class Budgets:
    """``max_defer``: human share; ``max_stage_share[k]``: share of samples reaching stage k (≥ 2)."""

    max_defer: float | None = None
    max_stage_share: dict[int, float] = field(default_factory=dict)

    def validate(self, n_stages: int) -> Budgets:
        if self.max_defer is not None and not 0.0 < self.max_defer <= 1.0:
            raise CertifyError(f"--max-defer must be in (0, 1]; got {self.max_defer!r}")
        for k, share in self.max_stage_share.items():
            if not 2 <= k <= n_stages:
                raise CertifyError(f"--max-stage-share names stage {k}, but stages 2..{n_stages} "
                                   "can be limited (stage 1 sees every sample)")
            if not 0.0 <= share <= 1.0:
                raise CertifyError(f"--max-stage-share {k}={share!r}: a share must be in [0, 1]")
        return self


NO_BUDGETS = Budgets()


def share_upper(count: np.ndarray, n: int, delta: float) -> np.ndarray:
    return clopper_pearson_upper(np.asarray(count), np.full(np.shape(count), n), delta)


@dataclass(frozen=True)
class CascadePlan:
    """Pre-registered hypotheses: threshold vectors (as grid indices) strict → permissive."""

    grids: tuple[np.ndarray, ...]
    path: np.ndarray             # (P, K) grid indices
    tune_accepted: np.ndarray    # (P,)
    tune_errors: np.ndarray      # (P,)
    tune_reach: np.ndarray       # (P, K)
    pass_prob: np.ndarray        # (P,)
    start: int
    n_tune: int
    n_grid: int                  # vectors on the grid
    n_feasible: int              # … meeting the compute budgets on the tuning split
    kind: str = "cascade"        # the path tested: the cascade's, or "stage k alone"

    def thresholds(self, i: int) -> list[float]:
        return [float(self.grids[k][j]) for k, j in enumerate(self.path[i])]

    def describe(self) -> str:
        s = self.start
        return (f"{len(self.path)} vectors on the {self.kind} path of {self.n_feasible} in budget "
                f"(grid {self.n_grid}) from {self.n_tune} tuning samples; start at path index "
                f"{s} (tuning accepted share {self.tune_accepted[s] / self.n_tune:.4f}, "
                f"predicted pass probability {self.pass_prob[s]:.2f})")


def plan_cascade(tune_scores: np.ndarray, tune_errors: np.ndarray, n_cert: int,
                 target_risk: float, delta: float, budgets: Budgets = NO_BUDGETS,
                 points: int | None = None, tune_proxy: np.ndarray | None = None) -> CascadePlan:
    """Grid, Pareto path and start from the tuning split alone (see module doc).

    Args:
        tune_proxy: optional ``(n, K)`` expected errors (e.g. 1 − the calibrated top-class
            probability) that order the path instead of the 0/1 errors: with few tuning errors
            the 0/1 front has only a handful of points, a continuous one is dense. The start and
            the test use the 0/1 errors whatever orders the path.
    """
    check_risk_and_delta(target_risk, delta)
    s, e = check_arrays(tune_scores, tune_errors)
    n, k_stages = s.shape
    budgets.validate(k_stages)
    g = points or GRID_POINTS[k_stages]
    grids = tuple(stage_grid(s[:, k], g) for k in range(k_stages))
    c = grid_counts(s, e, grids)
    idx = np.indices(c.accepted.shape[:-1]).reshape(k_stages, -1).T       # (V, K)
    acc = c.total_accepted.reshape(-1)
    err = c.total_errors.reshape(-1)
    reach = c.reach.reshape(-1, k_stages)
    ok = np.ones(len(acc), bool)
    for k, share in budgets.max_stage_share.items():   # predicted to hold on n_cert samples
        ok &= share_upper(np.rint(reach[:, k - 1] / n * n_cert), n_cert, delta) <= share
    ok &= acc > 0
    if not ok.any():
        raise BudgetError(_no_vector_in_budget(budgets, reach, n))
    if tune_proxy is not None:
        proxy = np.asarray(tune_proxy, dtype=np.float64)
        if proxy.shape != s.shape or not np.isfinite(proxy).all():
            raise CertifyError(f"tune_proxy must be finite with shape {s.shape}")
        order_err = grid_sums(s, proxy, grids)[1].sum(axis=-1).reshape(-1)
    else:
        order_err = err
    calls = reach[:, 1:].sum(axis=1)
    cand = np.flatnonzero(ok)
    front = _pareto_path(cand, acc, order_err, calls)
    memo: dict[tuple[int, int], float] = {}

    def pass_prob(v: np.ndarray) -> np.ndarray:        # once per distinct (accepted, errors)
        pairs = np.stack([acc[v], err[v]], axis=1)
        new = np.unique(pairs[[(int(a), int(k)) not in memo for a, k in pairs]], axis=0)
        if len(new):
            p = predicted_pass_counts(new[:, 0], new[:, 1], n, n_cert, target_risk, delta,
                                      draws=PASS_DRAWS)
            memo.update(zip(map(tuple, new.tolist()), p.tolist(), strict=True))
        return np.array([memo[(int(a), int(k))] for a, k in pairs], dtype=np.float64)

    paths = {"cascade": _cheapest(front, cand, acc, order_err, calls, pass_prob)}
    last = np.array([len(gr) - 1 for gr in grids])                    # +∞: accepts nothing
    for k in range(k_stages):
        alone = cand[((idx[cand] == last) | (np.arange(k_stages) == k)).all(axis=1)]
        if len(alone):
            paths[f"stage {k + 1} alone"] = _pareto_path(alone, acc, order_err, calls)
    kind, path, pp, start = _choose_path(paths, acc, err, calls, n, pass_prob)
    return CascadePlan(grids=grids, path=idx[path], tune_accepted=acc[path],
                       tune_errors=err[path], tune_reach=reach[path], pass_prob=pp, start=start,
                       n_tune=n, n_grid=len(acc), n_feasible=int(ok.sum()), kind=kind)


def _start(pp: np.ndarray, n_acc: np.ndarray, k_err: np.ndarray, n: int) -> int:
    """Where the fixed sequence starts on a path (plan.py's rules, on prior-free probabilities).

    ``"fraction"``: the most permissive point with pass probability ≥ ``START_FRACTION`` × the
    best and failure probability ≤ min(2 × the smallest, smallest + 0.05). ``"coverage"``
    (plan.py's default): largest pass probability × tuning accepted share; without plan.py's
    floored test beside it, that start fails its first test too often (docs/cascade.md).
    """
    if START_RULE == "coverage":
        gain = pp * n_acc / n
        if gain.max() <= 0.0:
            gain = -(k_err + 0.5) / (n_acc + 1.0)
        return int(np.flatnonzero(gain >= gain.max() - 1e-12)[-1])
    best = float(pp.max())
    f = 1.0 - best
    need = max(START_FRACTION * best, 1.0 - min(START_SLACK[0] * f, f + START_SLACK[1]))
    return int(np.flatnonzero(pp >= need - 1e-12)[-1])


def _choose_path(paths: dict[str, np.ndarray], acc: np.ndarray, err: np.ndarray,
                 calls: np.ndarray, n: int, pass_prob: Callable[[np.ndarray], np.ndarray]
                 ) -> tuple[str, np.ndarray, np.ndarray, int]:
    """The path to test: the largest predicted gain (the largest pass probability × tuning
    accepted share from its start on), and among paths within ``PATH_SLACK`` of it the fewest
    later-stage calls where that gain is reached (the cascade's own path first on ties). The cascade path follows the stage with
    the lower expected errors; on a small tuning split that can be stage 2 for every sample
    although stage 1 alone answers as many. A function of the tuning split only, so the test
    on the certification split stays a pre-registered fixed sequence."""
    scored = []
    for kind, path in paths.items():
        pp = pass_prob(path)
        start = _start(pp, acc[path], err[path], n)
        gain = pp[start:] * acc[path[start:]] / n
        at = path[start + int(np.argmax(gain))]
        scored.append((float(gain.max()), calls[at], kind, path, pp, start))
    best = max(s[0] for s in scored)
    near = [s for s in scored if s[0] >= (1.0 - PATH_SLACK) * best - 1e-12]
    _, _, kind, path, pp, start = min(near, key=lambda s: s[1])
    return kind, path, pp, start


def _cheapest(front: np.ndarray, cand: np.ndarray, acc: np.ndarray, err: np.ndarray,
              calls: np.ndarray, pass_prob: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Each front point predicted to pass with probability ≥ ``CHEAP_FROM`` replaced by the vector
    with the fewest later-stage calls among those accepting as many (up to the next front point)
    whose predicted pass probability is within ``CHEAP_SLACK`` of it: where r* leaves room, the
    path runs through vectors that spare stage 2; where it is tight (a fixed sequence's survival
    compounds every small loss of pass probability), it stays on the front."""
    edges = acc[front]
    b = np.searchsorted(edges, acc[cand], side="right") - 1            # front bin of each vector
    c = cand[b >= 0]
    b = b[b >= 0]
    cheaper = calls[c] < calls[front[b]]                               # only these can replace
    c, b = c[cheaper], b[cheaper]
    if not len(c):
        return front
    pf = pass_prob(front)[b]
    likely = pf >= CHEAP_FROM                      # only these are evaluated (Monte Carlo cost)
    c, b, pf = c[likely], b[likely], pf[likely]
    if not len(c):
        return front
    keep = pass_prob(c) >= pf - CHEAP_SLACK
    c, b = c[keep], b[keep]
    if not len(c):
        return front
    order = np.lexsort((-acc[c], err[c], calls[c], b))
    c, b = c[order], b[order]
    first = np.concatenate(([True], b[1:] != b[:-1]))
    out = front.copy()
    out[b[first]] = c[first]
    return out


def _pareto_path(cand: np.ndarray, acc: np.ndarray, err: np.ndarray, calls: np.ndarray
                 ) -> np.ndarray:
    """The Pareto front of ``cand`` strict → permissive: for each accepted count the fewest
    (expected) errors, then the fewest calls of later stages; errors fall as acceptance falls."""
    order = cand[np.lexsort((calls[cand], err[cand], -acc[cand]))]
    run_min = np.minimum.accumulate(err[order])
    keep = np.concatenate(([True], err[order][1:] < run_min[:-1]))
    return order[keep][::-1]


def _no_vector_in_budget(budgets: Budgets, reach: np.ndarray, n: int) -> str:
    parts = [f"stage {k}: lowest tuning share {reach[:, k - 1].min() / n:.4f} vs budget {b:g}"
             for k, b in sorted(budgets.max_stage_share.items())]
    return ("no threshold vector meets --max-stage-share on the tuning split with room for the "
            "certification bound (" + "; ".join(parts) + "): raise the budget")
