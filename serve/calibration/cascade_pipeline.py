"""A whole cascade calibration on arrays: split → each stage's score → plan → certify → artifact.

The tuning split chooses every stage's score and temperature (serve.calibration.choose, as for a
single model) and plans the test (serve.calibration.cascade); the certification split only runs
it. Used by `abstain calibrate CASCADE_DIR` and bench/cascade_demo.py, so both run the same
numerics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve.calibration.cascade import CascadeCertificate, certify_cascade
from serve.calibration.cascade_artifact import (
    CascadeCalibration,
    StageRef,
    StageRule,
    new_cascade_calibration,
    threshold_json,
)
from serve.calibration.cascade_plan import Budgets, CascadePlan, plan_cascade
from serve.calibration.choose import ScoreChoice, choose_score, predictions, score_in_chunks
from serve.calibration.pipeline import NotCertifiableError
from serve.calibration.split import stratified_split
from serve.errors import AbstainError
from serve.scores import create_score


@dataclass
class CascadeRun:
    """What a cascade calibration computed."""

    stages: list[StageRef]
    choices: list[ScoreChoice]
    plan: CascadePlan
    certificate: CascadeCertificate
    budgets: Budgets
    n_tune: int
    tune_fraction: float
    seed: int
    cert_scores: np.ndarray = field(repr=False)     # (n_cert, K)
    cert_errors: np.ndarray = field(repr=False)     # (n_cert, K) bool


def calibrate_cascade_arrays(stages: list[StageRef], logits: Sequence[np.ndarray],
                             labels: np.ndarray, target_risk: float, delta: float,
                             budgets: Budgets | None = None, score: str = "auto",
                             tune_fraction: float = 0.3, seed: int = 0,
                             temperature: float | None = None) -> CascadeRun:
    """Certify the cascade of ``stages`` from each stage's logits ``(n, K)`` on the same samples.

    Raises:
        BudgetError: certified vectors exist but none meets a budget.
    """
    y = np.asarray(labels)
    budgets = budgets or Budgets()
    if len(logits) != len(stages):
        raise AbstainError(f"{len(stages)} stages but logits for {len(logits)}")
    k_classes = {z.shape[1] for z in logits}
    if len(k_classes) != 1 or any(z.shape[0] != len(y) for z in logits):
        raise AbstainError(f"every stage must give (n, K) logits for the same {len(y)} samples "
                           f"and classes; got {[z.shape for z in logits]}")
    tune, cert = stratified_split(y, tune_fraction, seed)
    choices, s_t, e_t, s_c, e_c, proxy = [], [], [], [], [], []
    for z in logits:
        c = choose_score(z[tune], y[tune], score, temperature=temperature)
        choices.append(c)
        s_t.append(c.tune_scores)
        proxy.append(1.0 - score_in_chunks(create_score("msp", c.temperature), z[tune]))
        e_t.append(predictions(z[tune]) != y[tune])
        s_c.append(score_in_chunks(c.score, z[cert]))
        e_c.append(predictions(z[cert]) != y[cert])
    tune_s, tune_e = np.stack(s_t, axis=1), np.stack(e_t, axis=1)
    cert_s, cert_e = np.stack(s_c, axis=1), np.stack(e_c, axis=1)
    plan = plan_cascade(tune_s, tune_e, len(cert), target_risk, delta, budgets,
                        tune_proxy=np.stack(proxy, axis=1))
    certificate = certify_cascade(cert_s, cert_e, plan, target_risk, delta, budgets)
    return CascadeRun(stages, choices, plan, certificate, budgets, len(tune), tune_fraction, seed,
                      cert_s, cert_e)


def to_cascade_calibration(run: CascadeRun, data: dict[str, Any]) -> CascadeCalibration:
    """The artifact; raises :class:`NotCertifiableError` (with why) when nothing was certified."""
    c = run.certificate
    if not c.certified:
        raise NotCertifiableError(f"cannot certify the cascade: {c.detail}")
    assert c.thresholds is not None
    rules = [StageRule(s.model, s.version, s.model_sha256, ch.spec, float(ch.temperature),
                       threshold_json(t))
             for s, ch, t in zip(run.stages, run.choices, c.thresholds, strict=True)]
    b = run.budgets
    return new_cascade_calibration(
        stages=rules, target_risk=c.target_risk, delta=c.delta, n_tune=run.n_tune, n_cert=c.n,
        risk=c.risk, risk_upper_bound=c.risk_upper_bound, human_share=c.human_share,
        human_share_upper=c.human_upper, stage_rows=c.stage_rows(),
        budgets={"max_defer": b.max_defer,
                 "max_stage_share": {str(k): v for k, v in sorted(b.max_stage_share.items())}},
        procedure=c.procedure, detail=c.detail, start=c.start,
        data={**data, "tune_fraction": run.tune_fraction, "seed": run.seed, "stratify": "label",
              "score_reasons": [ch.reason for ch in run.choices]})
