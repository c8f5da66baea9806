"""The whole calibration on arrays: split → choose score and temperature → plan → certify.

With a tuning split (the default), the tuning part chooses the score and temperature *and* plans
the LTT test (grid, start, direction; serve.calibration.plan); the certification part only runs
the planned test. When the user fixes both the score and the temperature there is nothing to
tune: every sample certifies, with the floored fixed sequence (or SGR).

Used by `abstain calibrate`, the benchmark and the statistical test, so all three run the same
numerics. Logits may be float32 (kept as given) and are processed in float64 blocks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from serve.calibration.artifact import Calibration, new_calibration
from serve.calibration.certify import Certificate, certify
from serve.calibration.choose import (
    ScoreChoice,
    choose_score,
    evaluate_candidate,
    predictions,
    score_in_chunks,
)
from serve.calibration.plan import LttPlan, plan_ltt
from serve.calibration.split import stratified_split
from serve.calibration.union import certify_union, floor_share
from serve.errors import AbstainError
from serve.scores import create_score

log = logging.getLogger(__name__)

QUANTILES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


class NotCertifiableError(AbstainError):
    """No threshold could be certified (and deferring everything was not allowed)."""


@dataclass(frozen=True)
class CalibrationSettings:
    """What the user asked for."""

    target_risk: float = 0.02
    delta: float = 0.05
    method: Literal["ltt", "sgr"] = "ltt"
    score: str = "auto"
    target_coverage: float | None = None
    tune_fraction: float = 0.3
    seed: int = 0
    temperature: float | None = None

    @property
    def uses_tuning(self) -> bool:
        """False when score and temperature are both fixed: certify on all samples."""
        return not (self.score != "auto" and self.temperature is not None)

    def validate(self) -> CalibrationSettings:
        """Check every parameter before any work is done; raises with a fix-it message."""
        from serve.calibration.certify import CertifyError, check_risk_and_delta

        check_risk_and_delta(self.target_risk, self.delta)
        if self.method not in ("ltt", "sgr"):
            raise CertifyError(f"unknown --method {self.method!r}; valid: ltt, sgr")
        if self.target_coverage is not None and not 0.0 < self.target_coverage <= 1.0:
            raise CertifyError(f"--target-coverage must be in (0, 1]; got {self.target_coverage!r}")
        if not 0.0 < self.tune_fraction < 1.0:
            raise AbstainError(f"--tune-fraction must be strictly between 0 and 1; "
                               f"got {self.tune_fraction!r}")
        if self.temperature is not None and not (
                isinstance(self.temperature, (int, float)) and 0.0 < self.temperature < float("inf")):
            raise AbstainError(f"--temperature must be a positive number; got {self.temperature!r}")
        if self.score != "auto":
            create_score(self.score)
        return self


@dataclass
class CalibrationRun:
    """Everything a calibration computed: the artifact's inputs and what the plots show."""

    settings: CalibrationSettings
    choice: ScoreChoice
    certificate: Certificate
    n_tune: int
    cert_scores: np.ndarray = field(repr=False)       # (n_cert,) chosen score on the cert split
    cert_errors: np.ndarray = field(repr=False)       # (n_cert,) bool
    # The reliability of the reported probabilities, on the certification split only (disjoint
    # from the tuning split that fitted their temperature, whichever sequence was deployed).
    cert_msp: np.ndarray = field(repr=False)          # (m,) MSP at the probability temperature
    cert_msp_raw: np.ndarray = field(repr=False)      # (m,) MSP at T = 1
    msp_errors: np.ndarray = field(repr=False)        # (m,) bool, aligned with cert_msp
    plan: LttPlan | None = None

    @property
    def score_quantiles(self) -> list[float]:
        return [float(v) for v in np.quantile(self.cert_scores, QUANTILES)]


