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
        self.change = gauge("abstain_risk_change_log_statistic", "log of the risk-change "
                            "e-detector over labelled audits (alarm at log of its ARL).")
        self.change_detected = gauge("abstain_risk_change_detected", "1 once the risk-change "
                                     "detector alarmed in this calibration.")
        self.alarm_active = Gauge("abstain_risk_alarm_active", "1 while the served calibration's "
                                  "live risk alarms (bound above r* or a detected change); "
                                  "with --on-risk-alarm defer every prediction is deferred.",
                                  ("model", "version"), registry=reg,
                                  multiprocess_mode="livemostrecent")
        self.multiprocess = multiprocess
        self._shown: set[tuple[str, str, str]] = set()     # epochs whose series this process set

    def set_risk(self, r: LiveRisk) -> None:
        key = (r.model, r.version, r.calibration_sha256[:12])
        self._shown.add(key)
        self.upper.labels(*key).set(r.upper)
        self.lower.labels(*key).set(r.lower)
        self.labels.labels(*key).set(r.labels)
        self.pending.labels(*key).set(r.pending_audits)
        self.status.labels(*key).set(STATUSES.index(r.status))
        if r.target_risk is not None:
            self.target.labels(*key).set(r.target_risk)

    def retire(self, model: str, version: str, calibration_sha256: str) -> None:
        """Drop the live-risk series of a calibration no longer served, so no alert fires for it
        (multiprocess files cannot drop a series: there they read NaN)."""
        key = (model, version, calibration_sha256[:12])
        if key not in self._shown:
            return
        self._shown.discard(key)
        for g in (self.upper, self.lower, self.labels, self.pending, self.target, self.status,
                  self.change, self.change_detected):
            if self.multiprocess:
                g.labels(*key).set(float("nan"))
            else:
                g.remove(*key)
