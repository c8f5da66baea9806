"""Score choice (MSP incumbent vs. centred p-norm), temperature fit, and the tune/cert split."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from serve.calibration.choose import choose_score, fit_temperature
from serve.calibration.split import SplitError, stratified_split
from serve.scores import log_softmax


def _sample_from_softmax(z: np.ndarray, T: float, rng: np.random.Generator) -> np.ndarray:
    p = np.exp(log_softmax(z / T))
    u = rng.random((len(z), 1))
    return (p.cumsum(axis=1) < u).sum(axis=1).clip(0, z.shape[1] - 1)


def test_temperature_recovers_the_generating_temperature() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(scale=4.0, size=(20000, 10))
    y = _sample_from_softmax(z, 2.5, rng)
    temp = fit_temperature(z.astype(np.float32), y)
    assert temp == pytest.approx(2.5, rel=0.05)
    # Same minimum as a generic bounded 1-D search on log T.
    def nll(lt: float) -> float:
        return float(-log_softmax(z / np.exp(lt))[np.arange(len(y)), y].mean())
    ref = np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded",
                                 options={"xatol": 1e-8}).x)
    assert temp == pytest.approx(ref, rel=1e-4)


def test_pnorm_replaces_msp_when_logit_scale_is_uninformative() -> None:
    # Direction decides correctness, a random per-sample scale confounds MSP but not p-norms.
    rng = np.random.default_rng(1)
    n, K = 6000, 10
    y = rng.integers(0, K, n)
    z = rng.normal(size=(n, K))
    z[np.arange(n), y] += rng.uniform(0, 3, n)
    z *= rng.lognormal(0, 1.0, n)[:, None]
    choice = choose_score(z, y)
    assert len(choice.candidates) == 12
    assert [c.spec for c in choice.candidates] == ["msp"] + [f"pnorm:{p}" for p in range(11)]
    aurcs = choice.aurcs()
    assert choice.spec.startswith("pnorm:")
    assert aurcs[choice.spec] == min(aurcs.values()) < aurcs["msp"]
    assert "replaces MSP" in choice.reason


def test_msp_is_kept_unless_strictly_beaten() -> None:
    # One-hot logits: every centred p-norm is constant (AURC = error rate); MSP ranks.
    rng = np.random.default_rng(2)
    n, K = 4000, 5
    c = rng.uniform(0, 6, n)
    pred = rng.integers(0, K, n)
    wrong = rng.random(n) < 0.4 * np.exp(-c)
    y = np.where(wrong, (pred + 1) % K, pred)
    z = np.zeros((n, K))
    z[np.arange(n), pred] = c
    choice = choose_score(z, y)
    assert choice.spec == "msp" and "MSP kept" in choice.reason
    # p-norms are constant up to rounding noise: no better than random.
    assert choice.aurcs()["pnorm:3"] == pytest.approx(wrong.mean(), abs=0.01)
    assert choice.aurcs()["msp"] < 0.5 * wrong.mean()


def test_auto_needs_evidence_to_leave_msp_on_pure_noise() -> None:
    """Scores carry no information about errors: a "strictly lower AURC" rule switches away from
    MSP most of the time; the evidence rule (Bonferroni z-test) at most ~5 % of the time."""
    rng = np.random.default_rng(4)
    draws, switched, strictly_lower = 40, 0, 0
    for _ in range(draws):
        n, K = 900, 10
        z = rng.normal(size=(n, K))
        wrong = rng.random(n) < 0.15                       # errors independent of the logits
        y = np.where(wrong, (z.argmax(axis=1) + 1) % K, z.argmax(axis=1))
        choice = choose_score(z, y)
        switched += choice.spec != "msp"
        strictly_lower += min(choice.aurcs().values()) < choice.aurcs()["msp"]
        msp, *rest = choice.candidates
        assert all(c.delta_aurc == pytest.approx(msp.aurc - c.aurc) for c in rest)
    assert strictly_lower >= draws // 2                    # the old rule would have switched
    assert switched <= 5, f"switched {switched}/{draws} on noise"


def test_two_classes_keep_msp_and_fixed_pnorm_is_refused() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=(500, 2))
    y = rng.integers(0, 2, 500)
    choice = choose_score(z, y)
    assert [c.spec for c in choice.candidates] == ["msp", "pnorm:0"]
    assert "K = 2" in choice.reason
    with pytest.raises(Exception, match="cannot rank with K = 2"):
        choose_score(z, y, score="pnorm:2")


def test_stratified_split_is_disjoint_stratified_and_reproducible() -> None:
    y = np.repeat(np.arange(4), [100, 300, 50, 7])
    tune, cert = stratified_split(y, 0.3, seed=0)
    assert np.intersect1d(tune, cert).size == 0
    assert np.array_equal(np.union1d(tune, cert), np.arange(len(y)))
    assert list(np.bincount(y[tune], minlength=4)) == [30, 90, 15, 2]
    t2, _ = stratified_split(y, 0.3, seed=0)
    t3, _ = stratified_split(y, 0.3, seed=1)
    assert np.array_equal(tune, t2) and not np.array_equal(tune, t3)
    with pytest.raises(SplitError, match="strictly between 0 and 1"):
        stratified_split(y, 1.0)
