"""``abstain calibrate MODEL --from-feedback STORE``: re-certify the threshold on audited labels.

Only AUDITED samples are used: they are a uniform draw of live traffic, so their scores and errors
are exchangeable with the traffic the new threshold will face. Labels of deferred samples that
were not audited are a biased sample (reviewers only see what the model doubted) and are ignored.
The score function and temperature stay those of the deployed calibration (the stored scores were
computed with them), and so do r* and δ: the job is to restore the guarantee that was certified.

Which audits, and how unlabelled ones count, is :mod:`serve.feedback.window`'s: by default those
of the calibration in force (its epoch) or drawn since a given time, every unlabelled one counted
as an error. :func:`propose` computes a :class:`Proposal` — the certificate in force (with its live
status) beside the proposed one — and writes nothing; :func:`write_proposal` writes it, keeping
the previous ``calibration.json`` as ``.bak`` and the probe batch (the model did not change, so its
logits still stand). The new ``calibration.json`` records its provenance in ``data``; a server
polling the repository hot-reloads it, and its new sha256 starts a new live-risk epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve.calibration.artifact import (
    FILENAME,
    Calibration,
    load_calibration,
    new_calibration,
    save_calibration,
)
from serve.calibration.certify import Certificate, certify
from serve.errors import AbstainError
from serve.feedback.risk import LiveRisk, live_risk
from serve.feedback.settings import FeedbackSettings
from serve.feedback.store import Store
from serve.feedback.window import (
    CHANGE_ALPHA,
    DEFAULT_MAX_PENDING,
    POOL_ALPHA,
    Audits,
    ChangeCheck,
    PoolCheck,
    change_checks,
    labels_to_certify,
    pending_refusal,
    pool_checks,
)
from serve.files import keep_backup

# The largest |score| the server can produce (serve/scores.py): a bounded score stays within
# ~745 (log_msp); the others are (differences of) float32 logits over the temperature.
BOUNDED_MAX, LOGIT_MAX = 746.0, 2 * float(np.finfo(np.float32).max)
QUANTILES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class WindowChoice:
    """What the user asked for: the window's bounds, pooling, and the unlabelled share allowed."""

    since: float | None = None
    until: float | None = None
    pool: bool = False
    max_pending: float = DEFAULT_MAX_PENDING

    def describe(self, current: str) -> str:
        what = ("every epoch of the lineage (--pool-epochs)" if self.pool and self.since is None
                else f"audits since {_iso(self.since)} (--since)" if self.since is not None
                else f"the epoch of the calibration in force ({current[:12]})")
        return what + (f", before {_iso(self.until)} (--until)" if self.until is not None else "")


@dataclass
class Outcome:
    """What the window's audits support: a certificate, or a refusal saying why and what to do."""

    window: Audits
    mask: np.ndarray                                   # (n,) bool over the audits given
    cert: Certificate | None = None
    pool: list[PoolCheck] = field(default_factory=list)
    changes: list[ChangeCheck] = field(default_factory=list)
    more_labels: int | None = None
    refusal: str | None = None


