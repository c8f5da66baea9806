"""Cascade certification (serve/calibration/cascade.py): counts, path, budgets, validity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import cascade_small as cs
from bench import cascade_validity as cv
from serve.calibration import cascade_plan
from serve.calibration.cascade import certify_cascade
from serve.calibration.cascade_grid import ACCEPT_ALL, grid_counts, stage_grid
from serve.calibration.cascade_plan import BudgetError, Budgets, _pareto_path, plan_cascade
from serve.calibration.certify import CertifyError


def _brute(s: np.ndarray, e: np.ndarray, lam: tuple[float, ...]) -> tuple[list, list, list]:
    n, k_stages = s.shape
    left = np.ones(n, bool)
    acc, err, reach = [], [], []
    for k in range(k_stages):
        reach.append(int(left.sum()))
        a = left & (s[:, k] >= lam[k])
        acc.append(int(a.sum()))
        err.append(int((a & e[:, k]).sum()))
        left &= ~a
    return acc, err, reach


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 3), st.integers(1, 60), st.integers(0, 2**32 - 1))
def test_grid_counts_match_a_loop_over_every_vector(k_stages, n, seed):
    rng = np.random.default_rng(seed)
    s = np.round(rng.normal(size=(n, k_stages)), 1)           # ties on purpose
    e = rng.random((n, k_stages)) < 0.3
    grids = tuple(stage_grid(s[:, k], 5) for k in range(k_stages))
    c = grid_counts(s, e, grids)
    for idx in np.ndindex(*(len(g) for g in grids)):
        lam = tuple(g[j] for g, j in zip(grids, idx, strict=True))
        acc, err, reach = _brute(s, e, lam)
        assert c.accepted[idx].tolist() == acc
        assert c.errors[idx].tolist() == err
        assert c.reach[idx].tolist() == reach


def test_grid_ends_with_accept_none_and_starts_with_accept_all():
    g = stage_grid(np.array([0.3, 0.1, 0.2, 0.2]), 10)
    assert g[0] == ACCEPT_ALL and g[1] == 0.1 and math.isinf(g[-1]) and np.all(np.diff(g) > 0)
    assert np.isfinite(g[0]) and (np.array([-1e300, -5.0, 0.0]) >= g[0]).all()


def test_a_stage_that_scores_every_tuning_sample_1_can_still_accept_everything():
    """digits' ResNet at its fitted T scored all 80 tuning samples 1.0: the lowest grid point was
    1.0, so 6 certification samples scored below it went to people although the ResNet alone
    was right on all of them (issue 27d). Accept-all is on the grid and its path now."""
    rng = np.random.default_rng(0)
    n = 300
    s = np.column_stack([rng.random(n), np.ones(n)])              # stage 2: every score 1.0
    e = np.column_stack([rng.random(n) < 0.3, np.zeros(n, bool)])
    plan = plan_cascade(s, e, 700, 0.05, 0.1, points=20)
    lam = [plan.grids[k][plan.path[-1][k]] for k in range(2)]
    assert lam[1] == ACCEPT_ALL
    s_cert = np.column_stack([rng.random(700), np.where(rng.random(700) < 0.05, 0.99, 1.0)])
    e_cert = np.column_stack([rng.random(700) < 0.3, np.zeros(700, bool)])
    cert = certify_cascade(s_cert, e_cert, plan, 0.05, 0.1)
    assert cert.certified and cert.human_share == 0.0


def test_the_front_is_pareto_and_the_path_strict_to_permissive():
    s, e, _ = cv.logistic(np.random.default_rng(1), 900)
    plan = plan_cascade(s, e, 2100, 0.05, 0.1, points=40)
    assert np.all(np.diff(plan.tune_accepted) > 0)             # strict → permissive
    assert 0 <= plan.start < len(plan.path)
    c = grid_counts(s, e, plan.grids)
    acc, err = c.total_accepted.reshape(-1), c.total_errors.reshape(-1)
    calls = c.reach[..., 1:].sum(axis=-1).reshape(-1)
    front = _pareto_path(np.flatnonzero(acc > 0), acc, err, calls)
    assert np.all(np.diff(acc[front]) > 0) and np.all(np.diff(err[front]) > 0)
    for a, k in zip(acc[front], err[front], strict=True):      # nothing dominates a front point
        assert not np.any((acc >= a) & (err < k))


def test_where_r_star_leaves_room_the_path_spares_stage_two(monkeypatch):
    """A loose r*: stage 1 alone is safe for most samples, so the certified vector sends few to
    stage 2 though stage 2 errs less (stage 2 alone, as good on the tuning split, sends all)."""
    s, e, _ = cv.logistic(np.random.default_rng(6), 3000)
    shares = {}
    for slack in (0.0, cascade_plan.CHEAP_SLACK):
        monkeypatch.setattr(cascade_plan, "CHEAP_SLACK", slack)
        plan = plan_cascade(s[:900], e[:900], 2100, 0.3, 0.1, points=40)
        cert = certify_cascade(s[900:], e[900:], plan, 0.3, 0.1)
        assert cert.certified and cert.human_share < 0.02, cert.stage_rows()
        shares[slack] = cert.reach[1] / cert.n
    assert shares[cascade_plan.CHEAP_SLACK] <= shares[0.0] and shares[cascade_plan.CHEAP_SLACK] < 0.33, shares


def test_stage_share_budget_is_honoured_with_its_upper_bound():
    rng = np.random.default_rng(2)
    s, e, _ = cv.logistic(rng, 3000)
    free_plan = plan_cascade(s[:900], e[:900], 2100, 0.05, 0.1)
    free = certify_cascade(s[900:], e[900:], free_plan, 0.05, 0.1)
    assert free.certified and free.reach[1] / free.n > 0.7      # unconstrained: stage 2 busy
    b = Budgets(max_stage_share={2: 0.7})
    plan = plan_cascade(s[:900], e[:900], 2100, 0.05, 0.1, b)
    cert = certify_cascade(s[900:], e[900:], plan, 0.05, 0.1, b)
    assert cert.certified and cert.reach_upper[1] <= 0.7
    assert cert.human_share > free.human_share                  # the budget costs people


def test_unmeetable_budgets_say_why_with_numbers():
    s, e, _ = cv.logistic(np.random.default_rng(3), 3000)
    plan = plan_cascade(s[:900], e[:900], 2100, 0.05, 0.1)
    with pytest.raises(BudgetError, match=r"--max-defer 0.01: the lowest human share certified "
                       r"at r\* = 0.05 is 0\.\d{4} \(upper 0.9 bound 0\.\d{4}\)"):
        certify_cascade(s[900:], e[900:], plan, 0.05, 0.1, Budgets(max_defer=0.01))
    with pytest.raises(BudgetError, match=r"stage 2: lowest tuning share"):
        plan_cascade(s[:900], e[:900], 2100, 0.05, 0.1, Budgets(max_stage_share={2: 0.0}))
    with pytest.raises(CertifyError, match="stages 2..2 can be limited"):
        plan_cascade(s[:900], e[:900], 2100, 0.05, 0.1, Budgets(max_stage_share={1: 0.5}))


def test_nothing_certified_says_why():
    rng = np.random.default_rng(4)
    s = rng.random((400, 2))
    e = rng.random((400, 2)) < 0.5                              # scores carry no information
    plan = plan_cascade(s[:120], e[:120], 280, 0.05, 0.1)
    cert = certify_cascade(s[120:], e[120:], plan, 0.05, 0.1)
    assert not cert.certified and "failed its binomial test" in cert.detail


@pytest.mark.parametrize("model", sorted(cv.MODELS))
def test_certificate_is_valid_over_200_repetitions(model):
    """Violation rate ≤ δ within binomial slack (P < 0.001 to exceed when the rate is δ), and
    the certificate is not vacuous: almost every repetition certifies, people see a minority."""
    v = cv.run(model, reps=200, n=2000, target_risk=0.05, delta=0.1, points=60)
    assert v.violations <= v.slack_limit, v.line()
    assert v.certified >= 170, v.line()
    assert v.mean_human < 0.6 and v.mean_true_risk > 0.025, v.line()



def test_small_set_cascade_is_no_worse_than_its_best_stage_and_spares_stage_two():
    """270 samples (81 tuning, 189 certification), r* = 0.05, δ = 0.1 (bench/cascade_small.py):
    the human share matches the better single stage's planned LTT on the same split within
    noise, and the cascade does not send (nearly) everything to stage 2, as issue 27's planner
    with its r* prior did (0.99 stage-2 calls per sample)."""
    r = cs.run(reps=40)
    best_alone = r.alone.mean(axis=0).min()
    assert r.human.mean() <= best_alone + 0.004, r.line()
    assert r.calls.mean() < 0.6, r.line()
