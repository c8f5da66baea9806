"""Live risk: the confidence sequence survives a look after every label; a fixed interval does not.

Also the audit draw (rate ≈ q, independent of score) and the harmful/benign shift simulation with
recalibration on audited data (METHODS §7).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from serve.calibration.certify import certify
from serve.feedback.audit import Auditor
from serve.feedback.risk import confidence_sequence, excludes, fixed_interval, live_risk

DELTA = 0.05


def _streams(p: float, n_streams: int, n_labels: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).random((n_streams, n_labels)) < p
    return np.cumsum(x, axis=1)


def test_confidence_sequence_miscoverage_stays_below_delta_under_continuous_monitoring() -> None:
    p, streams, looks = 0.05, 1000, 400
    s = _streams(p, streams, looks, seed=1)
    t = np.arange(1, looks + 1)
    ever_out = excludes(p, s, t, DELTA, target=0.05).any(axis=1)
    assert ever_out.mean() <= DELTA, ever_out.mean()
    # the vectorised exclusion is the same set as the bisected interval
    for i in range(5):
        lo, hi = confidence_sequence(int(s[i, -1]), looks, DELTA, 0.05)
        assert lo < p < hi or ever_out[i]
        assert not excludes(0.5 * (lo + hi), s[i, -1], looks, DELTA, 0.05)
        assert excludes(min(hi * 1.01, 0.999), s[i, -1], looks, DELTA, 0.05)


def test_fixed_sample_interval_under_the_same_looks_exceeds_delta() -> None:
    p, streams, looks = 0.05, 1000, 400
    s = _streams(p, streams, looks, seed=1)
    t = np.arange(1, looks + 1)
    lo = np.where(s > 0, stats.beta.ppf(DELTA / 2, np.maximum(s, 1), t - s + 1), 0.0)
    hi = np.where(s < t, stats.beta.ppf(1 - DELTA / 2, s + 1, np.maximum(t - s, 1)), 1.0)
    ever_out = ((p < lo) | (p > hi)).any(axis=1)
    assert ever_out.mean() > 3 * DELTA, ever_out.mean()   # measured ≈ 0.3 with this seed
    assert fixed_interval(int(s[0, 9]), 10, DELTA) == pytest.approx((lo[0, 9], hi[0, 9]))


def test_status_follows_the_bounds() -> None:
    assert live_risk("m", "1", "c", 0.02, 0, 0, 0, DELTA).status == "insufficient"
    assert live_risk("m", "1", "c", 0.02, 0, 40, 3, DELTA).status == "insufficient"
    ok = live_risk("m", "1", "c", 0.02, 0, 400, 7, DELTA)
    assert ok.status == "ok" and ok.upper <= 0.02 < ok.upper_pessimistic
    assert live_risk("m", "1", "c", 0.02, 5, 300, 0, DELTA).status == "watch"
    alarm = live_risk("m", "1", "c", 0.02, 20, 200, 0, DELTA)
    assert alarm.status == "alarm" and alarm.lower > 0.02


def test_audit_rate_is_q_and_independent_of_score() -> None:
    q, n = 0.05, 200_000
    auditor = Auditor(q, seed=3)
    flags = np.concatenate([auditor.draw(1000) for _ in range(n // 1000)])
    assert abs(flags.mean() - q) < 4 * np.sqrt(q * (1 - q) / n)
    scores = np.random.default_rng(4).beta(5, 1, n)       # skewed, like MSP
    bins = np.digitize(scores, np.quantile(scores, [0.2, 0.4, 0.6, 0.8]))
    table = np.array([[np.sum((bins == b) & flags), np.sum((bins == b) & ~flags)] for b in range(5)])
    assert stats.chi2_contingency(table).pvalue > 0.001
    assert not Auditor(0.0).draw(10).any() and Auditor(1.0).draw(10).all()


def _first_alarm(errors: np.ndarray, r: float) -> np.ndarray:
    s = np.cumsum(errors, axis=1)
    t = np.arange(1, errors.shape[1] + 1)
    alarm = excludes(r, s, t, DELTA, r) & (s > r * t)      # lower end of C_t above r*
    return np.where(alarm.any(axis=1), alarm.argmax(axis=1), -1)


def test_harmful_shift_alarms_within_1200_labels_and_benign_shift_never() -> None:
    """r* = 2%: accepted errors 1% for 200 audited labels, then 6% (harmful) or 1% (benign)."""
    r, pre, post, streams = 0.02, 200, 1200, 200
    rng = np.random.default_rng(5)
    harmful = np.concatenate([rng.random((streams, pre)) < 0.01, rng.random((streams, post)) < 0.06], 1)
    first = _first_alarm(harmful, r)
    assert (first >= pre).all()                          # never before the shift
    after = first - pre + 1
    assert np.quantile(after, 0.9) <= 800 and after.max() <= post
    i = int(np.argmin(after))                            # the real status agrees at the boundary
    s = np.cumsum(harmful[i])
    n = first[i] + 1
    assert live_risk("m", "1", "c", r, int(s[n - 1]), n, 0, DELTA).status == "alarm"
    assert live_risk("m", "1", "c", r, int(s[n - 2]), n - 1, 0, DELTA).status != "alarm"
    benign = rng.random((streams, pre + post)) < 0.01
    assert (_first_alarm(benign, r) == -1).all()


def test_recalibrating_on_audited_shifted_data_restores_the_risk() -> None:
    """After a shift the old threshold's true risk exceeds r*; a threshold certified on a uniform
    audit sample of the shifted traffic brings it back under r*."""
    r, rng = 0.05, np.random.default_rng(6)

    def traffic(n: int, shifted: bool) -> tuple[np.ndarray, np.ndarray]:
        score = rng.random(n)
        p_err = 0.4 * (1 - score) ** 2 * (3.0 if shifted else 1.0)
        return score, rng.random(n) < np.minimum(p_err, 1)

    def true_risk(th: float, shifted: bool) -> float:
        s, e = traffic(400_000, shifted)
        return float(e[s >= th].mean())

    old = certify(*traffic(4000, False), target_risk=r, delta=0.1)
    assert true_risk(old.threshold, False) <= r < true_risk(old.threshold, True)
    scores, errors = traffic(20_000, True)
    audited = Auditor(0.2, seed=7).draw(len(scores))       # the uniform sample that got labels
    new = certify(scores[audited], errors[audited], target_risk=r, delta=0.1)
    assert new.certified and new.threshold > old.threshold
    assert true_risk(new.threshold, True) <= r


def test_expired_audits_drive_the_status_and_pending_ones_the_pessimistic_bound() -> None:
    young = live_risk("m", "1", "c", 0.02, 0, 400, 10, DELTA)         # 10 still within the TTL
    assert young.status == "ok" and young.status_basis == "labelled"
    assert young.upper <= 0.02 < young.upper_pessimistic
    old = live_risk("m", "1", "c", 0.02, 0, 400, 0, DELTA, expired=10)  # 10 outlived it
    assert old.status == "watch" and old.status_basis.startswith("labelled + 10 expired")
    assert (old.lower, old.upper) == (young.lower, young.upper)      # labelled-only, unchanged
    assert old.upper_pessimistic == young.upper_pessimistic         # each counted once, as an error
    assert old.labels_to_ok > 0 and old.labels_to_alarm is None
    assert live_risk("m", "1", "c", 0.02, 0, 60, 0, DELTA, expired=20).status == "alarm"


def test_labels_to_ok_and_to_alarm_are_the_first_counts_that_reach_them() -> None:
    r = 0.02
    ok = live_risk("m", "1", "c", r, 0, 50, 0, DELTA)                  # no error so far: rate 0
    m = ok.labels_to_ok
    assert ok.status == "insufficient" and m > 0
    assert live_risk("m", "1", "c", r, 0, 50 + m, 0, DELTA).status == "ok"
    assert live_risk("m", "1", "c", r, 0, 50 + m - 1, 0, DELTA).status != "ok"
    assert ok.labels_to_alarm is None                                   # never at rate 0
    bad = live_risk("m", "1", "c", r, 4, 40, 0, DELTA)                 # rate 0.1 > r*
    m = bad.labels_to_alarm
    assert bad.status != "alarm" and m > 0 and bad.labels_to_ok is None
    assert confidence_sequence(4 + 0.1 * m, 40 + m, DELTA, r)[0] > r
    assert confidence_sequence(4 + 0.1 * (m - 1), 40 + m - 1, DELTA, r)[0] <= r
    assert live_risk("m", "1", "c", r, 20, 200, 0, DELTA).labels_to_alarm == 0


def test_counting_unlabelled_audits_as_errors_keeps_the_bound_above_the_true_risk() -> None:
    """Reviewers label a right prediction with probability 0.9, a wrong one with 0.6; the true
    accepted risk is 0.075 (r* = 0.05), 500 streams of 4,000 audits. The labelled-only upper
    end falls below the true risk in most streams; counting the unlabelled (once expired) as
    errors, in at most δ + slack of them, at any look, and ``ok`` is never reached."""
    p, r, streams, n = 0.075, 0.05, 500, 4000
    rng = np.random.default_rng(7)
    wrong = rng.random((streams, n)) < p
    labelled = rng.random((streams, n)) < np.where(wrong, 0.6, 0.9)
    t = np.arange(1, n + 1)
    s_pess = np.cumsum(wrong | ~labelled, axis=1)                      # every audit, in order
    below = excludes(p, s_pess, t, DELTA, r) & (s_pess < p * t)     # upper end below p
    slack = 3 * np.sqrt(DELTA * (1 - DELTA) / streams)
    assert below.any(axis=1).mean() <= DELTA + slack
    ok_pess = excludes(r, s_pess, t, DELTA, r) & (s_pess < r * t)     # upper end below r*
    assert not ok_pess.any()
    s_lab, t_lab = np.cumsum(wrong & labelled, axis=1), np.cumsum(labelled, axis=1)
    below_lab = excludes(p, s_lab, t_lab, DELTA, r) & (s_lab < p * t_lab)
    assert below_lab.any(axis=1).mean() > 0.5                          # the old, labelled-only view
