"""serve.selective_metrics: hand-worked cases, O(n²) brute-force references, and hypothesis properties.

The references below are written from METHODS.md §3 directly (per-sample prefix sets, pairwise
AUROC, per-bin ECE), sharing no code with serve.selective_metrics, so an agreement to 1e-12 means both
implement the same definition.
"""

from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from serve import selective_metrics as M
from serve.errors import AbstainError

TOL = 1e-12

# --------------------------------------------------------------------------------------------
# Brute-force references: O(n²), straight from the definitions.
# --------------------------------------------------------------------------------------------


def ref_prefix(s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample i: the accepted set {j : s_j ≥ s_i}'s size and error count."""
    accepted = s[None, :] >= s[:, None]                     # (n, n): row i accepts column j
    return accepted.sum(axis=1), (accepted & e[None, :]).sum(axis=1)


def ref_expected_prefix_errors(s, e) -> tuple[np.ndarray, np.ndarray]:
    """Per sorted position p = 1..n: E[errors among the first p] over random tie orders.

    Sample j is among the first p for certain if s_j is above the p-th score, never if below,
    and with probability (slots left in its tie group)/(group size) if tied with it.
    """
    srt = np.sort(s)[::-1]
    out = np.empty(s.size)
    for p in range(1, s.size + 1):
        t = srt[p - 1]
        above, tied = s > t, s == t
        slots = p - int(above.sum())
        out[p - 1] = (e & above).sum() + (e & tied).sum() * slots / tied.sum()
    return np.arange(1, s.size + 1), out


def ref_aurc(s, e) -> float:
    pos, k = ref_expected_prefix_errors(s, e)
    return math.fsum(k / pos) / s.size


def ref_augrc(s, e) -> float:
    _, k = ref_expected_prefix_errors(s, e)
    return math.fsum(k / s.size) / s.size


def ref_strict_aurc(s, e) -> float:
    """Geifman et al.'s per-sample mean of prefix risks for one strict order (no ties)."""
    order = np.argsort(-s, kind="stable")
    return math.fsum(np.cumsum(e[order]) / np.arange(1, s.size + 1)) / s.size


def ref_aurc_optimal(e) -> float:
    # Oracle: all correct samples first, then all errors, each at its own position.
    order = np.sort(e.astype(int))                          # 0s (correct) first
    prefix_errors = np.cumsum(order)
    return math.fsum(prefix_errors / np.arange(1, e.size + 1)) / e.size


def ref_min_risk_at_coverage_at_least(s, e, c) -> float:
    # Exact rational comparisons: a coverage of "0.8" means 8/10, not the float 0.8000000000000000444.
    m, k = ref_prefix(s, e)
    return min(ki / mi for mi, ki in zip(m, k, strict=True) if F(int(mi), s.size) >= F(str(c)))


def ref_risk_at_coverage(s, e, c) -> float:
    # The strictest threshold (largest score) whose accepted set reaches coverage c.
    t = max(t for t in s if F(int((s >= t).sum()), s.size) >= F(str(c)))
    return (e & (s >= t)).sum() / (s >= t).sum()


def ref_coverage_at_risk(s, e, r) -> float:
    m, k = ref_prefix(s, e)
    ok = [mi / s.size for mi, ki in zip(m, k, strict=True) if F(int(ki), int(mi)) <= F(str(r))]
    return max(ok) if ok else 0.0


def ref_auroc(s, e) -> float:
    pos, neg = s[~e], s[e]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def ref_fpr_at_tpr(s, e, tpr) -> float:
    n_c, n_w = int((~e).sum()), int(e.sum())
    if n_c == 0 or n_w == 0:
        return float("nan")
    # The strictest threshold t (largest) accepting at least tpr of the correct samples.
    t = max(t for t in s if (~e & (s >= t)).sum() >= F(str(tpr)) * n_c)
    return (e & (s >= t)).sum() / n_w


def ref_ece(conf, e, bins=15) -> float:
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi) if b else (conf >= 0) & (conf <= hi)
        if inside.any():
            total += inside.sum() / conf.size * abs((~e[inside]).mean() - conf[inside].mean())
    return total