def recertify(audits: Audits, current: str, choice: WindowChoice, target_risk: float,
              delta: float, method: str = "ltt", in_force: float | None = None) -> Outcome:
    """The whole rule on arrays: window → non-response → no change within it → certify → pool.

    ``current`` is the sha256 of the calibration in force, ``in_force`` its threshold. The
    simulation tests call this, so they test what ``--from-feedback`` does.
    """
    mask = audits.window_mask(current, choice.since, choice.until, choice.pool)
    out = Outcome(audits.select(mask), mask)
    w = out.window
    if len(w) == 0:
        out.refusal = f"no audited samples in {choice.describe(current)}"
        return out
    if (why := pending_refusal(w, choice.max_pending)) is not None:
        out.refusal = why
        return out
    out.changes = change_checks(w, in_force)
    if rose := [c for c in out.changes if c.rejected]:
        at = max(c.at for c in rose if c.at is not None)
        out.refusal = (
            "the window mixes distributions: " + "; ".join(
                f"the {c.what} rose within it (p = {c.p_value:.3g} ≤ {CHANGE_ALPHA:g})"
                for c in rose)
            + f". Certify on the audits after the change: --since {at:.6f} "
            f"({_iso(at)}; the most significant recent segment starts there)")
        return out
    out.cert = cert = certify(w.scores, w.errors, target_risk, delta, method)  # type: ignore[arg-type]
    out.more_labels = labels_to_certify(w.scores, w.errors, in_force, target_risk, delta)
    if choice.pool:
        out.pool = pool_checks(w, current, cert.threshold, target_risk)
        if not out.pool:
            out.refusal = (f"refusing to pool the epochs: the epoch in force ({current[:12]}) has "
                           "no audits in the window to test the older ones' exchangeability "
                           "against. Serve and label its audits first")
        elif bad := [c for c in out.pool if c.rejected]:
            out.refusal = ("refusing to pool the epochs: " + "; ".join(
                f"{c.test} ({c.epoch[:12]}: p = {c.p_value:.3g} ≤ {POOL_ALPHA:g})" for c in bad)
                + ". Certify on the current epoch alone (drop --pool-epochs)")
        if out.refusal:
            out.cert = None
            return out
    if not cert.certified:
        out.refusal = _refusal(cert, w, out.more_labels)
    return out


