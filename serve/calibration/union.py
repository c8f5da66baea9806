"""The default certification: the planned sequence ∪ the floored fixed sequence (issue 24).

The planned LTT on the certification split at (1 − w)·δ and the floored fixed sequence on all
samples, with a score fixed before any label, at w·δ; the certified rule with more coverage is
deployed. w = :func:`floor_share` of (n, r*, δ): all of δ to the floored sequence below
``FLOOR_ONLY_BELOW`` floors, else ``FLOOR_SHARE`` (docs/calibration.md, docs/METHODS.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from serve.calibration.certify import (
    Certificate,
    CertifyError,
    certify_ltt,
    certify_planned,
    check_risk_and_delta,
    min_accepted,
)
from serve.calibration.plan import LttPlan

FLOOR_SHARE = 0.9        # share of δ for the floored sequence above FLOOR_ONLY_BELOW floors
FLOOR_ONLY_BELOW = 12    # n below this many floors: all of δ to the floored sequence


def floor_share(n: int, target_risk: float, delta: float) -> float:
    """The floored sequence's share of δ in the default, from ``n``, r* and δ alone.

    All of δ (1.0) when ``n < FLOOR_ONLY_BELOW × min_accepted(r*, δ)``, else ``FLOOR_SHARE``.
    With so few samples per floor, the floored sequence's decisive test sits at or near its
    zero-error floor, and any δ spent elsewhere raises that floor: on the family grid every cell
    where the union at 0.9 δ certified less often or less coverage than the floored sequence at δ
    had n < 11.2 floors (docs/calibration.md). The rule reads no score and no label, so it is
    fixed before the data and the union bound is untouched.
    """
    return 1.0 if n < FLOOR_ONLY_BELOW * min_accepted(target_risk, delta) else FLOOR_SHARE


@dataclass(frozen=True)
class UnionOutcome:
    """The default procedure's two tests and which certified threshold is deployed.

    ``certificate`` is the deployed one (``chosen`` = "planned" or "floored"), or a refusal that
    reports both tests (``chosen`` None).
    """

    certificate: Certificate
    planned: Certificate
    floored: Certificate
    chosen: Literal["planned", "floored"] | None


def certify_union(cert_scores: np.ndarray, cert_errors: np.ndarray, plan: LttPlan | None,
                  all_scores: np.ndarray, all_errors: np.ndarray, target_risk: float,
                  delta: float, share: float | None = None,
                  planned_all_scores: np.ndarray | None = None) -> UnionOutcome:
    """The default: the planned sequence on the certification split at (1 − w)·δ and the floored
    fixed sequence on *all* samples at w·δ (w = ``share``, default :func:`floor_share` of the
    sample count); deploy the certified threshold with the larger coverage on all samples. At
    w = 1 the planned sequence is not run (``plan`` may then be None).

    Valid by a union bound: each test alone certifies a threshold with risk > r* with probability
    at most its level (the planned one because its plan comes from the tuning split only, the
    floored one because its score is fixed in advance and its hypotheses are label-free), so the
    probability that *either* certifies a bad threshold is ≤ (1 − w)·δ + w·δ = δ; when neither
    does, whichever is deployed is good. The two may use different scores (``all_scores`` must be
    a score fixed before any label was seen; ``planned_all_scores`` is the planned score on all
    samples, for the coverage comparison, default ``all_scores``).
    """
    check_risk_and_delta(target_risk, delta)
    n = len(all_scores)
    w = floor_share(n, target_risk, delta) if share is None else float(share)
    b = certify_ltt(all_scores, all_errors, target_risk, w * delta)
    if w >= 1.0:
        why = (f"not run: {n} samples are fewer than {FLOOR_ONLY_BELOW} × the floored sequence's "
               f"floor of {min_accepted(target_risk, delta)}, so all of δ went to the floored "
               "sequence")
        a = replace(b, threshold=None, n_accepted=0, n_errors=0, risk_upper_bound=0.0,
                    n=len(cert_scores), delta=0.0, why=why, detail=why, refusal="not run",
                    procedure="planned fixed sequence (not run)", start="")
        if b.certified:
            return UnionOutcome(replace(b, detail=f"{b.detail}; the planned sequence was {why}",
                                        procedure=f"{b.procedure}, at all of δ = {delta:g}"),
                                a, b, "floored")
        return UnionOutcome(replace(b, detail=f"{b.detail} (the planned sequence was {why})"),
                            a, b, None)
    if plan is None:
        raise CertifyError(f"the union at floor share {w:g} needs a plan from the tuning split")
    a = certify_planned(cert_scores, cert_errors, plan, target_risk, (1.0 - w) * delta)
    chosen: Literal["planned", "floored"] | None = None
    if a.certified and b.certified:
        pa = all_scores if planned_all_scores is None else planned_all_scores
        cov_a = float(np.mean(np.asarray(pa) >= a.threshold))
        chosen = "planned" if cov_a >= b.coverage else "floored"
    elif a.certified or b.certified:
        chosen = "planned" if a.certified else "floored"
    if chosen is not None:
        won = a if chosen == "planned" else b
        other = b if chosen == "planned" else a
        note = (f"{won.detail}; the other test ({other.procedure} at δ = {other.delta:.3g}) "
                + (f"certified coverage {other.coverage:.4f}" if other.certified
                   else "certified nothing"))
        cert = replace(won, delta=delta, detail=note,
                       procedure=f"{won.procedure}, at δ = {won.delta:.3g} of δ = {delta:g} "
                                 f"(union with the {'floored' if chosen == 'planned' else 'planned'}"
                                 " sequence)")
        return UnionOutcome(cert, a, b, chosen)
    hint = b.detail[len(b.why) + 2:] if b.detail.startswith(b.why) else b.detail
    none = replace(a, delta=delta, n=len(all_scores), procedure="planned ∪ floored",
                   needed=b.needed, why=f"planned: {a.why}; floored: {b.why}",
                   refusal=a.refusal if a.refusal == b.refusal else f"{a.refusal}; {b.refusal}",
                   detail=f"neither test certified. Planned sequence (δ = {a.delta:.3g}, "
                          f"{a.n} certification samples): {a.why}. Floored sequence (δ = "
                          f"{b.delta:.3g}, all {b.n} samples): {b.why}. {hint}")
    return UnionOutcome(none, a, b, None)