# --------------------------------------------------------------------------------------------
# Strategies: tie-heavy by construction (scores from a small pool of values).
# --------------------------------------------------------------------------------------------


@st.composite
def tie_heavy(draw, min_size=1, max_size=120):
    n = draw(st.integers(min_size, max_size))
    levels = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=levels)
    s = pool[rng.integers(0, levels, n)]
    err_rate = draw(st.floats(0.0, 1.0))
    e = rng.random(n) < err_rate
    return s, e


@st.composite
def continuous(draw, min_size=1, max_size=120):
    n = draw(st.integers(min_size, max_size))
    s = draw(hnp.arrays(np.float64, n, elements=st.floats(-1e6, 1e6, allow_nan=False)))
    e = draw(hnp.arrays(np.bool_, n))
    return s, e


inputs = st.one_of(tie_heavy(), continuous())
FAST = settings(max_examples=80, deadline=None, derandomize=True)  # fixed seed: CI is reproducible


# --------------------------------------------------------------------------------------------
# Hand-worked cases (exact fractions in the comments and expected values).
# --------------------------------------------------------------------------------------------

# Groups by score: 0.9 → {c, w}; 0.8 → {c}; 0.5 → {c, w, w}.
HAND_S = np.array([0.9, 0.9, 0.8, 0.5, 0.5, 0.5])
HAND_E = np.array([0, 1, 0, 0, 1, 1], dtype=bool)


def test_hand_curve_groups_ties():
    c = M.risk_coverage_curve(HAND_S, HAND_E)
    np.testing.assert_array_equal(c.thresholds, [0.9, 0.8, 0.5])
    np.testing.assert_array_equal(c.n_accepted, [2, 3, 6])
    np.testing.assert_array_equal(c.n_errors, [1, 1, 3])
    assert c.n_accepted.dtype == np.int64 and c.n_errors.dtype == np.int64
    np.testing.assert_allclose(c.coverage, [2 / 6, 3 / 6, 1.0], rtol=0, atol=TOL)
    np.testing.assert_allclose(c.risk, [1 / 2, 1 / 3, 1 / 2], rtol=0, atol=TOL)
    np.testing.assert_allclose(c.generalized_risk, [1 / 6, 1 / 6, 3 / 6], rtol=0, atol=TOL)
    assert c.error_rate == 0.5


def test_hand_areas():
    # Expected prefix risks, ties in random order: group 0.9 (1 of 2 wrong): ½/1 + 1/2 = 1;
    # 0.8: 1/3; group 0.5 (2 of 3 wrong after 1 of 3): (5/3)/4 + (7/3)/5 + 3/6 = 83/60.
    # AURC = (1 + 1/3 + 83/60)/6 = 163/360 (the right-Riemann rule gave 17/36 = 170/360).
    assert M.aurc(HAND_S, HAND_E) == pytest.approx(163 / 360, abs=TOL)
    # AURC* (n = 6, n_c = 3) = 1/6 (1/4 + 2/5 + 3/6) = 23/120
    assert M.aurc_optimal(HAND_E) == pytest.approx(23 / 120, abs=TOL)
    assert M.e_aurc(HAND_S, HAND_E) == pytest.approx(47 / 180, abs=TOL)
    # NAURC = (47/180) / (1/2 − 23/120) = 94/111
    assert M.naurc(HAND_S, HAND_E) == pytest.approx(94 / 111, abs=TOL)
    # AUGRC: expected accepted errors ½+1, 1, 1+5/3, 1+7/3 ... summed = 1.5 + 1 + 7 = 19/2, / 6²
    assert M.augrc(HAND_S, HAND_E) == pytest.approx(19 / 72, abs=TOL)


