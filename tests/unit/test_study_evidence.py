"""Null simulations: the study's evidence rule and claim verdicts err at ≤ ALPHA in both directions.

Model of one study number: per seed s, ``value = truth + σ_seed·N_s + τ·N_0``, where N_0 is the
noise of the one test set every run shares; the bootstrap over test samples is modelled as
``τ·N_b`` around the observed values, the same draw for every run of a resample (paired).
"""

from __future__ import annotations

import numpy as np
import pytest

from training.study_evidence import ALPHA, compare
from training.study_verdicts import claim1

REPS, B, S = 1500, 200, 3
SLACK = 0.02                          # ≈ 3.5 binomial standard errors at 1,500 repetitions


def _draw(rng, truth: float, sigma: float, tau: float) -> tuple[np.ndarray, np.ndarray]:
    d = truth + sigma * rng.standard_normal(S) + tau * rng.standard_normal()
    boot = d[None, :] + tau * rng.standard_normal((B, 1))   # (B, S): paired resamples
    return d, boot


@pytest.mark.parametrize(("sigma", "tau"), [(1.0, 0.05), (0.05, 1.0), (1.0, 1.0)])
def test_no_difference_is_called_clear_in_either_direction_at_most_alpha(sigma, tau):
    rng = np.random.default_rng(1)
    signs = np.array([compare(*_draw(rng, 0.0, sigma, tau)).sign for _ in range(REPS)])
    assert (signs > 0).mean() <= ALPHA + SLACK
    assert (signs < 0).mean() <= ALPHA + SLACK
    # … and the rule is not vacuous: a large true difference is found.
    big = [compare(*_draw(rng, 6 * max(sigma, tau), sigma, tau)).sign for _ in range(200)]
    assert np.mean(np.array(big) > 0) > 0.5


@pytest.mark.parametrize(("sigma", "tau"), [(0.3, 0.1), (0.1, 0.3)])
def test_equivalence_at_the_margin_is_declared_at_most_alpha(sigma, tau):
    rng = np.random.default_rng(2)
    margin = 1.0
    for truth in (margin, -margin):
        eq = [compare(*_draw(rng, truth, sigma, tau)).equivalent(margin) for _ in range(REPS)]
        assert np.mean(eq) <= ALPHA + SLACK
    eq0 = [compare(*_draw(rng, 0.0, sigma, tau)).equivalent(margin) for _ in range(300)]
    assert np.mean(eq0) > 0.5                               # and found when truly equal


def test_old_rule_fired_on_noise_new_rule_does_not():
    # The old rule (all seeds agree in sign and |mean| > sd) fired on ~21% of pure-noise comparisons.
    rng = np.random.default_rng(3)
    old = new = 0
    for _ in range(REPS):
        d, boot = _draw(rng, 0.0, 1.0, 0.3)
        old += bool(((d > 0).all() or (d < 0).all()) and abs(d.mean()) > d.std(ddof=1))
        new += compare(d, boot).sign != 0
    assert old / REPS > 0.15 and new / REPS <= 2 * ALPHA + SLACK


def _runs(rng, effect: float, n_ls: int = 3, sigma: float = 0.002, tau: float = 0.002):
    """CE and n_ls LS settings whose MSP E-AURC exceeds CE's by ``effect`` (bootstrap included)."""
    shared = tau * rng.standard_normal()                    # the test set's own noise
    boot_shared = tau * rng.standard_normal(B)
    runs = []
    for loss, truth in [("ce", 0.0)] + [(f"ls:0.{i + 1}", effect) for i in range(n_ls)]:
        for seed in range(S):
            v = 0.02 + truth + sigma * rng.standard_normal() + shared
            m = {"e_aurc": v, "naurc": 0.3, "auroc": 0.9, "risk_at_50": 0.01, "aurc": 0.05}
            boot = {f"msp/{k}": (val + (boot_shared if k == "e_aurc" else 0 * boot_shared)).tolist()
                    for k, val in m.items()}
            boot["accuracy"] = [0.9] * B
            runs.append({"loss": loss, "seed": seed, "accuracy": 0.9, "scores": {"msp": m},
                         "_boot": boot, "collapse": {}})
    return runs


def test_claim1_false_verdict_rates_both_ways():
    rng = np.random.default_rng(4)
    # Global null: LS changes nothing. "reproduced" must be rare.
    null = [claim1(_runs(rng, 0.0)).verdict for _ in range(200)]
    assert np.mean([v == "reproduced" for v in null]) <= ALPHA + 0.03
    # Claim true at the margin's size (10% of CE's E-AURC = 0.002): "not reproduced" must be rare.
    true = [claim1(_runs(rng, 0.002)).verdict for _ in range(200)]
    assert np.mean([v == "not reproduced" for v in true]) <= ALPHA + 0.03
    # A large effect is reproduced; no effect with little noise is not reproduced.
    assert claim1(_runs(rng, 0.02)).verdict == "reproduced"
    quiet = [claim1(_runs(rng, 0.0, sigma=1e-5, tau=1e-5)).verdict for _ in range(20)]
    assert quiet.count("not reproduced") >= 14              # each LS α wrongly "for" at ≤ 5%
