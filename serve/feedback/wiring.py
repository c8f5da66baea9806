"""One object the server holds for the feedback loop: store, recorder and review router.

Server integration (serve/server/app.py, the whole of it)::

    loop = create_feedback(settings.feedback, api_key=..., admin_key=..., reviewer_key=...,
                           webhook_secret=..., registry=monitor.registry,
                           multiprocess=monitor.multiprocess)
    Record(monitor, [loop.sink] if loop else None)   # the record stage, once per batch
    if loop: loop.serve(lambda: {(name, version, calibration sha256): decision rule, ...})
    if loop: control.include_router(loop.router)     # the control plane
    # lifespan: loop.start() at startup, await asyncio.to_thread(loop.close) at shutdown
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter

from serve.feedback.access import ReviewAccess
from serve.feedback.api import create_router
from serve.feedback.gauges import LoopMetrics
from serve.feedback.guard import RiskGuard
from serve.feedback.recorder import Recorder
from serve.feedback.settings import FeedbackSettings
from serve.feedback.store import Store

log = logging.getLogger(__name__)


@dataclass
class Feedback:
    """What the server holds of the feedback loop: the store, its recorder, the review router."""

    store: Store
    recorder: Recorder
    router: APIRouter
    guard: RiskGuard | None = None
    _sha: dict[int, tuple[Any, str]] = field(default_factory=dict)

    def sink(self, mv: Any, tags: list[tuple[str, str | None]], sizes: list[int],
             out: dict[str, np.ndarray]) -> None:
        """The record stage's sink: one call per batch, no per-sample work, never raises.

        The audit flags are drawn here from their own generator, before anything in ``out`` is
        read, so they are independent of score and decision. ``out["input"]``, when the batcher
        passes it, is the batch's decoded input (kept with ``--store-inputs``). ``tags`` are the
        data plane's (server request id, client's id) per request. A cascade (``mv.kind ==
        "cascade"``) is recorded once per request under its own name and calibration, each
        sample with ``out["stage"]``, the stage that answered it.
        """
        rec = self.recorder
        audit = rec.audit(int(sum(sizes)))
        cal = mv.calibration
        hit = self._sha.get(id(cal))
        if hit is None or hit[0] is not cal:            # the hash is a JSON dump: once per version
            hit = self._sha[id(cal)] = (cal, cal.sha256)
        if tags and isinstance(tags[0], tuple):
            rids, cids = [t[0] for t in tags], [t[1] for t in tags]
        else:
            rids, cids = tags, None
        stages = out.get("stage") if getattr(mv, "kind", "model") == "cascade" else None
        if stages is not None:        # each sample's probabilities at its answering stage's T
            temperature: Any = np.array([r.temperature for r in cal.stages])[stages - 1]
            lineage = None
        else:
            temperature = cal.probs_temperature
            lineage = cal.data.get("lineage") if isinstance(cal.data, dict) else None
        rec.submit(mv.name, str(mv.version), hit[1], rids, None, out["label"], out["score"],
                   out["reject"], audit, None, out.get("input"), class_names=mv.class_names,
                   target_risk=cal.target_risk, sizes=sizes, logits=out.get("logits"),
                   temperature=temperature, client_ids=cids, lineage=lineage, stages=stages)

    def serve(self, rules: Callable[[], Mapping[tuple[str, str, str], Any]]) -> None:
        """Tell the loop what is served: (model, version, calibration sha256) → decision rule.

        Only these epochs keep live-risk gauges, and the guard acts on their alarms.
        """
        if self.guard is not None:
            self.guard.rules = rules
            self.recorder.served = self.guard.served
            self.recorder.on_risk = self.guard.check

    def start(self) -> None:
        self.recorder.start()

    def close(self, timeout: float = 10.0) -> None:
        self.recorder.close(timeout)


def create_feedback(feedback: FeedbackSettings, *, api_key: str | None = None,
                admin_key: str | None = None, reviewer_key: str | None = None,
                webhook_secret: str | None = None, registry: Any = None,
                multiprocess: bool = False,
                current_epochs: Callable[[], dict[tuple[str, str], str]] | None = None,
                **recorder_kw: Any) -> Feedback | None:
    """The loop of ``feedback``; ``None`` when it names no store (no state dir, no database URL).

    The keys are the server's: the reviewer and admin keys may read the review queue and send
    labels, the API key is recognised only to be refused (``serve/feedback/access.py``); without
    a reviewer or admin key the review API answers 404 unless ``feedback.open_review_api``. The
    Label Studio webhook's router is added only when its secret is set. ``current_epochs`` (the
    server's repository) names each served version's calibration in force, so
    ``/v1/monitor/risk`` can mark the current epoch.

    Raises:
        StoreError: the store cannot be opened (a clear one-line message).
    """
    if feedback.location is None:
        return None
    store = Store(feedback.location)
    metrics = LoopMetrics(registry, multiprocess)
    recorder = Recorder(store, audit_rate=feedback.audit_rate, store_inputs=feedback.store_inputs,
                        review_ttl_s=feedback.review_ttl_s, live_delta=feedback.live_delta,
                        retention_s=None if feedback.retention_days is None
                        else feedback.retention_days * 86400.0,
                        retention_max_rows=feedback.retention_max_rows,
                        metrics=metrics, **recorder_kw)
    guard = RiskGuard(store, metrics, feedback.on_risk_alarm, feedback.change_arl)
    if feedback.open_review_api:
        log.warning("THE REVIEW API IS OPEN TO ANYONE who can reach this server "
                    "(--open-review-api): audited samples, stored inputs and labels need no key, "
                    "and whoever labels audits moves the next recalibration")
    access = ReviewAccess(reviewer=reviewer_key, admin=admin_key, api=api_key,
                          open=feedback.open_review_api)
    router = APIRouter()
    router.include_router(create_router(store, access, live_delta=feedback.live_delta,
                                        max_body_bytes=feedback.max_body_bytes,
                                        current_epochs=current_epochs))
    if webhook_secret:
        from serve.feedback.labelstudio import webhook_router

        router.include_router(webhook_router(store, webhook_secret, feedback.max_body_bytes))
    return Feedback(store, recorder, router, guard)
