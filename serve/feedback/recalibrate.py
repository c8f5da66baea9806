"""``abstain calibrate MODEL --from-feedback STORE``: re-certify the threshold on audited labels.

Only AUDITED samples are used: they are a uniform draw of live traffic, so their scores and errors
are exchangeable with the traffic the new threshold will face. Labels of deferred samples that
were not audited are a biased sample (reviewers only see what the model doubted) and are ignored.
The score function and temperature stay those of the deployed calibration (the stored scores were
computed with them), and so do r* and δ: the job is to restore the guarantee that was certified.
Samples of every calibration in this feedback lineage are used (they share the score function).

The new ``calibration.json`` records its provenance in ``data`` (source, store, epochs, counts,
a fingerprint of the labelled samples); a server polling the repository hot-reloads it, and its
new sha256 starts a new live-risk epoch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from serve.calibration.artifact import (
    Calibration,
    load_calibration,
    new_calibration,
    save_calibration,
)
from serve.calibration.certify import Certificate, certify
from serve.errors import AbstainError
from serve.feedback.store import Store

QUANTILES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def audited_errors(store: Store, model: str, version: str, epochs: set[str]
                   ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], int]:
    """(scores, errors, rows, deferred-only labels ignored) of labelled audited samples."""
    rows = [r for r in store.audited_labelled(model, version) if r["calibration_sha256"] in epochs]
    labelled_deferred = store.count("reject = 1 AND audit = 0 AND review = 'labelled' AND model = ? "
                                    "AND version = ?", (model, version))
    scores = np.array([r["score"] for r in rows], dtype=np.float64)
    errors = np.array([r["human_label"] != r["label"] for r in rows], dtype=bool)
    return scores, errors, rows, labelled_deferred


def recalibrate(model_dir: Path, location: str, method: str = "ltt",
                allow_defer_all: bool = False) -> tuple[Calibration, Certificate, dict[str, Any]]:
    """Certify a new threshold for ``model_dir`` from the store at ``location``; nothing is written."""
    old = load_calibration(model_dir)
    model, version = model_dir.parent.name, model_dir.name
    lineage = [*old.data.get("lineage", []), old.sha256]
    store = Store(location)
    try:
        scores, errors, rows, ignored = audited_errors(store, model, version, set(lineage))
    finally:
        store.close()
    if len(rows) == 0:
        raise AbstainError(f"no labelled audited samples of {model}/{version} in the store "
                           f"{location}: serve with --audit-rate > 0 and label the audit queue "
                           "(GET /v1/review/queue?kind=audit, POST /v1/feedback) first")
    cert = certify(scores, errors, old.target_risk, old.delta, method)
    if not cert.certified and not allow_defer_all:
        raise AbstainError(f"cannot certify a threshold from {len(rows)} labelled audited samples "
                           f"({int(errors.sum())} wrong): {cert.detail}. Label more audited samples "
                           "(or pass --allow-defer-all)")
    digest = hashlib.sha256("\n".join(f"{r['request_id']}\t{r['idx']}\t{r['human_label']}"
                                      for r in rows).encode()).hexdigest()
    where = location.split("@")[-1] if "://" in location else location
    data = {"source": "feedback", "spec": f"feedback:{where}", "split": "audited", "n": len(rows),
            "fingerprint": digest, "epochs": sorted({r["calibration_sha256"] for r in rows}),
            "lineage": lineage, "deferred_labels_ignored": ignored,
            "first_sample_time": rows[0]["ts"], "last_sample_time": rows[-1]["ts"]}
    cal = new_calibration(
        model_sha256=old.model_sha256, score=old.score, temperature=old.temperature,
        probability_temperature=old.probability_temperature,
        threshold=cert.threshold, target_risk=old.target_risk, delta=old.delta,
        method=cert.method if cert.certified else "none", n_tune=0, n_cert=cert.n,
        coverage=cert.coverage if cert.certified else 0.0, risk=cert.risk if cert.certified else 0.0,
        risk_upper_bound=cert.risk_upper_bound if cert.certified else 0.0,
        data_fingerprint=digest,
        score_params={**old.score_params, "n_accepted": cert.n_accepted, "n_errors": cert.n_errors,
                      "min_accepted": cert.min_accepted, "detail": cert.detail,
                      "attempted_method": cert.method, "needed": cert.needed},
        candidates=old.candidates,
        score_quantiles=[float(v) for v in np.quantile(scores, QUANTILES)], data=data)
    return cal, cert, data


def from_feedback_main(args: Any) -> int:
    """The ``--from-feedback`` branch of ``abstain calibrate``."""
    p = Path(args.model)
    model_dir = p if p.is_dir() else p.parent
    if not (model_dir / "calibration.json").is_file():
        raise AbstainError(f"{model_dir} has no calibration.json to re-certify: run `abstain "
                           "calibrate` on calibration data first, serve, then recalibrate from feedback")
    old = load_calibration(model_dir)
    cal, cert, data = recalibrate(model_dir, args.from_feedback, args.method, args.allow_defer_all)
    save_calibration(cal, model_dir)
    old_th = "none" if old.threshold is None else f"{old.threshold:.6g}"
    new_th = "none (defer all)" if cal.threshold is None else f"{cal.threshold:.6g}"
    print(f"re-certified {model_dir} from {data['n']} labelled audited samples "
          f"({data['deferred_labels_ignored']} deferred-only labels ignored): threshold {old_th} → "
          f"{new_th}, coverage {cal.coverage:.4f}, risk {cal.risk:.4f} ≤ bound "
          f"{cal.risk_upper_bound:.4f} (r* = {cal.target_risk:g}, δ = {cal.delta:g}); "
          f"wrote {model_dir / 'calibration.json'} (sha256 {cal.sha256[:12]})")
    return 0
