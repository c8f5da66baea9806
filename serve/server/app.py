"""The server: the data plane (inference) beside the control plane (everything else).

``create_app(settings)`` builds one ASGI app. It sends each inference request
(``POST /v{1,2}/models/.../{predict,infer}``) to :class:`serve.server.dataplane.infer.DataPlane` and
everything else — health, metadata, admin, metrics, docs, and the lifespan — to the FastAPI
control plane (``serve/server/control.py``). ``create_app_from_env`` is what uvicorn worker processes
import (settings travel as ``ABSTAIN_*`` variables).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from serve.feedback.wiring import create_feedback
from serve.monitoring.monitor import Monitor
from serve.monitoring.tally import FLUSH_S
from serve.server import rest
from serve.server.control import create_control
from serve.server.dataplane import head
from serve.server.dataplane.admit import Admission
from serve.server.dataplane.decode import Decoder
from serve.server.dataplane.infer import DataPlane, batcher_factory
from serve.server.dataplane.record import Record
from serve.server.garbage import Collector
from serve.server.model_version import ModelVersion
from serve.server.repository import ModelRepository
from serve.server.settings import ServerSettings, load_settings

log = logging.getLogger(__name__)


class App:
    """The ASGI entry point. ``state`` holds settings, monitor, repository (for tests and tools)."""

    def __init__(self, settings: ServerSettings, monitor: Monitor,
                 preloaded: list[ModelVersion] | None) -> None:
        keys, limits = settings.keys, settings.limits
        self.feedback = create_feedback(settings.feedback, api_key=keys.api, admin_key=keys.admin,
                                    reviewer_key=keys.reviewer,
                                    webhook_secret=keys.review_webhook_secret,
                                    registry=monitor.registry, multiprocess=monitor.multiprocess,
                                    current_epochs=self._current_epochs)
        self.record = Record(monitor, [self.feedback.sink] if self.feedback else None)
        self.repo = ModelRepository(settings.models, monitor=monitor, preloaded=preloaded,
                                    batcher_factory=batcher_factory(settings.batching,
                                                                    self.record.hook, monitor),
                                    cascade_record=self.record.cascade_hook)
        self.admission = Admission(api_key=keys.api, max_body_bytes=limits.max_body_bytes,
                                   max_inflight=limits.max_inflight,
                                   max_body_buffer=limits.max_body_buffer_bytes,
                                   request_timeout_s=limits.request_timeout_s)
        self.decoder = Decoder(max_instances=limits.max_instances,
                               max_image_pixels=limits.max_image_pixels,
                               max_pixels_per_s=limits.max_image_pixels_per_s)
        self.arrivals = head.Arrivals()     # counted by serve/server/http_protocol.py
        self.dataplane = DataPlane(self.repo, self.admission, self.decoder, monitor,
                                   shed_hold_s=limits.shed_hold_s, arrivals=self.arrivals)
        self.settings, self.monitor = settings, monitor
        self.collector = Collector(busy=lambda: self.admission.inflight > 0)
        self.grpc_port: int | None = None                  # bound in the lifespan (--grpc-port)
        self.control = create_control(keys=keys, metrics_port=settings.metrics_port,
                                      repo=self.repo, monitor=monitor, lifespan=self._lifespan)
        if self.feedback:
            self.control.include_router(self.feedback.router)
            repo = self.repo
            self.feedback.serve(lambda: {(mv.name, str(mv.version), mv.calibration.sha256): mv.rule
                                         for mv in repo.versions()})
        self.state = SimpleNamespace(settings=settings, monitor=monitor, repository=self.repo,
                                     record=self.record, admission=self.admission,
                                     feedback=self.feedback)

    def _current_epochs(self) -> dict[tuple[str, str], str]:
        """(model, version) → sha256 of the calibration each served version has in force."""
        return {(mv.name, str(mv.version)): mv.calibration.sha256 for mv in self.repo.versions()}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            arrivals = self.arrivals
            if arrivals.waiting > 0:
                arrivals.waiting -= 1
            route = head.match(scope["path"])
            if route is not None:
                return await rest.serve(self.dataplane, scope, receive, send, route)
        await self.control(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        return self.control.openapi()

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: Any) -> AsyncIterator[None]:
        settings, repo = self.settings, self.repo
        report = await repo.reload()
        if not repo.versions():
            log.error("no servable model in %s (%s); not ready until one loads",
                      settings.model_repository, report.failed or "empty")
        for mv in repo.versions():
            log.info("ready: %s/%s on %s", mv.name, mv.version, mv.model.provider)
        # Started: readiness is now "at least one model is live", so a repository that fills
        # later (poll or admin reload) makes the server ready without a restart.
        repo.ready = True
        self.collector.start()                              # full GC off the request path
        if self.feedback:
            self.feedback.start()
        tasks = [asyncio.create_task(self._flush())]
        if settings.poll_interval_s > 0:
            tasks.append(asyncio.create_task(self._poll()))
        if settings.metrics_port:
            from serve.server.metrics_port import serve_metrics
            tasks.append(asyncio.create_task(serve_metrics(
                settings.host, settings.metrics_port, self.monitor, settings.keys.metrics)))
        grpc_server = None
        if settings.grpc_port is not None:                  # gRPC v2 on this same event loop
            from serve.server.grpc_service import start_grpc
            grpc_server, self.grpc_port = await start_grpc(
                self.dataplane, settings.host, settings.grpc_port, settings.max_body_bytes,
                settings.max_body_buffer_bytes)
        try:
            yield
        finally:
            repo.ready = False
            if grpc_server is not None:                     # finish in-flight calls, then stop
                await grpc_server.stop(settings.request_timeout_s)
            for t in tasks:
                t.cancel()
            await repo.close()
            if self.feedback:                                   # flush the decision records
                await asyncio.to_thread(self.feedback.close)
            self.decoder.close()
            self.monitor.close()
            self.collector.stop()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.repo.reload()
            except Exception:
                log.exception("repository poll failed (will retry)")

    async def _flush(self) -> None:
        """Per-tick bookkeeping: apply the metrics the hot path queued."""
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                self.monitor.flush()
                self.collector.tick()
            except Exception:
                log.exception("metrics flush or garbage collection failed (will retry)")


def create_app(settings: ServerSettings | None = None, monitor: Monitor | None = None,
               preloaded: list[ModelVersion] | None = None) -> App:
    """Build the server for ``settings`` (defaults: environment variables).

    ``preloaded``: versions already loaded (by ``abstain serve``'s pre-flight) that the first
    repository scan adopts instead of loading them again, if their files did not change.
    """
    settings = settings or load_settings()
    monitor = monitor or Monitor(drift_window=settings.drift_window,
                                 drift_alpha=settings.drift_alpha,
                                 shift_alpha=settings.shift_alpha,
                                 shift_horizon=settings.shift_horizon)
    return App(settings, monitor, preloaded)


def create_app_from_env() -> App:
    """Factory for ``uvicorn --factory`` / worker processes: settings from ``ABSTAIN_*``."""
    return create_app(load_settings())