def _enumerated_tie_orders(s, e) -> tuple[float, float]:
    """Exact mean AURC and AUGRC over every order of the samples that respects the scores."""
    from itertools import permutations

    aurcs, augrcs = [], []
    for perm in permutations(range(s.size)):
        p = np.array(perm)
        if np.all(np.diff(s[p]) <= 0):                      # a descending order: ties permuted
            k = np.cumsum(e[p])
            aurcs.append(sum(F(int(ki), i + 1) for i, ki in enumerate(k)) / s.size)
            augrcs.append(F(int(k.sum()), s.size * s.size))
    return float(sum(aurcs) / len(aurcs)), float(sum(augrcs) / len(augrcs))


@pytest.mark.parametrize("seed", range(6))
def test_areas_equal_exact_enumeration_of_tie_orders(seed):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 3, 7).astype(float)                 # 7 samples on 3 levels: heavy ties
    e = rng.random(7) < 0.4
    aurc, augrc = _enumerated_tie_orders(s, e)
    assert M.aurc(s, e) == pytest.approx(aurc, abs=TOL)
    assert M.augrc(s, e) == pytest.approx(augrc, abs=TOL)
    assert M.e_aurc(s, e) >= -TOL


def test_areas_equal_monte_carlo_over_tie_orders_on_tie_heavy_data():
    # The case: 5,000 samples whose score takes 22 distinct values.
    rng = np.random.default_rng(0)
    s = rng.integers(0, 22, 5000) / 21.0
    e = rng.random(5000) < 0.35 * (1.2 - s)
    assert np.unique(s).size == 22
    aurcs, augrcs = [], []
    for _ in range(300):
        perm = np.lexsort((rng.random(s.size), -s))         # descending score, random within ties
        k = np.cumsum(e[perm])
        aurcs.append(np.mean(k / np.arange(1, s.size + 1)))
        augrcs.append(np.mean(k / s.size))
    se = np.std(aurcs) / np.sqrt(len(aurcs))
    assert abs(M.aurc(s, e) - np.mean(aurcs)) < 5 * se + 1e-12
    assert abs(M.augrc(s, e) - np.mean(augrcs)) < 5 * np.std(augrcs) / np.sqrt(300) + 1e-12
    # The old right-Riemann rule (each group at its end's risk) is measurably higher.
    c = M.risk_coverage_curve(s, e)
    right_riemann = float(np.sum(np.diff(c.n_accepted, prepend=0) * c.risk) / c.n)
    assert right_riemann - M.aurc(s, e) > 20 * se


@FAST
@given(hnp.arrays(np.float64, st.integers(1, 60), unique=True,
                  elements=st.floats(-1e6, 1e6, allow_nan=False)), st.data())
def test_areas_without_ties_are_the_per_sample_mean(s, data):
    e = np.array(data.draw(st.lists(st.booleans(), min_size=s.size, max_size=s.size)), dtype=bool)
    assert M.aurc(s, e) == pytest.approx(ref_strict_aurc(s, e), abs=TOL)
    order = np.argsort(-s)
    assert M.augrc(s, e) == pytest.approx(np.sum(np.cumsum(e[order])) / s.size ** 2, abs=TOL)


def test_hand_operating_points():
    # Points (cov, SR): (1/3, 1/2), (1/2, 1/3), (1, 1/2).
    assert M.risk_at_coverage(HAND_S, HAND_E, 0.3) == pytest.approx(1 / 2, abs=TOL)
    assert M.risk_at_coverage(HAND_S, HAND_E, 0.5) == pytest.approx(1 / 3, abs=TOL)
    assert M.risk_at_coverage(HAND_S, HAND_E, 0.6) == pytest.approx(1 / 2, abs=TOL)
    assert M.risk_at_coverage(HAND_S, HAND_E, 1.0) == pytest.approx(1 / 2, abs=TOL)
    # The working-point rule: the best risk among points that keep coverage ≥ c.
    assert M.min_risk_at_coverage_at_least(HAND_S, HAND_E, 0.3) == pytest.approx(1 / 3, abs=TOL)
    assert M.min_risk_at_coverage_at_least(HAND_S, HAND_E, 0.5) == pytest.approx(1 / 3, abs=TOL)
    assert M.min_risk_at_coverage_at_least(HAND_S, HAND_E, 0.6) == pytest.approx(1 / 2, abs=TOL)
    assert M.coverage_at_risk(HAND_S, HAND_E, 0.4) == pytest.approx(0.5, abs=TOL)
    assert M.coverage_at_risk(HAND_S, HAND_E, 0.5) == 1.0
    assert M.coverage_at_risk(HAND_S, HAND_E, 0.2) == 0.0


