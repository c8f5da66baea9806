"""The data plane's ASGI app: the one route of every inference endpoint, stage by stage.

Hot-reload rule: between ``repository.get`` and ``batcher.submit`` there is no ``await``, so a
reload can never slip in between and a request finishes on the version it started with.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from serve.errors import AbstainError
from serve.monitoring.monitor import Monitor
from serve.server.dataplane import encode
from serve.server.dataplane.admit import Admission, check_key, parse_deadline
from serve.server.dataplane.batch import Batcher
from serve.server.dataplane.body import ClientGone, read_body
from serve.server.dataplane.decode import Decoder
from serve.server.dataplane.head import Arrivals, Head, Route, new_request_id
from serve.server.error_answers import http_answer, record
from serve.server.repository import ModelRepository, ModelVersion

log = logging.getLogger("serve.server.dataplane")
# Bodies this large are decoded in the decode thread, so that a turn of the event loop that
# decodes many of them does not delay every other answer (a refusal included). The thread buys
# no parallelism (orjson holds the GIL) and each hop costs GIL hand-offs and wake-ups that the
# inference thread pays for, so only large bodies take it: JSON of 64 KiB parses in ~0.2 ms here.
# (Measured, 64-sample requests of 27 KB at 16× overload: with the limit at 16 KiB goodput was
# 861/s and served p99 53.6 ms; at 64 KiB 900/s and 48.5 ms, refusals answered in 3.2 ms p99.)
OFF_LOOP_BYTES = 64 * 1024
HOLD_KEY = "abstain.hold"           # scope extensions set by serve/server/http_protocol.py
RESPOND_KEY = "abstain.respond"


class DataPlane:
    """Serves ``POST /v{1,2}/models/{m}[/versions/{v}]/{predict,infer}``.

    Args:
        repo: the live model versions.
        admission: the admission stage (in-flight accounting, limits, auth).
        decoder: the decode stage.
        monitor: request metrics.
        shed_hold_s: after a 503, how long the connection is not read again (the same client
            ignoring ``Retry-After`` cannot spend the capacity the 503 protected).
        arrivals: requests read but not started (the HTTP protocol counts them); a request is
            run at once only when it is alone.
    """

    def __init__(self, repo: ModelRepository, admission: Admission, decoder: Decoder,
                 monitor: Monitor, shed_hold_s: float = 0.0,
                 arrivals: Arrivals | None = None) -> None:
        self.repo, self.admission, self.decoder, self.monitor = repo, admission, decoder, monitor
        self.shed_hold_s = shed_hold_s
        self.arrivals = arrivals if arrivals is not None else Arrivals()

    async def __call__(self, scope: dict, receive: Any, send: Any, route: Route) -> None:
        t0 = time.perf_counter()
        head = Head.parse(scope)
        rid = head.request_id or new_request_id()
        model = version = ""
        status = 500
        self.monitor.request_started()
        try:
            if scope["method"] != "POST":
                resp = encode.error("method not allowed: inference endpoints take POST; see /docs",
                                    405, {"Allow": "POST"})
            else:
                try:
                    check_key(head.authorization, self.admission.api_key)   # before any lookup
                    mv = self.repo.get(route.model, route.version)
                    model, version = mv.name, str(mv.version)
                    resp = await self._serve(route, head, receive, mv, rid)
                except ClientGone:
                    status = 499
                    return
                except AbstainError as err:
                    resp = self._error(err, model, version)
                except Exception as err:
                    log.exception("internal error (a bug in abstain) on request %s: %s", rid, err)
                    self.monitor.error("internal", model, version)
                    resp = encode.error("internal server error (a bug; it has been logged with "
                                        f"request id {rid})", 500)
            status = resp.status
            respond = scope.get("extensions", {}).get(RESPOND_KEY)
            if respond is None or not respond(scope, resp.status, resp.with_id(rid), resp.body):
                await resp.send(send, rid)
            if status == 503 and self.shed_hold_s > 0:
                hold = scope.get("extensions", {}).get(HOLD_KEY)
                if hold is not None:
                    hold(self.shed_hold_s)
        finally:
            self.monitor.request_finished(route.endpoint, "POST", status,
                                          time.perf_counter() - t0, model, version, inference=True)

    async def _serve(self, route: Route, head: Head, receive: Any, mv: ModelVersion,
                     rid: str) -> encode.Response:
        batcher = mv.batcher
        assert batcher is not None
        kind = route.protocol + head.content_type
        ticket = self.admission.admit(head, batcher, kind)               # admit
        try:
            deadline = parse_deadline(head.deadline_ms, self.admission.request_timeout_s)
            body = await read_body(receive, self.admission.max_body_bytes)
            mv = self.repo.get(route.model, route.version)             # no await from here …
            req = self.decoder.tensor(route, head, body, mv) if len(body) < OFF_LOOP_BYTES \
                else None                                               # decode: small on the loop
            while req is None:                                          # images, large bodies:
                decoded_for = mv                                        # off the loop, so it
                req = await self.decoder.off_loop(route, head, body, mv)  # keeps serving
                mv = self.repo.get(route.model, route.version)
                if not _same_inputs(mv, decoded_for):                   # reloaded meanwhile
                    req = None
            batcher = mv.batcher
            assert batcher is not None
            self.admission.learn(batcher, kind, len(body), len(req.x))
            alone = self.admission.inflight == 1 and self.arrivals.waiting == 0
            ticket.hand_over()                                          # its room, to its samples
            out = await batcher.result(req.x, deadline, alone, rid)     # … to submit: batch, run,
            return encode.success(route, mv, req, out, rid)             # decide, record; encode
        finally:
            self.admission.release(ticket)

    def _error(self, err: AbstainError, model: str, version: str) -> encode.Response:
        record(self.monitor, err, model, version)
        status, body, headers = http_answer(err)
        return encode.Response(status, body, encode.JSON, headers)


def _same_inputs(a: ModelVersion, b: ModelVersion) -> bool:
    return a is b or (a.preprocessing == b.preprocessing and a.model.input_shape ==
                      b.model.input_shape and a.model.input_dtype == b.model.input_dtype)


def batcher_factory(settings: Any, record_hook: Any, monitor: Monitor):
    """The repository's factory: one batcher per loaded version, its record hook attached."""

    def make(mv: ModelVersion) -> Batcher:
        name, ver = mv.name, str(mv.version)
        return Batcher(mv.infer, settings.max_batch_size, settings.max_queue_size,
                       record_hook(mv), lambda depth: monitor.queue_depth(name, ver, depth),
                       name=f"{name}/{ver}", inline_s=settings.inline_run_s,
                       infer_alone=mv.infer_alone,
                       overload_target_s=settings.overload_queue_ms / 1000)

    return make