def _labels(labels: np.ndarray, n: int, k: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise AbstainError(f"labels must be {n} integers (one per logit row); got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= k):
        raise AbstainError(f"labels must lie in 0..{k - 1} (the model has {k} classes); "
                           f"got range {int(y.min())}..{int(y.max())}")
    return y.astype(np.int64, copy=False)


def calibrate_arrays(logits: np.ndarray, labels: np.ndarray,
                     settings: CalibrationSettings = CalibrationSettings()) -> CalibrationRun:
    """Run the whole calibration on ``logits (n, K)`` and ``labels (n,)``."""
    settings.validate()
    z = np.asarray(logits)
    if z.ndim != 2 or z.shape[1] < 2:
        raise AbstainError(f"logits must have shape (n, K ≥ 2); got {z.shape}")
    if not np.issubdtype(z.dtype, np.floating):
        z = z.astype(np.float64)
    y = _labels(labels, len(z), z.shape[1])
    plan = None
    share = 1.0
    union = settings.uses_tuning and settings.method == "ltt" and settings.target_coverage is None
    if settings.uses_tuning:
        tune, cert = stratified_split(y, settings.tune_fraction, settings.seed)
        z_tune = z[tune]                              # (n_tune, K) copy in the input dtype
        choice = choose_score(z_tune, y[tune], settings.score, temperature=settings.temperature)
        share = floor_share(len(y), settings.target_risk, settings.delta)
        if union and share < 1.0:
            tune_errors = predictions(z_tune) != y[tune]
            plan = plan_ltt(choice.tune_scores, tune_errors, len(cert), settings.target_risk,
                            (1.0 - share) * settings.delta)
        del z_tune
        z_cert, y_cert = z[cert], y[cert]             # (n_cert, K), (n_cert,)
    else:
        tune = np.empty(0, np.int64)
        z_cert, y_cert = z, y
    cert_errors = predictions(z_cert) != y_cert
    if not settings.uses_tuning:
        spec = create_score(settings.score).spec
        temperature = float(settings.temperature)
        all_scores = score_in_chunks(create_score(spec, temperature), z_cert)
        choice = ScoreChoice(spec=spec, temperature=temperature,
                             candidates=[evaluate_candidate(spec, all_scores, cert_errors)],
                             reason=f"fixed by --score {settings.score} and --temperature "
                                    f"{settings.temperature:g}: no tuning split, all {len(y)} "
                                    "samples certify",
                             error_rate=float(cert_errors.mean()))
    cert_scores = score_in_chunks(choice.score, z_cert)
    # At choice.temperature: the probability temperature whichever sequence is deployed.
    msp = score_in_chunks(create_score("msp", choice.temperature), z_cert)
    msp_raw = msp if choice.temperature == 1.0 else score_in_chunks(create_score("msp"), z_cert)
    del z_cert
    certificate = None
    if union:
        floored_run, certificate = _certify_union(z, y, settings, choice, plan, share, tune, cert,
                                                  cert_scores, cert_errors, (msp, msp_raw))
        if floored_run is not None:
            return floored_run
    if certificate is None:
        certificate = certify(cert_scores, cert_errors, settings.target_risk, settings.delta,
                              settings.method, settings.target_coverage)
    return CalibrationRun(settings=settings, choice=choice, certificate=certificate,
                          n_tune=len(tune), cert_scores=cert_scores, cert_errors=cert_errors,
                          cert_msp=msp, cert_msp_raw=msp_raw, msp_errors=cert_errors, plan=plan)


def fixed_score(settings: CalibrationSettings) -> tuple[str, float]:
    """The score the floored sequence on all samples uses: fixed before any label is seen.

    The user's ``--score`` (``msp`` when auto) at the user's ``--temperature`` (1 when not given;
    p-norm scores do not depend on it).
    """
    spec = create_score("msp" if settings.score == "auto" else settings.score).spec
    return spec, 1.0 if settings.temperature is None else float(settings.temperature)


def _certify_union(z: np.ndarray, y: np.ndarray, settings: CalibrationSettings,
                   choice: ScoreChoice, plan: LttPlan | None, share: float, tune: np.ndarray,
                   cert: np.ndarray,
                   cert_scores: np.ndarray, cert_errors: np.ndarray,
                   cert_msp: tuple[np.ndarray, np.ndarray]
                   ) -> tuple[CalibrationRun | None, Certificate]:
    """The default certification (serve.calibration.union.certify_union): the planned sequence
    on the certification split ∪ the floored one on all samples with the fixed score.

    Returns ``(None, certificate)`` when the planned sequence's threshold is deployed or nothing
    is certified (the caller finishes the run on the certification split), else the floored
    winner's run on all samples. ``cert_msp`` (MSP at the fitted and at unit temperature on the
    certification split) is kept for the reliability plot: the probabilities keep the fitted T.
    """
    all_errors = predictions(z) != y
    planned_all = np.empty(len(y), np.float64)
    planned_all[tune], planned_all[cert] = choice.tune_scores, cert_scores
    spec, temperature = fixed_score(settings)
    same = spec == choice.spec and (temperature == choice.temperature or spec != "msp")
    fixed_all = planned_all if same else score_in_chunks(create_score(spec, temperature), z)
    outcome = certify_union(cert_scores, cert_errors, plan, fixed_all, all_errors,
                            settings.target_risk, settings.delta, share, planned_all)
    if outcome.chosen != "floored":
        return None, outcome.certificate
    deployed = ScoreChoice(
        spec=spec, temperature=temperature, candidates=choice.candidates,
        reason=f"{choice.reason}. Deployed: {spec} at T = {temperature:g}, fixed before any label "
               f"was seen, because the floored sequence on all {len(y)} samples "
               + ("certified and the planned sequence was " + outcome.planned.why
                  if plan is None else "certified more coverage than the planned sequence with "
                  "the tuned score"),
        error_rate=choice.error_rate, tune_scores=choice.tune_scores,
        fitted_temperature=choice.temperature)
    return CalibrationRun(settings=settings, choice=deployed, certificate=outcome.certificate,
                          n_tune=len(tune), cert_scores=fixed_all, cert_errors=all_errors,
                          cert_msp=cert_msp[0], cert_msp_raw=cert_msp[1], msp_errors=cert_errors,
                          plan=plan), outcome.certificate


def to_calibration(run: CalibrationRun, model_sha256: str, data: dict[str, Any],
                   allow_defer_all: bool = False) -> Calibration:
    """The artifact for a run; raises NotCertifiableError unless certified or ``allow_defer_all``."""
    c = run.certificate
    if not c.certified and not allow_defer_all:
        raise NotCertifiableError(f"cannot certify a threshold: {c.detail}. (Or pass "
                                  "--allow-defer-all to write a calibration that defers everything)")
    s = run.settings
    return new_calibration(
        model_sha256=model_sha256, score=run.choice.spec, temperature=run.choice.temperature,
        probability_temperature=run.choice.probability_temperature,
        threshold=c.threshold, target_risk=s.target_risk, delta=s.delta,
        method=c.method if c.certified else "none", n_tune=run.n_tune, n_cert=c.n,
        coverage=c.coverage if c.certified else 0.0, risk=c.risk if c.certified else 0.0,
        risk_upper_bound=c.risk_upper_bound if c.certified else 0.0,
        data_fingerprint=str(data.get("fingerprint", "")),
        score_params={"p": create_score(run.choice.spec).p, "reason": run.choice.reason,
                      "min_accepted": c.min_accepted, "attempted_method": c.method,
                      "target_coverage": s.target_coverage, "n_accepted": c.n_accepted,
                      "n_errors": c.n_errors, "detail": c.detail, "needed": c.needed,
                      "procedure": c.procedure, "start": c.start,
                      "fitted_temperature": run.choice.fitted_temperature,
                      "certified_statement": f"selective risk ≤ {s.target_risk:g} with "
                                             f"probability ≥ {1 - s.delta:g}",
                      "risk_upper_bound_kind": "post-selection Clopper–Pearson bound at the "
                                               "deployed threshold (indicative, not the guarantee)",
                      "score_evidence": {c2.spec: {"delta_aurc": c2.delta_aurc,
                                                   "z": c2.z if math.isfinite(c2.z) else None}
                                         for c2 in run.choice.candidates[1:]},
                      "n_certification": c.n},
        candidates=run.choice.aurcs() if run.n_tune else {}, score_quantiles=run.score_quantiles,
        data={**data, "tune_fraction": s.tune_fraction if s.uses_tuning else 0.0, "seed": s.seed,
              "stratify": "label", "temperature_fixed": s.temperature is not None})
