"""One object the server holds for the feedback loop: store, recorder and review router.

Server integration (the whole of it)::

    loop = create_loop(settings, registry=monitor.registry, multiprocess=monitor.multiprocess)
    if loop: app.include_router(loop.router)          # control plane
    # lifespan:  loop.start() at startup, loop.close() at shutdown (flushes the queue)
    # per batch, before deciding:  audit = loop.recorder.audit(n)
    # per batch, after deciding:   loop.recorder.submit(...)     (see Recorder.submit)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter

from serve.loop.api import create_router
from serve.loop.gauges import LoopMetrics
from serve.loop.recorder import Recorder
from serve.loop.store import Store


@dataclass
class Loop:
    store: Store
    recorder: Recorder
    router: APIRouter

    def start(self) -> None:
        self.recorder.start()

    def close(self, timeout: float = 10.0) -> None:
        self.recorder.close(timeout)


def create_loop(settings: Any, registry: Any = None, multiprocess: bool = False,
                **recorder_kw: Any) -> Loop | None:
    """The loop for ``ServerSettings``; ``None`` when neither a state dir nor a database URL is set.

    Raises:
        StoreError: the store cannot be opened (a clear one-line message).
    """
    location = settings.database_url_value or settings.state_dir
    if location is None:
        return None
    store = Store(location)
    recorder = Recorder(store, audit_rate=settings.audit_rate, store_inputs=settings.store_inputs,
                        review_ttl_s=settings.review_ttl_s, live_delta=settings.live_delta,
                        metrics=LoopMetrics(registry, multiprocess), **recorder_kw)
    router = create_router(store, api_key=settings.api_key_value, admin_key=settings.admin_key_value,
                           reviewer_key=settings.reviewer_key_value, live_delta=settings.live_delta)
    secret = settings.review_webhook_secret
    if secret is not None and secret.get_secret_value():
        from serve.loop.labelstudio import webhook_router

        router.include_router(webhook_router(store, secret.get_secret_value()))
    return Loop(store, recorder, router)
