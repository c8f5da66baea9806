"""The claim verdict rules on constructed per-run numbers (where the right verdict is known)."""

from __future__ import annotations

from typing import Any

import pytest

from training.study_analysis import METRICS, SCORES
from training.study_verdicts import all_claims, claim1, claim2, claim3, claim4, paired


def _run(loss: str, seed: int, acc: float = 0.9, msp: dict | None = None, auto_aurc: float | None = None,
         nc1: float = 1.0) -> dict[str, Any]:
    base = {"aurc": 0.05, "e_aurc": 0.02, "naurc": 0.3, "augrc": 0.02, "auroc": 0.85,
            "risk_at_80": 0.04, "risk_at_50": 0.01}
    scores = {s: dict(base) for s in SCORES}
    scores["msp"].update(msp or {})
    for s in ("auto", "pnorm_tuned"):
        scores[s]["aurc"] = scores["msp"]["aurc"] if auto_aurc is None else auto_aurc
    assert set(scores["msp"]) == set(METRICS)
    return {"loss": loss, "seed": seed, "accuracy": acc, "auto_spec": "msp", "scores": scores,
            "collapse": {"train": {"nc1": nc1}}}


def _noise(seed: int) -> float:
    return (-1e-4, 2e-4, 0.0)[seed]


def test_paired_clear_needs_sign_agreement_and_effect_above_spread() -> None:
    assert paired({0: 1.0, 1: 1.1, 2: 0.9}, {0: 0.0, 1: 0.0, 2: 0.0}).sign == 1
    assert paired({0: 1.0, 1: -0.1, 2: 0.9}, {0: 0.0, 1: 0.0, 2: 0.0}).sign == 0
    # All positive but the spread dwarfs the mean: not clear.
    assert paired({0: 0.01, 1: 3.0, 2: 0.01}, {0: 0.0, 1: 0.0, 2: 0.0}).sign == 0
    d = paired({0: 2.0}, {0: 1.0})
    assert (d.sign, d.n) == (1, 1)


def test_claim1_reproduced_when_ls_msp_aurc_clearly_higher() -> None:
    runs = [_run("ce", s, msp={"aurc": 0.05 + _noise(s), "e_aurc": 0.02}) for s in range(3)]
    runs += [_run(f"ls:{a}", s, msp={"aurc": 0.06 + a / 10 + _noise(s), "e_aurc": 0.03})
             for a in (0.1, 0.2) for s in range(3)]
    assert claim1(runs).verdict == "reproduced"


def test_claim1_mixed_when_only_e_aurc_degrades() -> None:
    runs = [_run("ce", s, msp={"aurc": 0.05, "e_aurc": 0.02 + _noise(s)}) for s in range(3)]
    runs += [_run("ls:0.1", s, msp={"aurc": 0.04 + _noise(s), "e_aurc": 0.025}) for s in range(3)]
    v = claim1(runs)
    assert v.verdict == "mixed"
    assert "0/1 LS settings" in v.evidence[-2] and "E-AURC for 1/1" in v.evidence[-2]
    assert v.evidence[-1].startswith("accuracy matched within 0.00 pt")


def test_claim1_not_reproduced_and_not_testable() -> None:
    runs = [_run("ce", s, msp={"aurc": 0.06 + _noise(s)}) for s in range(3)]
    runs += [_run("ls:0.1", s, msp={"aurc": 0.05}) for s in range(3)]
    assert claim1(runs).verdict == "not reproduced"
    assert claim1([r for r in runs if r["loss"] != "ce"]).verdict == "not testable"


def test_claim2_pnorm_recovery() -> None:
    ce = [_run("ce", s, msp={"aurc": 0.05}) for s in range(3)]
    good = [_run("ls:0.2", s, msp={"aurc": 0.07}, auto_aurc=0.05 + _noise(s)) for s in range(3)]
    none = [_run("ls:0.2", s, msp={"aurc": 0.07}) for s in range(3)]
    assert claim2(ce + good).verdict == "reproduced"
    assert "100% of the LS−CE MSP AURC gap recovered" in claim2(ce + good).evidence[1]
    assert claim2(ce + none).verdict == "not reproduced"


def test_claim3_maxsup_vs_ls() -> None:
    ce = [_run("ce", s, msp={"e_aurc": 0.02}) for s in range(3)]
    ls = [_run("ls:0.1", s, acc=0.90, msp={"e_aurc": 0.03}) for s in range(3)]
    ok = [_run("maxsup:0.1:0.2", s, acc=0.905 + _noise(s), msp={"e_aurc": 0.02 + _noise(s)})
          for s in range(3)]
    worse_acc = [_run("maxsup:0.1:0.2", s, acc=0.85 + _noise(s), msp={"e_aurc": 0.02})
                 for s in range(3)]
    assert claim3(ce + ls + ok).verdict == "reproduced"
    assert claim3(ce + ls + worse_acc).verdict == "not reproduced"


@pytest.mark.parametrize(("ls_nc1", "expected"), [((0.5, 0.4), "reproduced"),
                                                   ((0.5, 1.5), "mixed"),
                                                   ((1.5, 2.0), "not reproduced")])
def test_claim4_nc1(ls_nc1: tuple[float, float], expected: str) -> None:
    runs = [_run("ce", s, nc1=1.0 + _noise(s)) for s in range(3)]
    runs += [_run(f"ls:{a}", s, nc1=v) for a, v in zip((0.1, 0.2), ls_nc1, strict=True)
             for s in range(3)]
    assert claim4(runs).verdict == expected


def test_all_claims_returns_four() -> None:
    runs = [_run("ce", 0), _run("ls:0.1", 0), _run("maxsup:0.1:0.2", 0)]
    verdicts = [c.verdict for c in all_claims(runs)]
    assert len(verdicts) == 4
    assert set(verdicts) <= {"reproduced", "not reproduced", "mixed", "not testable"}


def test_runs_without_errors_do_not_break_the_rules() -> None:
    # A small test split can be classified perfectly: MSP AURC = 0, AUROC undefined.
    perfect = {"aurc": 0.0, "e_aurc": 0.0, "auroc": float("nan"), "naurc": float("nan")}
    runs = [_run("ce", s, msp=perfect, auto_aurc=0.0) for s in range(3)]
    runs += [_run("ls:0.1", s, msp=perfect, auto_aurc=0.0) for s in range(3)]
    runs += [_run("maxsup:0.1:0.2", s, msp=perfect, auto_aurc=0.0) for s in range(3)]
    verdicts = [c.verdict for c in all_claims(runs)]
    assert verdicts[:2] == ["not reproduced", "not reproduced"]


def test_too_few_errors_makes_sc_claims_not_testable() -> None:
    runs = [_run("ce", s, msp={"aurc": 0.05}) for s in range(3)]
    runs += [_run("ls:0.1", s, msp={"aurc": 0.07 + _noise(s)}) for s in range(3)]
    assert all_claims(runs)[0].verdict == "reproduced"
    for r in runs:
        r["n_test_errors"] = 3
    claims = all_claims(runs)
    assert [c.verdict for c in claims[:3]] == ["not testable"] * 3
    assert "only 3 test errors" in claims[0].evidence[0]
    assert claims[3].verdict != "not testable"
