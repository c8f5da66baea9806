"""serve.scores: exact values, the direction convention, temperature, precision and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from serve import scores as S
from serve.errors import AbstainError

FIXED = ["msp", "log_msp", "maxlogit", "centred_maxlogit", "energy", "margin"]
PNORMS = ["pnorm:0", "pnorm:1", "pnorm:2", "pnorm:3.5", "pnorm:8", "pnorm:inf"]
ALL = FIXED + PNORMS
FAST = settings(max_examples=60, deadline=None, derandomize=True)  # fixed seed: CI is reproducible
# Every score is snapped to a 43-bit significand (S.snap_scores): one grid step is ≤ 2⁻⁴² relative.
SNAP = 2.0 ** -42


def score(spec: str, logits, temperature: float = 1.0) -> np.ndarray:
    return S.create_score(spec, temperature)(np.asarray(logits, dtype=np.float64))


def test_registry_lists_every_documented_score():
    listed = S.list_scores()
    assert set(FIXED) <= set(listed)
    assert any(x.startswith("pnorm:<p>") for x in listed)


# --- exact values -------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "logits", "expected"), [
    ("msp", [[0.0, 0.0]], 0.5),
    ("msp", [[math.log(2), 0.0, 0.0]], 0.5),                 # softmax (2, 1, 1)/4
    ("log_msp", [[math.log(2), 0.0, 0.0]], math.log(0.5)),
    ("maxlogit", [[-1.0, 3.0, 2.0]], 3.0),
    ("centred_maxlogit", [[3.0, 0.0, 0.0]], 2.0),
    ("margin", [[3.0, 1.0, 2.0]], 1.0),
    ("margin", [[2.0, 2.0, 0.0]], 0.0),                      # tied top-2
    ("energy", [[0.0, 0.0]], math.log(2)),
    ("energy", [[1.0, 1.0, 1.0]], 1.0 + math.log(3)),
    ("pnorm:0", [[3.0, 0.0, 0.0]], 2.0),                     # u = (2, −1, −1)
    ("pnorm:1", [[3.0, 0.0, 0.0]], 2.0 / 4.0),
    ("pnorm:2", [[3.0, 0.0, 0.0]], 2.0 / math.sqrt(6.0)),
    ("pnorm:3", [[3.0, 0.0, 0.0]], 2.0 / 10.0 ** (1 / 3)),
    ("pnorm:inf", [[3.0, 0.0, 0.0]], 1.0),
])
def test_exact_values(spec, logits, expected):
    out = score(spec, logits)
    assert out.dtype == np.float64 and out.shape == (1,)
    assert out[0] == pytest.approx(expected, rel=1e-14 + SNAP, abs=1e-15)


def test_pnorm_zero_is_centred_maxlogit_and_values_are_scale_free():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 7)) * 3
    np.testing.assert_array_equal(score("pnorm:0", z), score("centred_maxlogit", z))
    np.testing.assert_allclose(score("pnorm:2", 10 * z), score("pnorm:2", z), rtol=1e-13)
    np.testing.assert_allclose(score("pnorm:2", z + 5.0), score("pnorm:2", z), rtol=1e-12)


def test_helpers_softmax_logsumexp():
    z = np.array([[1000.0, 1000.0], [-1000.0, -1000.0], [0.0, math.log(3)]])
    np.testing.assert_allclose(S.logsumexp(z), [1000 + math.log(2), -1000 + math.log(2), math.log(4)],
                               rtol=1e-15)
    np.testing.assert_allclose(S.softmax(z), [[0.5, 0.5], [0.5, 0.5], [0.25, 0.75]], rtol=1e-15)
    np.testing.assert_allclose(np.exp(S.log_softmax(z)).sum(axis=1), 1.0, rtol=1e-15)


# --- direction: higher = more confident ---------------------------------------------------------

@pytest.mark.parametrize("spec", ALL)
@pytest.mark.parametrize("K", [3, 10])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_peaked_scores_above_flat(spec, K, temperature):
    flat = np.zeros((1, K))
    peaked = flat.copy()
    peaked[0, 1] = 4.0
    s_peaked, s_flat = score(spec, peaked, temperature)[0], score(spec, flat, temperature)[0]
    assert s_peaked > s_flat, f"{spec}: peaked {s_peaked} should beat flat {s_flat}"


@pytest.mark.parametrize("spec", ["msp", "log_msp", "centred_maxlogit", "margin",
                                  "pnorm:1", "pnorm:2", "pnorm:8"])
def test_clear_winner_above_close_runner_up(spec):
    # Same top logit; a close second choice means less confidence.
    clear, close = [[5.0, 0.0, 0.0, 0.0]], [[5.0, 4.5, 0.0, 0.0]]
    assert score(spec, clear)[0] > score(spec, close)[0]


@pytest.mark.parametrize("spec", ["msp", "log_msp", "maxlogit", "energy", "margin"])
def test_raising_the_top_logit_raises_the_score(spec):
    z = np.array([[1.0, 0.5, -1.0]] * 4)
    z[:, 0] += [0.0, 0.5, 1.0, 3.0]
    assert np.all(np.diff(score(spec, z)) > 0)


def test_two_classes_msp_and_margin_rank_the_same():
    z = np.random.default_rng(1).normal(size=(200, 2)) * 2
    np.testing.assert_array_equal(np.argsort(score("msp", z)), np.argsort(score("margin", z)))


# --- temperature --------------------------------------------------------------------------------

def test_temperature_changes_msp_values_toward_uniform():
    z = [[2.0, 0.0, 0.0]]
    values = [score("msp", z, t)[0] for t in (0.25, 1.0, 4.0, 100.0)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert values[1] == pytest.approx(math.exp(2) / (math.exp(2) + 2), rel=1e-14 + SNAP)
    assert values[-1] == pytest.approx(1 / 3, abs=0.01)


def test_temperature_divides_logits():
    z = np.random.default_rng(2).normal(size=(30, 5))
    for spec in ["maxlogit", "centred_maxlogit", "margin", "log_msp"]:
        np.testing.assert_allclose(score(spec, z, 2.5), score(spec, z / 2.5), rtol=1e-14 + SNAP)
    # Energy is the negative free energy T·logsumexp(z/T): T → 0 gives the max logit.
    np.testing.assert_allclose(score("energy", z, 2.5), 2.5 * S.logsumexp(z / 2.5), rtol=1e-14 + SNAP)
    np.testing.assert_allclose(score("energy", z, 1e-3), z.max(axis=1), atol=1e-2)


@pytest.mark.parametrize("spec", ["maxlogit", "centred_maxlogit", "margin"])
def test_temperature_keeps_the_ranking_of_scale_equivariant_scores(spec):
    z = np.random.default_rng(3).integers(-40, 40, size=(300, 6)) / 8   # exact under /T for T = 2^k
    base = score(spec, z)
    for t in (0.25, 4.0):
        np.testing.assert_array_equal(score(spec, z, t), base / t)


@pytest.mark.parametrize("spec", ["pnorm:1", "pnorm:2", "pnorm:4", "pnorm:inf"])
def test_temperature_leaves_pnorm_values_unchanged(spec):
    # pnorm is scale-invariant, so T changes nothing (rounding aside). pnorm:1 ties at ½ for every
    # row with one logit above the mean, so compare values, not argsorts.
    z = np.random.default_rng(3).normal(size=(300, 6)) * 2
    for t in (0.3, 3.0):
        np.testing.assert_allclose(score(spec, z, t), score(spec, z), rtol=1e-13 + 2 * SNAP)


def test_temperature_can_reorder_msp():
    # A lone strong logit vs a strong pair: T = 1 prefers the first, large T (≈ centred MaxLogit)
    # prefers the second, whose top logit sits far above the mean.
    z = [[2.0, 0.0, 0.0], [3.0, 2.9, -10.0]]
    s1, s100 = score("msp", z, 1.0), score("msp", z, 100.0)
    assert s1[0] > s1[1] and s100[0] < s100[1]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "2"])
def test_bad_temperature_refused(bad):
    with pytest.raises(S.ScoreError, match="temperature must be a finite number > 0"):
        S.create_score("msp", bad)


# --- precision ----------------------------------------------------------------------------------

def test_float64_msp_does_not_saturate_where_float32_does():
    gaps = np.array([20.0, 22.0, 25.0, 30.0])
    z = np.zeros((4, 10))
    z[:, 3] = gaps
    z32 = z.astype(np.float32)
    e = np.exp(z32 - z32.max(axis=1, keepdims=True))
    assert np.all((e / e.sum(axis=1, keepdims=True)).max(axis=1) == np.float32(1.0))  # all tied
    msp = score("msp", z32)                                  # float32 logits, float64 scores
    assert msp.dtype == np.float64
    assert np.all(msp < 1.0) and np.all(np.diff(msp) > 0)
    # log-MSP keeps ranking where even float64 MSP reads 1.0 (top-2 gap > ~37).
    z[:, 3] = [40.0, 60.0, 200.0, 600.0]
    assert np.all(score("msp", z) == 1.0)
    lm = score("log_msp", z)
    assert np.all(lm < 0) and np.all(np.diff(lm) > 0)
    np.testing.assert_allclose(lm, -9 * np.exp(-z[:, 3]), rtol=1e-14 + SNAP)


def test_log_msp_matches_log_of_msp_in_the_unsaturated_range():
    z = np.random.default_rng(4).normal(size=(500, 10)) * 3
    np.testing.assert_allclose(score("log_msp", z), np.log(score("msp", z)), rtol=1e-13, atol=1e-15 + 2 * SNAP)
    ref = np.log(np.exp(z).max(axis=1) / np.exp(z).sum(axis=1))
    np.testing.assert_allclose(score("log_msp", z), ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("p", [50, 1000, 1e6])
def test_pnorm_with_large_p_stays_finite(p):
    z = np.array([[1e200, 0.0, -1e200], [1e-300, 0.0, 0.0], [300.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    out = score(f"pnorm:{p:g}", z)
    assert np.all(np.isfinite(out)) and np.all(out <= 1.0 + 1e-12)
    inf = score("pnorm:inf", z)
    np.testing.assert_allclose(out, inf, rtol=0.02)           # p → ∞ approaches the max-norm


@pytest.mark.parametrize("c", [1.5, 14.677897647865436, -3e7, 1e12])
def test_equal_logits_centre_to_exact_zero(c):
    # Found by hypothesis: z − mean(z) of equal logits left ±1 ulp, which pnorm's 1e-12 floor
    # turned into a score of ~±2e-3 instead of 0.
    for spec in ["pnorm:1", "pnorm:2", "pnorm:inf", "centred_maxlogit"]:
        assert score(spec, [[c] * 9])[0] == 0.0


# --- input errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ALL)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_raise(spec, bad):
    z = np.zeros((3, 4))
    z[1, 2] = bad
    with pytest.raises(S.ScoreError, match="NaN or inf in 1 of 3 rows"):
        S.create_score(spec)(z)


@pytest.mark.parametrize(("logits", "match"), [
    (np.zeros(4), "2-D array"),
    (np.zeros((2, 1)), "at least 2 classes"),
    (np.array([["a", "b"]]), "real numbers"),
    (np.ones((1, 2), dtype=complex), "real numbers"),
    (np.ones((1, 2), dtype=bool), "real numbers"),
])
def test_bad_logit_arrays_raise(logits, match):
    with pytest.raises(S.ScoreError, match=match):
        S.create_score("msp")(logits)


@pytest.mark.parametrize("spec", ["pnorm:1", "pnorm:2", "pnorm:inf"])
def test_pnorm_refuses_two_classes_with_advice(spec):
    with pytest.raises(S.ScoreError, match=r"K = 2.*constant.*Use 'msp' or 'margin'"):
        S.create_score(spec)(np.array([[1.0, 0.0], [5.0, -2.0]]))


def test_centred_maxlogit_as_pnorm_zero_still_ranks_two_classes():
    out = score("pnorm:0", [[1.0, 0.0], [5.0, -2.0]])
    np.testing.assert_allclose(out, [0.5, 3.5])


@pytest.mark.parametrize("spec", ["softmax", "pnorm", "pnorm:", "pnorm:x", "pnorm:-1", "pnorm:nan",
                                  "msp:2", "", "  "])
def test_bad_specs_list_the_valid_ones(spec):
    with pytest.raises(S.ScoreError) as info:
        S.create_score(spec)
    assert isinstance(info.value, AbstainError)
    msg = str(info.value)
    assert repr(spec) in msg or spec.strip() in msg or "non-empty" in msg
    if spec.strip() and not spec.startswith(("pnorm", "msp:")):
        for name in FIXED:
            assert name in msg
        assert "pnorm:<p>" in msg


def test_spec_canonicalisation_and_p():
    assert S.create_score("pnorm:2.0").spec == "pnorm:2"
    assert S.create_score(" pnorm:2.5 ").spec == "pnorm:2.5"
    assert S.create_score("pnorm:2").p == 2.0
    assert S.create_score("pnorm:inf").p == math.inf
    assert S.create_score("msp").p is None


def test_empty_batch():
    out = S.create_score("pnorm:2")(np.zeros((0, 5)))
    assert out.shape == (0,) and out.dtype == np.float64


# --- properties ---------------------------------------------------------------------------------

logit_batches = hnp.arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(3, 12)),
                           elements=st.floats(-50, 50, allow_nan=False))
# Logits on a 1/8 grid: adding a grid shift is exact, so any difference is the score's own error.
grid_batches = hnp.arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(3, 12)),
                          elements=st.integers(-400, 400).map(lambda v: v / 8))


@FAST
@given(grid_batches, st.integers(-8000, 8000).map(lambda v: v / 8))
def test_shift_invariant_scores(z, c):
    for spec in ["msp", "log_msp", "centred_maxlogit", "margin", "pnorm:1", "pnorm:2", "pnorm:7"]:
        np.testing.assert_allclose(score(spec, z + c), score(spec, z), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(score("maxlogit", z + c), score("maxlogit", z) + c)
    # Each side is snapped at its own magnitude (≤ 2⁻⁴³ relative), so the tolerance scales with it.
    scale = abs(c) + np.abs(z).max() + 10.0
    np.testing.assert_allclose(score("energy", z + c), score("energy", z) + c, rtol=1e-12,
                               atol=1e-12 + 2 * SNAP * scale)


@FAST
@given(logit_batches)
def test_every_score_is_float64_finite_and_per_row(z):
    for spec in ALL:
        out = score(spec, z)
        assert out.dtype == np.float64 and out.shape == (z.shape[0],) and np.isfinite(out).all()
        # Row independence: scoring rows one at a time gives the same numbers.
        np.testing.assert_array_equal(out, np.concatenate([score(spec, z[i:i + 1])
                                                           for i in range(z.shape[0])]))
    msp = score("msp", z)
    assert np.all((msp >= 1 / z.shape[1] - 1e-12) & (msp <= 1.0))
    assert np.all(score("log_msp", z) <= 0)
    assert np.all(score("margin", z) >= 0)


# --------------------------------------------------------------------------------------------
# Snapping: scores equal in exact arithmetic compare equal (S.snap_scores, module docstring).
# --------------------------------------------------------------------------------------------


def test_pnorm1_is_exactly_one_half_when_only_the_top_logit_is_above_the_mean():
    # u_max / Σ|u| with Σu = 0 and a single positive u is exactly 1/2 in exact arithmetic.
    rng = np.random.default_rng(0)
    others = rng.normal(0.0, 1.0, (2000, 9))
    top = 50.0 + 100.0 * rng.random((2000, 1))              # mean > 5 > every other logit
    z = np.concatenate([top, others], axis=1)
    raw = S._pnorm(1.0)(S.as_logits(z))
    assert np.unique(raw).size > 1                          # float64 noise spreads them …
    assert np.abs(raw - 0.5).max() < 1e-14
    assert (score("pnorm:1", z) == 0.5).all()              # … snapping makes them one tie group


def test_snap_is_the_documented_float64_formula():
    s = np.array([0.4999999999999992, 0.5000000000000007, -0.0, 1e-300, -3.7, 1e305, -np.pi])
    c = s * 1025.0
    with np.errstate(over="ignore", invalid="ignore"):
        expected = np.where(np.abs(s) < 2.0 ** 1000, c - (c - s), s)
    assert np.array_equal(S.snap_scores(s), expected)
    assert S.snap_scores(s)[6] != -np.pi and abs(S.snap_scores(s)[6] + np.pi) < np.pi * 2 ** -43
    assert S.snap_scores(s)[5] == 1e305                    # above the guard: unchanged
    assert np.array_equal(S.snap_scores(S.snap_scores(s)), S.snap_scores(s))   # idempotent


@FAST
@given(hnp.arrays(np.float64, st.integers(2, 40),
                  elements=st.floats(-1e250, 1e250, allow_nan=False, allow_subnormal=False)))
def test_snap_is_monotone_and_relative(s):
    out = S.snap_scores(s)
    order = np.argsort(s, kind="stable")
    assert np.all(np.diff(out[order]) >= 0)                 # never reverses a ranking
    np.testing.assert_allclose(out, s, rtol=2.0 ** -43, atol=0)


@FAST
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(3, 9)),
                  elements=st.floats(-30, 30, allow_nan=False)), st.randoms(use_true_random=False))
def test_class_order_does_not_change_any_score(z, rnd):
    # Permuting the classes leaves every score equal in exact arithmetic; snapped, they compare equal.
    perm = list(range(z.shape[1]))
    rnd.shuffle(perm)
    for spec in ALL:
        assert np.array_equal(score(spec, z[:, perm]), score(spec, z)), spec
