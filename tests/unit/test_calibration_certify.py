"""LTT, SGR and coverage certification on hand-built (scores, errors) with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from serve.calibration.binomial import (
    binomial_p_values,
    clopper_pearson_interval,
    clopper_pearson_upper,
)
from serve.calibration.certify import (
    CertifyError,
    certify,
    certify_coverage,
    certify_ltt,
    certify_planned,
    certify_sgr,
    min_accepted,
    zero_error_minimum,
)
from serve.calibration.union import certify_union
from serve.selective_metrics import risk_coverage_curve


def test_zero_error_minimum_matches_methods_reference() -> None:
    assert zero_error_minimum(0.05, 0.1) == 45
    assert zero_error_minimum(0.02, 0.05) == 149
    assert min_accepted(0.2, 0.1) == 30            # the floor of 30 wins
    assert min_accepted(0.02, 0.05) == 149
    # 149 all-correct samples pass the binomial test, 148 do not.
    assert binomial_p_values(0, 149, 0.02) <= 0.05 < binomial_p_values(0, 148, 0.02)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 50), (17, 400), (49, 50)])
def test_clopper_pearson_upper_is_the_exact_inversion(k: int, n: int) -> None:
    b = float(clopper_pearson_upper(k, n, 0.05))
    assert stats.binom.cdf(k, n, b) == pytest.approx(0.05, abs=1e-9)
    assert stats.binom.cdf(k, n, b - 1e-6) > 0.05
    assert float(clopper_pearson_upper(n, n, 0.05)) == 1.0
    lo, hi = clopper_pearson_interval(k, n, 0.95)
    assert lo <= k / n <= hi
    assert hi == pytest.approx(float(clopper_pearson_upper(k, n, 0.025)))


def _sorted_case(n_clean: int, n_dirty: int, dirty_rate: float, seed: int = 0):
    """Scores descending: first n_clean samples are correct, then errors at dirty_rate."""
    rng = np.random.default_rng(seed)
    scores = np.linspace(1.0, 0.0, n_clean + n_dirty)
    errors = np.concatenate([np.zeros(n_clean, bool), rng.random(n_dirty) < dirty_rate])
    return scores, errors


def test_ltt_stops_at_first_failure_and_deploys_last_certified() -> None:
    scores, errors = _sorted_case(600, 1400, 0.5)
    cert = certify_ltt(scores, errors, 0.05, 0.1)
    assert cert.certified and cert.method == "ltt"
    curve = risk_coverage_curve(scores, errors)
    g = int(np.flatnonzero(curve.thresholds == cert.threshold)[0])
    start = int(np.searchsorted(curve.n_accepted, 45))
    p = binomial_p_values(curve.n_errors, curve.n_accepted, 0.05)
    assert (p[start:g + 1] <= 0.1).all()            # every point up to the deployed one certified
    assert p[g + 1] > 0.1                            # the next one fails: fixed sequence stops
    assert cert.n_accepted == g + 1 and cert.n_errors == int(errors[:g + 1].sum())
    assert 600 < cert.n_accepted < 800
    assert cert.risk_upper_bound <= 0.05
    assert cert.coverage == pytest.approx(cert.n_accepted / 2000)


def test_ltt_groups_tied_scores() -> None:
    # 200 tied top scores with 2 errors, then a block with many errors.
    scores = np.concatenate([np.full(200, 5.0), np.linspace(4, 0, 300)])
    errors = np.zeros(500, bool)
    errors[[3, 150]] = True
    errors[200::2] = True
    cert = certify_ltt(scores, errors, 0.05, 0.1)
    assert cert.n_accepted >= 200                     # the tie group is accepted as a whole
    assert (scores >= cert.threshold).sum() == cert.n_accepted


def test_not_certifiable_says_how_many_samples_are_needed() -> None:
    scores = np.linspace(1, 0, 100)
    errors = np.zeros(100, bool)
    cert = certify_ltt(scores, errors, 0.02, 0.05)
    assert not cert.certified and cert.threshold is None
    assert cert.needed == 149
    assert "needs at least 149 certification samples" in cert.detail
    # ... and 149 error-free samples really do suffice.
    more = certify_ltt(np.linspace(1, 0, 149), np.zeros(149, bool), 0.02, 0.05)
    assert more.certified and more.n_accepted == 149


def test_not_certifiable_when_risk_is_never_below_target() -> None:
    rng = np.random.default_rng(1)
    scores, errors = rng.random(5000), rng.random(5000) < 0.3
    cert = certify_ltt(scores, errors, 0.01, 0.05)
    assert not cert.certified and cert.needed is None
    assert "raise --target-risk" in cert.detail
    # The most confident sample is correct (risk 0 at n = 1), but that point is too small to
    # count: the message reports the lowest risk among thresholds accepting ≥ 10 samples.
    scores[np.argmax(scores)], errors[np.argmax(scores)] = 2.0, False
    cert = certify_ltt(scores, errors, 0.01, 0.05)
    lowest = float(cert.detail.split("lowest: ")[1].split(")")[0])
    c = risk_coverage_curve(scores, errors)
    assert lowest == pytest.approx(c.risk[c.n_accepted >= 10].min(), abs=5e-5) and lowest > 0.01


def test_sgr_is_safe_and_close_to_ltt() -> None:
    scores, errors = _sorted_case(3000, 7000, 0.3, seed=2)
    s = certify_sgr(scores, errors, 0.05, 0.1)
    steps = math.ceil(math.log2(10000))
    assert s.certified and s.risk_upper_bound <= 0.05
    assert s.risk_upper_bound == pytest.approx(
        float(clopper_pearson_upper(s.n_errors, s.n_accepted, 0.1 / steps)))
    ltt = certify_ltt(scores, errors, 0.05, 0.1)
    assert 0.8 * ltt.coverage < s.coverage <= 1.05 * ltt.coverage


def test_coverage_mode_picks_the_strictest_threshold_reaching_coverage() -> None:
    scores, errors = _sorted_case(3000, 7000, 0.3, seed=3)
    c = certify_coverage(scores, errors, 0.45, 0.1, target_risk=0.05)
    assert c.n_accepted == 4500 and c.method == "coverage"
    assert c.risk_upper_bound == pytest.approx(float(clopper_pearson_upper(c.n_errors, 4500, 0.1)))
    assert c.risk_upper_bound > 0.05 and "does NOT meet" in c.detail
    assert certify(scores, errors, 0.05, 0.1, target_coverage=0.45) == c


@pytest.mark.parametrize(("risk", "delta"), [(0.0, 0.1), (1.0, 0.1), (0.05, 0.0), (0.05, 1.5)])
def test_bad_parameters_are_refused(risk: float, delta: float) -> None:
    with pytest.raises(CertifyError, match="strictly between 0 and 1"):
        certify(np.arange(10.0), np.zeros(10, bool), risk, delta)


def test_early_error_stops_ltt_and_the_message_says_what_failed() -> None:
    # The single most confident sample is wrong; everything else is right.
    scores = np.linspace(1, 0, 2000)
    errors = np.zeros(2000, bool)
    errors[0] = True
    ltt = certify_ltt(scores, errors, 0.05, 0.1)
    assert not ltt.certified and ltt.needed is not None and ltt.needed <= 2000
    assert ltt.refusal == "first test failed" and "needs at least" not in ltt.detail
    assert "accepting 45 of 2000 with 1 errors" in ltt.detail       # the first test's counts
    assert "observed risk is ≤ 0.05 up to coverage 1.0000" in ltt.detail
    assert "seed" not in ltt.detail and "--method" not in ltt.detail  # no invitation to retry
    sgr = certify_sgr(scores, errors, 0.05, 0.1)
    assert sgr.certified and sgr.n_accepted > 1000


def _plan_for(scores: np.ndarray, errors: np.ndarray, n_cert: int, r: float, level: float):
    from serve.calibration.plan import plan_ltt

    return plan_ltt(scores, errors, n_cert, r, level)


def test_union_deploys_the_more_permissive_certificate_at_the_split_levels() -> None:
    """Each test runs at its share of δ; the certified threshold with more coverage is deployed."""
    rng = np.random.default_rng(11)
    s = rng.random(4000)
    e = rng.random(4000) < 0.08 * (1.0 - s)                 # risk falls with the score
    tune, cert = np.arange(1200), np.arange(1200, 4000)
    plan = _plan_for(s[tune], e[tune], len(cert), 0.05, 0.05)
    out = certify_union(s[cert], e[cert], plan, s, e, 0.05, 0.1, share=0.5)
    assert out.planned.delta == pytest.approx(0.05) and out.floored.delta == pytest.approx(0.05)
    assert out.floored == certify_ltt(s, e, 0.05, 0.05)
    cov = {"planned": float(np.mean(s >= out.planned.threshold)), "floored": out.floored.coverage}
    assert out.chosen == max(cov, key=lambda k: (cov[k], k == "planned"))
    assert out.certificate.threshold == getattr(out, out.chosen).threshold
    assert out.certificate.delta == 0.1 and "union with the" in out.certificate.procedure


def test_refusals_say_which_of_three_things_happened() -> None:
    # 1. Too few samples even with zero errors: the floor and the count.
    few = certify_ltt(np.linspace(1, 0, 100), np.zeros(100, bool), 0.02, 0.05)
    assert few.refusal == "too few samples"
    assert "100 samples, fewer than 149" in few.detail and "even with zero errors" in few.detail
    # 2. Observed risk above r* at every tested threshold: the lowest and where it is ≤ r*.
    s = np.linspace(1, 0, 3000)
    e = np.zeros(3000, bool)
    e[20:] = np.random.default_rng(0).random(2980) < 0.3      # clean only in the top 20
    above = certify_ltt(s, e, 0.05, 0.1)
    assert above.refusal == "risk above target" and "lowest 0." in above.detail
    c = risk_coverage_curve(s, e)
    g = np.flatnonzero((c.n_accepted >= 10) & (c.n_errors <= 0.05 * c.n_accepted))[-1]
    assert 20 <= c.n_accepted[g] < 45                          # below the floor of 45
    assert (f"≤ 0.05 up to coverage {c.coverage[g]:.4f} (accepting {c.n_accepted[g]}, "
            f"{c.n_errors[g]} errors)") in above.detail
    # 3. The planned start failed although the observed risk is ≤ r* there: its counts and p.
    rng = np.random.default_rng(3)
    plan = _plan_for(rng.random(900), np.zeros(900, bool), 2100, 0.05, 0.1)   # clean tuning
    assert plan.tune_coverage[plan.starts[0]] > 0.9                           # starts permissive
    s2, e2 = rng.random(2100), np.zeros(2100, bool)
    e2[rng.choice(2100, 99, replace=False)] = True          # 4.7 %: ≤ r* but p ≈ 0.3 > δ
    bad_start = certify_planned(s2, e2, plan, 0.05, 0.1)
    assert not bad_start.certified and bad_start.refusal == "first test failed"
    m = int((s2 >= plan.thresholds[plan.starts[0]]).sum())
    k = int(e2[s2 >= plan.thresholds[plan.starts[0]]].sum())
    assert f"the planned start (tuning coverage {plan.tune_coverage[plan.starts[0]]:.4f}" in \
        bad_start.detail
    assert f"accepting {m} of 2100 with {k} errors" in bad_start.detail
    assert f"p-value {stats.binom.cdf(k, m, 0.05):.3g} > δ = 0.1" in bad_start.detail
    for c in (few, above, bad_start):
        assert "seed" not in c.detail and "sampling noise" not in c.detail


def test_union_refusal_reports_both_tests() -> None:
    rng = np.random.default_rng(4)
    s, e = rng.random(2000), rng.random(2000) < 0.3
    plan = _plan_for(s[:600], e[:600], 1400, 0.05, 0.05)
    out = certify_union(s[600:], e[600:], plan, s, e, 0.05, 0.1, share=0.5)
    assert out.chosen is None and not out.certificate.certified
    d = out.certificate.detail
    assert d.startswith("neither test certified") and "Planned sequence (δ = 0.05" in d
    assert "Floored sequence (δ = 0.05, all 2000 samples)" in d and "more data will not help" in d


def test_floor_share_gives_all_of_delta_to_the_floored_sequence_below_twelve_floors() -> None:
    """The split depends on (n, r*, δ) only: below 12 floors the union is the floored sequence."""
    from serve.calibration.union import FLOOR_ONLY_BELOW, FLOOR_SHARE, floor_share

    floor = min_accepted(0.05, 0.1)                               # 45
    assert floor == 45 and FLOOR_ONLY_BELOW == 12
    assert floor_share(12 * floor - 1, 0.05, 0.1) == 1.0
    assert floor_share(12 * floor, 0.05, 0.1) == FLOOR_SHARE
    assert floor_share(3000, 0.01, 0.05) == 1.0                   # 3000 < 12 × 299
    assert floor_share(3000, 0.05, 0.05) == FLOOR_SHARE           # 3000 ≥ 12 × 59


def test_union_below_twelve_floors_is_the_floored_sequence_at_full_delta() -> None:
    rng = np.random.default_rng(5)
    s = rng.random(500)
    e = rng.random(500) < 0.06 * (1.0 - s)
    out = certify_union(s[150:], e[150:], None, s, e, 0.05, 0.1)  # 500 < 12 × 45: no plan needed
    alone = certify_ltt(s, e, 0.05, 0.1)
    assert alone.certified and out.chosen == "floored" and out.floored == alone
    assert out.certificate.threshold == alone.threshold and out.certificate.delta == 0.1
    assert not out.planned.certified and out.planned.refusal == "not run"
    assert "fewer than 12 × the floored sequence's floor of 45" in out.certificate.detail
    bad = rng.random(500) < 0.5                                    # nothing certifiable
    refused = certify_union(s[150:], bad[150:], None, s, bad, 0.05, 0.1)
    assert refused.chosen is None and not refused.certificate.certified
    assert refused.certificate.detail.startswith(certify_ltt(s, bad, 0.05, 0.1).detail)
    with pytest.raises(ValueError, match="needs a plan"):
        certify_union(s[150:], e[150:], None, s, e, 0.05, 0.1, share=0.9)
