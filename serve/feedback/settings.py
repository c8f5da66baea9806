"""The feedback loop's settings: one frozen section, built by the server from its flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class FeedbackSettings:
    """Where decisions are recorded and how audits are drawn and judged.

    Attributes:
        location: a ``postgresql://`` URL or a state folder (SQLite); ``None`` = no loop.
        audit_rate: probability that an accepted sample is audited.
        store_inputs: keep decoded inputs for reviewers.
        open_review_api: serve the review API to anyone, key or not (without it, and without a
            reviewer or admin key, the review API is off); start-up warns.
        max_body_bytes: the largest body the review API and the webhook read (413 past it).
        live_delta: level of the live-risk confidence sequence.
        review_ttl_s: review items expire after this.
        on_risk_alarm: ``keep`` serving a calibration whose live risk alarms, or ``defer`` every
            prediction until a new calibration loads (``serve/feedback/guard.py``).
        change_arl: the risk-change detector's average run length to a false alarm, in labelled
            audits (``serve/feedback/change.py``).
        retention_days: delete rows older than this that nothing needs (``serve/feedback/retention.py``);
            ``None`` keeps every row.
        retention_max_rows: keep at most this many rows nobody reviews (the newest).
    """

    location: str | Path | None = None
    audit_rate: float = 0.01
    store_inputs: bool = False
    open_review_api: bool = False
    max_body_bytes: int = 1 << 20
    live_delta: float = 0.05
    review_ttl_s: float = 7 * 86400.0
    on_risk_alarm: str = "keep"
    change_arl: float = 100_000.0
    retention_days: float | None = None
    retention_max_rows: int | None = None
