"""Prometheus series of the feedback loop: record drops, expiries and the live risk."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from serve.feedback.risk import STATUSES, LiveRisk

EPOCH = ("model", "version", "calibration")
DROP_REASONS = ("queue_full", "rejected", "conflict", "shutdown")


class LoopMetrics:
    """Counters and live-risk gauges; pass the server's registry (``None`` in multiprocess mode)."""

    def __init__(self, registry: CollectorRegistry | None = None, multiprocess: bool = False) -> None:
        reg = None if multiprocess else (registry or CollectorRegistry())
        self.registry = reg

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, EPOCH, registry=reg, multiprocess_mode="livemostrecent")

        self.dropped = Counter("abstain_records_dropped", "Decision records not written, by reason: "
                               "queue_full (store down or slow), rejected (the store refused the "
                               "row), conflict (key already stored: a bug), shutdown (store down "
                               "at shutdown).", ["reason"], registry=reg)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self.deleted = Counter("abstain_records_deleted", "Decision records deleted by retention "
                               "(--retention-days).", registry=reg)
        self.written = Counter("abstain_records_written", "Decision records written to the store.",
                               registry=reg)
        self.expired = Counter("abstain_review_expired", "Review items that expired unlabelled.",
                               registry=reg)
        self.upper = gauge("abstain_live_risk_upper", "Anytime-valid upper bound on the live "
                           "selective risk (audited accepted samples).")
        self.lower = gauge("abstain_live_risk_lower", "Anytime-valid lower bound on the live selective risk.")
        self.labels = gauge("abstain_live_risk_labels", "Labelled audited accepted samples.")
        self.pending = gauge("abstain_live_risk_pending", "Audited accepted samples still unlabelled.")
        self.target = gauge("abstain_live_risk_target", "The calibration's target risk r*.")
        self.status = gauge("abstain_live_risk_status",
                            "Live risk status: 0 insufficient, 1 ok, 2 watch, 3 alarm.")

    def set_risk(self, r: LiveRisk) -> None:
        key = (r.model, r.version, r.calibration_sha256[:12])
        self.upper.labels(*key).set(r.upper)
        self.lower.labels(*key).set(r.lower)
        self.labels.labels(*key).set(r.labels)
        self.pending.labels(*key).set(r.pending_audits)
        self.status.labels(*key).set(STATUSES.index(r.status))
        if r.target_risk is not None:
            self.target.labels(*key).set(r.target_risk)