def test_hand_auroc_counts_ties_half():
    # Correct 0.9, 0.8, 0.5 vs wrong 0.9, 0.5, 0.5: (½+1+1) + (0+1+1) + (0+½+½) = 5.5 of 9.
    assert M.auroc(HAND_S, HAND_E) == pytest.approx(11 / 18, abs=TOL)


def test_hand_fpr_at_tpr():
    # Correct accepted cumulatively: 1, 2, 3 of 3; errors: 1, 1, 3 of 3.
    assert M.fpr_at_tpr(HAND_S, HAND_E) == 1.0            # 95% of 3 needs all three
    assert M.fpr_at_tpr(HAND_S, HAND_E, 0.6) == pytest.approx(1 / 3, abs=TOL)
    assert M.fpr_at_tpr(HAND_S, HAND_E, 0.3) == pytest.approx(1 / 3, abs=TOL)
    # 19 of 20 correct is exactly 95%: float 0.95·20 must not demand a 20th.
    s = np.arange(21, dtype=float)[::-1]                  # scores 20, 19, …, 0
    e = np.zeros(21, dtype=bool)
    e[19] = True                                          # the error (score 1) sits after 19 correct
    assert M.fpr_at_tpr(s, e) == 0.0


def test_hand_ece():
    conf = np.array([0.95, 0.95, 0.62, 0.55, 0.55, 0.1])
    e = np.array([0, 1, 0, 0, 1, 1], dtype=bool)
    # Bins 14: |½ − .95|·2/6; 9: |1 − .62|·1/6; 8: |½ − .55|·2/6; 1: |0 − .1|·1/6 → 1.48/6.
    assert M.ece(conf, e) == pytest.approx(1.48 / 6, abs=TOL)


@pytest.mark.parametrize(("conf", "err", "expected"), [
    ([0.2, 0.21], [0, 1], (0.8 + 0.21) / 2),     # 0.2 = 3/15 closes bin 2; 0.21 is in bin 3
    ([0.0, 0.05], [1, 0], 0.475),                # 0 shares bin 0 with 0.05: |½ − .025|
    ([1.0, 0.95], [0, 1], 0.475),                # 1 shares the last bin with .95: |½ − .975|
])
def test_ece_bin_edges(conf, err, expected):
    assert M.ece(np.array(conf), np.array(err, dtype=bool)) == pytest.approx(expected, abs=TOL)


def test_all_tied_is_one_point_with_risk_err():
    e = np.array([1, 0, 0, 1, 0], dtype=bool)
    s = np.full(5, 0.7)
    c = M.risk_coverage_curve(s, e)
    assert c.thresholds.tolist() == [0.7] and c.n_accepted.tolist() == [5]
    assert M.aurc(s, e) == pytest.approx(0.4, abs=TOL)
    assert M.naurc(s, e) == pytest.approx(1.0, abs=TOL)
    assert M.auroc(s, e) == 0.5


def test_signed_zeros_tie():
    c = M.risk_coverage_curve(np.array([0.0, -0.0, 1.0]), np.array([1, 0, 0]))
    assert c.n_accepted.tolist() == [1, 3]


def test_degenerate_error_rates():
    s = np.array([0.3, 0.1, 0.2])
    none, every = np.zeros(3, bool), np.ones(3, bool)
    assert M.aurc(s, none) == 0.0 and M.aurc_optimal(none) == 0.0
    assert M.aurc(s, every) == 1.0 and M.aurc_optimal(every) == 1.0
    for e in (none, every):
        assert math.isnan(M.naurc(s, e))
        assert math.isnan(M.auroc(s, e))
        assert math.isnan(M.fpr_at_tpr(s, e))
        assert M.e_aurc(s, e) == 0.0


