"""One object the server holds for the feedback loop: store, recorder and review router.

Server integration (serve/server/app.py, the whole of it)::

    loop = create_feedback(settings.feedback, api_key=..., admin_key=..., reviewer_key=...,
                       webhook_secret=..., registry=monitor.registry,
                       multiprocess=monitor.multiprocess)
    Record(monitor, [loop.sink] if loop else None)   # the record stage, once per batch
    if loop: control.include_router(loop.router)     # the control plane
    # lifespan: loop.start() at startup, await asyncio.to_thread(loop.close) at shutdown
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter

from serve.feedback.api import create_router
from serve.feedback.gauges import LoopMetrics
from serve.feedback.recorder import Recorder
from serve.feedback.settings import FeedbackSettings
from serve.feedback.store import Store


@dataclass
class Feedback:
    """What the server holds of the feedback loop: the store, its recorder, the review router."""

    store: Store
    recorder: Recorder
    router: APIRouter
    _sha: dict[int, tuple[Any, str]] = field(default_factory=dict)

    def sink(self, mv: Any, tags: list[str], sizes: list[int], out: dict[str, np.ndarray]) -> None:
        """The record stage's sink: one call per batch, no per-sample work, never raises.

        The audit flags are drawn here from their own generator, before anything in ``out`` is
        read, so they are independent of score and decision. ``out["input"]``, when the batcher
        passes it, is the batch's decoded input (kept with ``--store-inputs``).
        """
        rec = self.recorder
        audit = rec.audit(int(sum(sizes)))
        cal = mv.calibration
        hit = self._sha.get(id(cal))
        if hit is None or hit[0] is not cal:            # the hash is a JSON dump: once per version
            hit = self._sha[id(cal)] = (cal, cal.sha256)
        rec.submit(mv.name, str(mv.version), hit[1], tags, None, out["label"], out["score"],
                   out["reject"], audit, None, out.get("input"), class_names=mv.class_names,
                   target_risk=cal.target_risk, sizes=sizes, logits=out.get("logits"),
                   temperature=cal.probs_temperature)

    def start(self) -> None:
        self.recorder.start()

    def close(self, timeout: float = 10.0) -> None:
        self.recorder.close(timeout)


def create_feedback(feedback: FeedbackSettings, *, api_key: str | None = None,
                admin_key: str | None = None, reviewer_key: str | None = None,
                webhook_secret: str | None = None, registry: Any = None,
                multiprocess: bool = False, **recorder_kw: Any) -> Feedback | None:
    """The loop of ``feedback``; ``None`` when it names no store (no state dir, no database URL).

    The keys are the server's: who may read the review queue and send labels
    (``serve/feedback/api.py``), and the Label Studio webhook's secret (its router is added only
    when one is set).

    Raises:
        StoreError: the store cannot be opened (a clear one-line message).
    """
    if feedback.location is None:
        return None
    store = Store(feedback.location)
    recorder = Recorder(store, audit_rate=feedback.audit_rate, store_inputs=feedback.store_inputs,
                        review_ttl_s=feedback.review_ttl_s, live_delta=feedback.live_delta,
                        metrics=LoopMetrics(registry, multiprocess), **recorder_kw)
    router = create_router(store, api_key=api_key, admin_key=admin_key, reviewer_key=reviewer_key,
                           live_delta=feedback.live_delta)
    if webhook_secret:
        from serve.feedback.labelstudio import webhook_router

        router.include_router(webhook_router(store, webhook_secret))
    return Feedback(store, recorder, router)
