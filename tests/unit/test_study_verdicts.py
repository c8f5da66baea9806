"""The claim verdict rules on constructed per-run numbers (where the right verdict is known).

These runs carry no bootstrap replicates, so only the seed test applies (study_evidence);
tests/unit/test_study_evidence.py simulates the false-verdict rates with both.
"""

from __future__ import annotations

from typing import Any

import pytest

from training.study_analysis import METRICS, SCORES
from training.study_verdicts import MIN_ERRORS, all_claims, claim1, claim2, claim3, claim4

NOISE = (-1e-4, 2e-4, 0.0)


def _run(loss: str, seed: int, acc: float = 0.9, msp: dict | None = None,
         tuned_aurc: float | None = None, nc1: float = 1.0) -> dict[str, Any]:
    base = {"aurc": 0.05, "e_aurc": 0.02, "naurc": 0.3, "augrc": 0.02, "auroc": 0.85,
            "risk_at_80": 0.04, "risk_at_50": 0.01, "min_risk_cov_ge_50": 0.01}
    scores = {s: dict(base) for s in SCORES}
    scores["msp"].update(msp or {})
    for s in ("auto", "pnorm_tuned"):
        scores[s]["aurc"] = scores["msp"]["aurc"] if tuned_aurc is None else tuned_aurc
    assert set(scores["msp"]) == set(METRICS)
    return {"loss": loss, "seed": seed, "accuracy": acc + NOISE[seed] / 10, "auto_spec": "msp",
            "pnorm_tuned_spec": "pnorm:2", "scores": scores, "n_test_errors": 100,
            "collapse": {"train": {"nc1": nc1 + NOISE[seed]}}}


def test_claim1_is_judged_on_e_aurc_not_aurc() -> None:
    # LS has a higher AURC (lower accuracy would do that) but the same ranking quality.
    runs = [_run("ce", s, msp={"aurc": 0.05, "e_aurc": 0.02 + NOISE[s] / 100}) for s in range(3)]
    runs += [_run("ls:0.1", s, msp={"aurc": 0.08 + NOISE[s], "e_aurc": 0.02}) for s in range(3)]
    assert claim1(runs).verdict == "not reproduced"          # equivalent within the margin
    runs = [_run("ce", s, msp={"e_aurc": 0.02 + NOISE[s]}) for s in range(3)]
    runs += [_run(f"ls:{a}", s, msp={"e_aurc": 0.03 + NOISE[s] * 2}) for a in (0.1, 0.2)
             for s in range(3)]
    assert claim1(runs).verdict == "reproduced"
    assert claim1([r for r in runs if r["loss"] != "ce"]).verdict == "not testable"


def test_claim1_inconclusive_when_noise_swamps_the_difference() -> None:
    runs = [_run("ce", s, msp={"e_aurc": 0.02 + (0.0, 0.01, -0.01)[s]}) for s in range(3)]
    runs += [_run("ls:0.1", s, msp={"e_aurc": 0.022 + (0.01, -0.01, 0.0)[s]}) for s in range(3)]
    assert claim1(runs).verdict == "inconclusive"


def test_claim2_needs_a_loss_to_recover() -> None:
    runs = [_run("ce", s, msp={"aurc": 0.05 + NOISE[s]}) for s in range(3)]
    runs += [_run("ls:0.1", s, msp={"aurc": 0.05}, tuned_aurc=0.03) for s in range(3)]
    v = claim2(runs)
    assert v.verdict == "not testable" and "nothing to recover" in v.evidence[0]
    runs = [_run("ce", s, msp={"aurc": 0.05 + NOISE[s]}, tuned_aurc=0.049) for s in range(3)]
    runs += [_run("ls:0.1", s, msp={"aurc": 0.08 + NOISE[s]}, tuned_aurc=0.05) for s in range(3)]
    assert claim2(runs).verdict == "reproduced"


def test_claim3_needs_evidence_of_no_damage_and_compares_with_ls() -> None:
    ce = [_run("ce", s, msp={"e_aurc": 0.02 + NOISE[s]}) for s in range(3)]
    ls = [_run("ls:0.1", s, msp={"e_aurc": 0.02}) for s in range(3)]
    ok = [_run("maxsup:0.1", s, msp={"e_aurc": 0.02 + NOISE[s] / 10}) for s in range(3)]
    assert claim3(ce + ls + ok).verdict == "reproduced"
    worse = [_run("maxsup:0.1", s, msp={"e_aurc": 0.03 + NOISE[s]}) for s in range(3)]
    assert claim3(ce + ls + worse).verdict == "not reproduced"
    noisy = [_run("maxsup:0.1", s, msp={"e_aurc": 0.02 + (0.0, 0.01, -0.01)[s]}) for s in range(3)]
    assert claim3(ce + ls + noisy).verdict == "inconclusive"   # no evidence either way


@pytest.mark.parametrize(("ls_nc1", "expected"), [(0.5, "reproduced"), (1.5, "not reproduced"),
                                                   (1.0, "not reproduced")])
def test_claim4_nc1(ls_nc1: float, expected: str) -> None:
    runs = [_run("ce", s) for s in range(3)] + [_run("ls:0.1", s, nc1=ls_nc1) for s in range(3)]
    assert claim4(runs).verdict == expected


def test_too_few_errors_makes_sc_claims_not_testable() -> None:
    runs = [_run("ce", s) for s in range(3)] + [_run("ls:0.1", s) for s in range(3)]
    runs[0]["n_test_errors"] = MIN_ERRORS - 1
    claims = all_claims(runs)
    assert [c.verdict for c in claims[:3]] == ["not testable"] * 3
    assert claims[3].verdict != "not testable"
