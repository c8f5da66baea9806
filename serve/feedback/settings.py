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
        live_delta: level of the live-risk confidence sequence.
        review_ttl_s: review items expire after this.
        on_risk_alarm: ``keep`` serving a calibration whose live risk alarms, or ``defer`` every
            prediction until a new calibration loads (``serve/feedback/guard.py``).
        change_arl: the risk-change detector's average run length to a false alarm, in labelled
            audits (``serve/feedback/change.py``).
    """

    location: str | Path | None = None
    audit_rate: float = 0.01
    store_inputs: bool = False
    live_delta: float = 0.05
    review_ttl_s: float = 7 * 86400.0
    on_risk_alarm: str = "keep"
    change_arl: float = 100_000.0