def test_summary_matches_single_functions():
    rng = np.random.default_rng(3)
    s, e = rng.integers(0, 20, 500).astype(float), rng.random(500) < 0.3
    out = M.summary(s, e, coverages=(0.5, 0.8, 0.95))
    assert out["n"] == 500 and out["error_rate"] == e.mean()
    assert out["aurc"] == M.aurc(s, e) and out["e_aurc"] == M.e_aurc(s, e)
    assert out["naurc"] == M.naurc(s, e) and out["augrc"] == M.augrc(s, e)
    assert out["auroc"] == M.auroc(s, e) and out["fpr_at_95tpr"] == M.fpr_at_tpr(s, e)
    assert out["risk_at_95"] == M.risk_at_coverage(s, e, 0.95)
    assert out["min_risk_cov_ge_50"] == M.min_risk_at_coverage_at_least(s, e, 0.5)
    assert set(out) == {"n", "error_rate", "aurc", "e_aurc", "naurc", "augrc", "auroc",
                        "fpr_at_95tpr", "risk_at_50", "risk_at_80", "risk_at_95",
                        "min_risk_cov_ge_50", "min_risk_cov_ge_80", "min_risk_cov_ge_95"}


@pytest.mark.parametrize(("call", "match"), [
    (lambda: M.aurc([0.1, 0.2], [0, 1, 1]), "differ in length"),
    (lambda: M.aurc(np.zeros((2, 2)), np.zeros((2, 2))), "1-D"),
    (lambda: M.aurc([], []), "at least one sample"),
    (lambda: M.aurc([0.1, np.nan], [0, 1]), "NaN or inf"),
    (lambda: M.aurc([0.1, np.inf], [0, 1]), "NaN or inf"),
    (lambda: M.aurc([0.1, 0.2], [0, 2]), "0/1 or boolean"),
    (lambda: M.aurc_optimal([0, 0.5]), "0/1 or boolean"),
    (lambda: M.risk_at_coverage([0.1], [0], 0.0), "coverage must be in"),
    (lambda: M.risk_at_coverage([0.1], [0], 1.5), "coverage must be in"),
    (lambda: M.min_risk_at_coverage_at_least([0.1], [0], 0.0), "coverage must be in"),
    (lambda: M.coverage_at_risk([0.1], [0], -0.1), "risk must be in"),
    (lambda: M.fpr_at_tpr([0.1, 0.2], [0, 1], 0.0), "tpr must be in"),
    (lambda: M.ece([0.5, 1.2], [0, 1]), r"confidences in \[0, 1\]"),
    (lambda: M.ece([0.5], [0], n_bins=0), "n_bins"),
    (lambda: M.aurc_optimal_asymptotic(1.5), "error rate"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(M.MetricError, match=match) as info:
        call()
    assert isinstance(info.value, AbstainError)


def test_integer_and_float_error_labels_accepted():
    s = np.array([0.3, 0.1, 0.2, 0.2])
    e = np.array([0, 1, 1, 0])
    assert M.aurc(s, e) == M.aurc(s, e.astype(bool)) == M.aurc(s, e.astype(float))


# --------------------------------------------------------------------------------------------
# Every metric against its brute-force reference, to 1e-12.
# --------------------------------------------------------------------------------------------


def _check_against_reference(s: np.ndarray, e: np.ndarray) -> None:
    assert M.aurc(s, e) == pytest.approx(ref_aurc(s, e), abs=TOL)
    assert M.augrc(s, e) == pytest.approx(ref_augrc(s, e), abs=TOL)
    opt = ref_aurc_optimal(e)
    assert M.aurc_optimal(e) == pytest.approx(opt, abs=TOL)
    assert M.e_aurc(s, e) == pytest.approx(ref_aurc(s, e) - opt, abs=TOL)
    err = e.mean()
    if 0 < err < 1:
        assert M.naurc(s, e) == pytest.approx((ref_aurc(s, e) - opt) / (err - opt), abs=TOL)
    else:
        assert math.isnan(M.naurc(s, e))
    for c in (0.1, 0.5, 0.8, 1.0):
        assert M.risk_at_coverage(s, e, c) == pytest.approx(ref_risk_at_coverage(s, e, c), abs=TOL)
        assert M.min_risk_at_coverage_at_least(s, e, c) == pytest.approx(
            ref_min_risk_at_coverage_at_least(s, e, c), abs=TOL)
    for r in (0.0, 0.05, 0.2, 0.5, 1.0):
        assert M.coverage_at_risk(s, e, r) == pytest.approx(ref_coverage_at_risk(s, e, r), abs=TOL)
    np.testing.assert_allclose(M.auroc(s, e), ref_auroc(s, e), rtol=0, atol=TOL)
    for t in (0.5, 0.95):
        np.testing.assert_allclose(M.fpr_at_tpr(s, e, t), ref_fpr_at_tpr(s, e, t), rtol=0, atol=TOL)
    conf = 0.5 + np.arctan(s) / np.pi                       # squash into [0, 1], ties kept
    assert M.ece(conf, e) == pytest.approx(ref_ece(conf, e), abs=TOL)


@FAST
@given(inputs)
def test_every_metric_matches_brute_force(data):
    _check_against_reference(*data)


@pytest.mark.parametrize("seed", range(4))
def test_every_metric_matches_brute_force_larger_tie_heavy(seed):
    rng = np.random.default_rng(seed)
    n = 1500
    s = rng.integers(0, [3, 30, 300, 3000][seed], n) / 7.0   # few to many tie groups
    e = rng.random(n) < rng.uniform(0.05, 0.6)
    _check_against_reference(s, e)


def test_ece_matches_reference_on_grid_confidences():
    # Confidences on the 1/30 grid: every other value is a bin edge of the 15 bins.
    rng = np.random.default_rng(7)
    conf = rng.integers(0, 31, 2000) / 30
    e = rng.random(2000) < 0.3
    assert M.ece(conf, e) == pytest.approx(ref_ece(conf, e), abs=TOL)


# --------------------------------------------------------------------------------------------
# Properties.
# --------------------------------------------------------------------------------------------


def _ranking_metrics(s, e) -> list[float]:
    c = M.risk_coverage_curve(s, e)
    return [*M.summary(s, e).values(), M.coverage_at_risk(s, e, 0.1, c), c.n_accepted.size]


@FAST
@given(inputs, st.integers(0, 2**32 - 1))
def test_invariant_under_permuting_samples(data, seed):
    s, e = data
    perm = np.random.default_rng(seed).permutation(s.size)
    np.testing.assert_array_equal(_ranking_metrics(s[perm], e[perm]), _ranking_metrics(s, e))
    conf = 0.5 + np.arctan(s) / np.pi
    assert M.ece(conf[perm], e[perm]) == pytest.approx(M.ece(conf, e), abs=TOL)


@FAST
@given(tie_heavy(), st.sampled_from(["exp", "affine", "cube", "arctan", "rank"]))
def test_invariant_under_strictly_increasing_transforms(data, transform):
    s, e = data
    # Tie-heavy scores are a few well-separated values, so each map keeps them distinct.
    f = {"exp": np.exp, "affine": lambda x: 3.0 * x - 7.0, "cube": lambda x: x**3 + x,
         "arctan": np.arctan, "rank": lambda x: np.unique(x, return_inverse=True)[1].astype(float)}
    t = f[transform](s)
    assert np.unique(t).size == np.unique(s).size
    np.testing.assert_array_equal(_ranking_metrics(t, e), _ranking_metrics(s, e))


@FAST
@given(st.integers(1, 300), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_oracle_ranking_attains_exact_aurc_optimal(n, err_rate, seed):
    rng = np.random.default_rng(seed)
    e = rng.random(n) < err_rate
    # Distinct scores, every correct sample strictly above every error.
    s = rng.permutation(n).astype(float) + np.where(e, 0.0, 2.0 * n)
    assert M.aurc(s, e) == pytest.approx(M.aurc_optimal(e), abs=TOL)
    assert M.e_aurc(s, e) == pytest.approx(0.0, abs=TOL)
    if 0 < e.sum() < n:
        assert M.naurc(s, e) == pytest.approx(0.0, abs=TOL)
        assert M.auroc(s, e) == 1.0
    # AUGRC's finite-sample optimum: (1/n²) Σ_{j=1}^{n_e} j = n_e(n_e + 1)/(2n²) ≈ err²/2.
    n_e = int(e.sum())
    assert M.augrc(s, e) == pytest.approx(n_e * (n_e + 1) / (2 * n * n), abs=TOL)


@FAST
@given(inputs)
def test_aurc_never_below_aurc_optimal(data):
    s, e = data
    assert M.aurc(s, e) >= M.aurc_optimal(e) - TOL
    assert M.e_aurc(s, e) >= -TOL
    assert M.aurc(s, e) <= 1.0 + TOL


def test_reversed_oracle_is_worst_and_naurc_above_one():
    e = np.array([0] * 8 + [1] * 4, dtype=bool)
    s = np.where(e, 1.0, 0.0) + np.arange(12) * 1e-3     # errors ranked first
    assert M.naurc(s, e) > 1.0
    assert M.auroc(s, e) == 0.0


def test_naurc_of_random_scores_is_about_one():
    # E[AURC] of a uniformly random ranking is exactly err (each prefix risk is hypergeometric
    # with mean err), so NAURC averages to 1; the spread at n = 20 000 is about 0.02.
    rng = np.random.default_rng(0)
    vals = []
    for _ in range(20):
        e = rng.random(20_000) < 0.15
        vals.append(M.naurc(rng.random(20_000), e))
    assert abs(np.mean(vals) - 1.0) < 0.02
    assert all(abs(v - 1.0) < 0.15 for v in vals)
    # Heavy ties in a random score do not bias it either.
    vals = [M.naurc(rng.integers(0, 5, 20_000).astype(float), rng.random(20_000) < 0.15)
            for _ in range(20)]
    assert abs(np.mean(vals) - 1.0) < 0.02


@pytest.mark.parametrize("err", [0.01, 0.1, 0.3, 0.7])
def test_closed_form_aurc_optimal_is_the_large_n_limit(err):
    # Σ_{i=n_c+1}^{n} (i − n_c)/i = n_e − n_c (H_n − H_{n_c}); with H_m = ln m + γ + 1/(2m) + O(1/m²)
    # the exact oracle is the closed form plus err/(2n) + O(1/n²).
    limit = M.aurc_optimal_asymptotic(err)
    for n in (1_000, 10_000, 1_000_000):
        e = np.arange(n) < round(err * n)
        gap = M.aurc_optimal(e) - limit
        assert gap > 0
        assert gap * n == pytest.approx(err / 2, rel=0.05)


def test_closed_form_values():
    assert M.aurc_optimal_asymptotic(0.0) == 0.0
    assert M.aurc_optimal_asymptotic(1.0) == 1.0
    assert M.aurc_optimal_asymptotic(0.2) == pytest.approx(0.2 + 0.8 * math.log(0.8), abs=1e-15)


@FAST
@given(inputs)
def test_curve_is_consistent(data):
    s, e = data
    c = M.risk_coverage_curve(s, e)
    assert np.all(np.diff(c.thresholds) < 0)               # strictly descending
    assert np.all(np.diff(c.n_accepted) > 0) and c.n_accepted[-1] == s.size
    assert np.all(np.diff(c.n_errors) >= 0) and c.n_errors[-1] == e.sum()
    assert np.all(c.n_errors <= c.n_accepted)
    np.testing.assert_array_equal(c.thresholds, np.unique(s)[::-1])
    assume(0 < e.sum() < s.size)
    assert M.auroc(s, e) + M.auroc(-s, e) == pytest.approx(1.0, abs=TOL)  # ties count ½ both ways