def _iso(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds")


@dataclass
class Proposal:
    """The certificate in force beside the one the window's audits support; nothing written."""

    model_dir: Path
    old: Calibration
    live: LiveRisk
    choice: WindowChoice
    outcome: Outcome
    new: Calibration | None = None

    @property
    def window(self) -> Audits:
        return self.outcome.window

    @property
    def cert(self) -> Certificate | None:
        return self.outcome.cert

    @property
    def refusal(self) -> str | None:
        return self.outcome.refusal

    def coverage_at(self, threshold: float | None) -> float | None:
        """Share of the window's audits (a uniform sample of traffic) accepted at ``threshold``."""
        if len(self.window) == 0:
            return None
        return 0.0 if threshold is None else float((self.window.scores >= threshold).mean())


def _refusal(cert: Certificate, window: Audits, more: int | None) -> str:
    n, k, u = len(window), int(window.wrong.sum()), window.n_unlabelled
    head = (f"cannot certify selective risk ≤ {cert.target_risk:g} at δ = {cert.delta:g} from the "
            f"window's {n} audits ({k} labelled wrong, {u} unlabelled counted as errors)")
    if cert.needed is None:
        return (f"{head}: no threshold reaches an empirical risk below {cert.target_risk:g} on "
                "them, so more labels at this error rate will not help; the model is worse than "
                "r* on current traffic (retrain, or serve it with --allow-defer-all --write)")
    tail = (f" — at the in-force coverage, ≈ {more} more labelled audits" if more is not None
            else "")
    return (f"{head}: this risk profile needs ≈ {max(cert.needed, n + 1)} audits{tail}. Label "
            "more audits (GET /v1/review/queue?kind=audit) and run again")


def propose(model_dir: Path, location: str, choice: WindowChoice = WindowChoice(),
            method: str = "ltt", allow_defer_all: bool = False,
            live_delta: float = FeedbackSettings().live_delta) -> Proposal:
    """The proposal for ``model_dir`` from the store at ``location``; nothing is written."""
    old = load_calibration(model_dir)
    model, version = model_dir.parent.name, model_dir.name
    lineage = [*old.data.get("lineage", []), old.sha256]
    store = Store(location, create=False)
    try:
        n, k, pending, expired = store.audit_states(model, version, old.sha256)
        live = live_risk(model, version, old.sha256, old.target_risk, k, n, pending, live_delta,
                         expired=expired)
        rows = store.audits(model, version, lineage, choice.since, choice.until)
        ignored = store.count("reject = 1 AND audit = 0 AND review = 'labelled' AND model = ? "
                              "AND version = ?", (model, version))
    finally:
        store.close()
    _check_scores(rows, BOUNDED_MAX if old.score_fn().bounded
                  else LOGIT_MAX / min(old.temperature, 1.0))
    audits = Audits.from_rows(rows, lineage)
    out = recertify(audits, old.sha256, choice, old.target_risk, old.delta, method, old.threshold)
    p = Proposal(model_dir, old, live, choice, out)
    if len(out.window) == 0:
        out.refusal = (f"no audited samples of {model}/{version} in {choice.describe(old.sha256)} "
                       f"in the store {location}: serve with --audit-rate > 0, label the audit "
                       "queue (GET /v1/review/queue?kind=audit, POST /v1/feedback), or widen the "
                       "window with --since")
    if out.cert is None or (not out.cert.certified and not allow_defer_all):
        return p
    used = [r for r, m in zip(rows, out.mask.tolist(), strict=True) if m]
    p.new = _calibration(old, out.window, out.cert, used, choice, ignored, location, p)
    return p


def _check_scores(rows: list[dict[str, Any]], max_score: float) -> None:
    """No served score is infinite or beyond ``max_score``; a row with one would certify an
    absurd threshold (1e308).

    Raises:
        AbstainError: such a row, with its request id and what to do.
    """
    scores = np.array([r["score"] for r in rows], dtype=np.float64)
    bad = ~np.isfinite(scores) | (np.abs(scores) > max_score)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AbstainError(f"{int(bad.sum())} of {len(rows)} audited samples in the store have an "
                           f"impossible score (e.g. {scores[i]!r} for request "
                           f"{rows[i]['request_id']!r}); the store was written by something "
                           "other than this server, or is corrupt: remove those rows and retry")


def _calibration(old: Calibration, window: Audits, cert: Certificate, used: list[dict[str, Any]],
                 choice: WindowChoice, ignored: int, location: str, p: Proposal) -> Calibration:
    digest = hashlib.sha256("\n".join(
        f"{r['request_id']}\t{r['idx']}\t{'-' if r['human_label'] is None else r['human_label']}"
        for r in used).encode()).hexdigest()
    where = location.split("@")[-1] if "://" in location else location
    data = {"source": "feedback", "spec": f"feedback:{where}", "split": "audited", "n": len(window),
            "fingerprint": digest, "epochs": sorted({r["calibration_sha256"] for r in used}),
            "lineage": [*old.data.get("lineage", []), old.sha256],
            "window": {"rule": "pool" if choice.pool else "since" if choice.since is not None
                       else "current epoch", "since": choice.since, "until": choice.until,
                       "max_pending": choice.max_pending,
                       "unlabelled_counted_as_errors": window.n_unlabelled,
                       "pool_checks": [dataclasses.asdict(c) for c in p.outcome.pool],
                       "change_checks": [dataclasses.asdict(c) for c in p.outcome.changes]},
            "deferred_labels_ignored": ignored,
            "first_sample_time": used[0]["ts"], "last_sample_time": used[-1]["ts"]}
    ok = cert.certified
    detail = cert.detail if ok else (p.refusal or "")
    cal = new_calibration(
        model_sha256=old.model_sha256, score=old.score, temperature=old.temperature,
        probability_temperature=old.probability_temperature,
        threshold=cert.threshold, target_risk=old.target_risk, delta=old.delta,
        method=cert.method if ok else "none", n_tune=0, n_cert=cert.n,
        coverage=cert.coverage if ok else 0.0, risk=cert.risk if ok else 0.0,
        risk_upper_bound=cert.risk_upper_bound if ok else 0.0, data_fingerprint=digest,
        score_params={**old.score_params, "n_accepted": cert.n_accepted, "n_errors": cert.n_errors,
                      "min_accepted": cert.min_accepted, "detail": detail,
                      "attempted_method": cert.method, "needed": cert.needed,
                      "procedure": cert.procedure, "start": cert.start},
        candidates=old.candidates,
        score_quantiles=[float(v) for v in np.quantile(window.scores, QUANTILES)], data=data)
    # The model and its logits did not change: the probe batch of the calibration in force stands.
    return dataclasses.replace(cal, provider=old.provider, precision=old.precision,
                               probe_sha256=old.probe_sha256)


def write_proposal(p: Proposal) -> Path | None:
    """Write the proposed calibration; keep the previous one as ``calibration.json.bak``."""
    if p.new is None:
        raise AbstainError(p.refusal or "nothing to write")
    backup = keep_backup(p.model_dir / FILENAME)
    save_calibration(p.new, p.model_dir)
    return backup
