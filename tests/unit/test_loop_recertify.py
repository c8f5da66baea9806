"""Recertification against ground truth, by simulation (fixed seeds, 500 repetitions per cell).

Traffic: scores s ~ U(0, 1) and P(wrong | s) = c·(1 − s)², so the true selective risk at a
threshold θ is c·(1 − θ)²/3 in closed form. r* = δ = 0.05. A "violation" is a certified threshold
whose true risk on the traffic it will face exceeds r*; the guarantee says P(violation) ≤ δ, and
each assertion allows the binomial slack of 500 repetitions (3 standard errors). Every cell also
measures the old rule (pool every epoch; labelled audits only) and asserts that it fails, so a
test that passes is not one that cannot fail. The code under test is
:func:`serve.feedback.recalibrate.recertify`, the whole rule ``--from-feedback`` runs.

The two simulations are marked ``slow``: 500 repetitions of several certifications per cell take
~4 s of CPU per cell (~25 s in all; 90 s of wall time on the shared 2-core machine).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from serve.calibration.certify import certify
from serve.feedback.recalibrate import WindowChoice, recertify
from serve.feedback.window import Audits

R_STAR, DELTA, REPS = 0.05, 0.05, 500
SLACK = 3 * math.sqrt(DELTA * (1 - DELTA) / REPS)        # ≈ 0.029
IN_FORCE = 0.55                                          # the pre-shift threshold in force
PRE, POST = "a" * 64, "b" * 64


def true_risk(c: float, theta: float | None) -> float:
    return 0.0 if theta is None else c * (1.0 - theta) ** 2 / 3.0


def traffic(rng: np.random.Generator, n: int, c: float) -> tuple[np.ndarray, np.ndarray]:
    s = rng.random(n)
    return s, rng.random(n) < c * (1.0 - s) ** 2


def audits(scores, wrong, labelled, epoch, epochs=(PRE, POST)) -> Audits:
    return Audits(np.asarray(scores, np.float64), np.asarray(wrong, bool) & labelled,
                  np.asarray(labelled, bool), np.asarray(epoch, np.int64),
                  np.arange(len(scores), dtype=np.float64), tuple(epochs))


@pytest.mark.slow
@pytest.mark.parametrize("n_post", [300, 1000, 3000])
def test_after_a_shift_the_default_window_keeps_the_guarantee(n_post: int) -> None:
    """2,000 pre-shift + n_post post-shift audits; the shift doubles the risk (c 0.6 → 1.2).

    * the change started a new epoch (a recalibration, a new version): the default window is the
      epoch in force, so only post-shift audits certify;
    * the change happened within the epoch in force: the default refuses (the error rate rose
      within the window) and names a --since; following it certifies on the audits after it;
    * the old rule, pooling every audit, violates in most repetitions.
    """
    rng = np.random.default_rng(1000 + n_post)
    pooled = new_epoch = mid = mid_refused = followed = followed_ok = 0
    for _ in range(REPS):
        s0, w0 = traffic(rng, 2000, 0.6)
        s1, w1 = traffic(rng, n_post, 1.2)
        s, w = np.r_[s0, s1], np.r_[w0, w1]
        ones = np.ones(len(s), bool)
        old = certify(s, w, R_STAR, DELTA)
        pooled += true_risk(1.2, old.threshold) > R_STAR
        # the change came with a new epoch
        a = audits(s, w, ones, np.r_[np.zeros(2000), np.ones(n_post)])
        out = recertify(a, POST, WindowChoice(), R_STAR, DELTA, in_force=IN_FORCE)
        assert out.refusal is None or out.cert is None or not out.cert.certified
        if out.cert is not None:
            assert len(out.window) == n_post
            new_epoch += true_risk(1.2, out.cert.threshold) > R_STAR
        # the change within the epoch in force
        a = audits(s, w, ones, np.ones(len(s)))
        out = recertify(a, POST, WindowChoice(), R_STAR, DELTA, in_force=IN_FORCE)
        if out.cert is None:
            mid_refused += 1
            rose = [c.at for c in out.changes if c.rejected]
            if rose:                                        # the operator follows the advice
                since = max(rose)
                again = recertify(a, POST, WindowChoice(since=since), R_STAR, DELTA,
                                  in_force=IN_FORCE)
                followed += 1
                if again.cert is not None:
                    followed_ok += true_risk(1.2, again.cert.threshold) > R_STAR
        else:
            mid += true_risk(1.2, out.cert.threshold) > R_STAR
    print(f"n_post={n_post}: violations pooled {pooled / REPS:.3f}, new epoch "
          f"{new_epoch / REPS:.3f}, mid-epoch default {mid / REPS:.3f} (refused "
          f"{mid_refused / REPS:.3f}), after --since {followed_ok / max(followed, 1):.3f}")
    assert pooled / REPS > 0.5                          # the old rule fails here
    assert new_epoch / REPS <= DELTA + SLACK
    assert mid / REPS <= DELTA + SLACK
    assert followed_ok / max(followed, 1) <= DELTA + SLACK


@pytest.mark.slow
@pytest.mark.parametrize(("p_label_right", "n"), [(0.9, 3000), (0.9, 10000), (0.995, 3000)])
def test_unlabelled_audits_count_as_errors_or_refuse(p_label_right: float, n: int) -> None:
    """Reviewers label a right prediction with probability ``p_label_right``, a wrong one with
    0.6; the true accepted risk at the threshold in force is 0.075 (c = 10/9, stationary).

    The default (--max-pending 0.05) refuses: 21% of the audits are unlabelled. Counting them as
    errors (--max-pending 1) never violates more than δ: at 0.9 nothing can be certified (10% of
    right predictions unlabelled put the pessimistic risk above r* everywhere), at 0.995 most
    repetitions certify. Labelled audits alone (the old rule) violate in most repetitions.
    """
    c = 0.075 * 3 / (1 - IN_FORCE) ** 2
    assert math.isclose(true_risk(c, IN_FORCE), 0.075)
    rng = np.random.default_rng(int(p_label_right * 1000) + n)
    old = refused = pess_cert = pess_viol = 0
    for _ in range(REPS):
        s, w = traffic(rng, n, c)
        labelled = rng.random(n) < np.where(w, 0.6, p_label_right)
        a = audits(s, w, labelled, np.zeros(n), epochs=(PRE,))
        only = certify(s[labelled], w[labelled], R_STAR, DELTA)
        old += true_risk(c, only.threshold) > R_STAR
        out = recertify(a, PRE, WindowChoice(), R_STAR, DELTA, in_force=IN_FORCE)
        refused += out.cert is None and "unlabelled, more than --max-pending" in out.refusal
        out = recertify(a, PRE, WindowChoice(max_pending=1.0), R_STAR, DELTA, in_force=IN_FORCE)
        if out.cert is not None and out.cert.certified:
            pess_cert += 1
            pess_viol += true_risk(c, out.cert.threshold) > R_STAR
    print(f"p_label_right={p_label_right}, n={n}: labelled-only violations {old / REPS:.3f}; "
          f"default refused {refused / REPS:.3f}; pessimistic certified {pess_cert / REPS:.3f}, "
          f"violations {pess_viol / REPS:.3f}")
    assert old / REPS > 0.5                             # the old rule fails here
    assert refused == REPS
    assert pess_viol / REPS <= DELTA + SLACK
    if p_label_right > 0.99:
        assert pess_cert / REPS > 0.5                   # the pessimistic rule is exercised
    else:
        assert pess_cert == 0


def test_the_change_check_splits_between_batches_and_its_since_makes_progress() -> None:
    """Audits recorded in one batch share a time: the suggested --since falls between batches, so
    following it leaves a window that no longer splits at the same place."""
    rng = np.random.default_rng(3)
    s = rng.random(2300)
    c = np.where(np.arange(2300) < 2050, 0.6, 1.2)                     # shift mid-batch 20
    w = rng.random(2300) < c * (1 - s) ** 2
    ts = np.repeat(np.arange(23, dtype=np.float64), 100)
    a = Audits(s, w, np.ones(2300, bool), np.zeros(2300, np.int64), ts, (PRE,))
    out = recertify(a, PRE, WindowChoice(), R_STAR, DELTA, in_force=IN_FORCE)
    assert out.cert is None and "the window mixes distributions" in out.refusal
    at = max(c.at for c in out.changes if c.rejected)
    assert at in set(ts.tolist()) and at > 0 and f"--since {at:.6f}" in out.refusal
    again = recertify(a, PRE, WindowChoice(since=at), R_STAR, DELTA, in_force=IN_FORCE)
    assert len(again.window) == int((ts >= at).sum())
    assert all(c.at is None or c.at > at for c in again.changes if c.rejected)


def test_pending_refusal_says_how_many_to_label() -> None:
    lab = np.ones(1000, bool)
    lab[:80] = False                                                   # 8% unlabelled
    a = Audits(np.linspace(0, 1, 1000), np.zeros(1000, bool), lab, np.zeros(1000, np.int64),
               np.arange(1000.0), (PRE,))
    out = recertify(a, PRE, WindowChoice(), R_STAR, DELTA)
    assert out.cert is None and "80 of the window's 1000 audits (8.0%)" in out.refusal
    assert "label 30 more" in out.refusal                              # 50 may stay unlabelled
    out = recertify(a, PRE, WindowChoice(max_pending=0.1), R_STAR, DELTA)
    assert out.refusal is None and out.cert.certified
    assert out.cert.n_errors == int(((np.linspace(0, 1, 1000) >= out.cert.threshold) & ~lab).sum())


def test_labels_to_certify_is_the_first_count_whose_test_passes() -> None:
    from serve.calibration.binomial import binomial_p_values
    from serve.feedback.window import labels_to_certify

    s = np.linspace(0, 1, 400, endpoint=False)
    e = np.zeros(400, bool)
    e[np.arange(200, 400, 25)] = True                                  # 8 errors in 200 accepted
    more = labels_to_certify(s, e, 0.5, R_STAR, DELTA)
    m = (400 + more) // 2                                              # at coverage 0.5
    assert more > 0 and binomial_p_values(np.floor(0.04 * m), m, R_STAR) <= DELTA
    assert binomial_p_values(np.floor(0.04 * (m - 1)), m - 1, R_STAR) > DELTA
    assert labels_to_certify(s, e & (s < 0.75), 0.5, R_STAR, DELTA) == 0   # 4/200 passes now
    assert labels_to_certify(s, e | (s > 0.9), 0.5, R_STAR, DELTA) is None   # rate above r*
