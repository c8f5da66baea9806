"""The HTTP transport of the data plane: ``POST /v{1,2}/models/{m}[/versions/{v}]/{predict,infer}``.

:func:`serve` turns an ASGI request into an :class:`HttpCall`, runs it through
:meth:`serve.server.dataplane.infer.DataPlane.infer` and writes the answer — in one write through
``serve/server/http_protocol.py``'s ``respond`` extension when it can, else as two ASGI
messages. After a 503 it asks the same protocol to hold the connection (``shed_hold.py``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from serve.errors import AbstainError
from serve.server.dataplane import encode
from serve.server.dataplane.admit import parse_deadline
from serve.server.dataplane.body import read_body
from serve.server.dataplane.decode import OFF_LOOP_BYTES, Decoder
from serve.server.dataplane.head import Head, Route, new_request_id
from serve.server.dataplane.infer import DataPlane
from serve.server.error_answers import http_answer
from serve.server.model_version import ModelVersion
from serve.server.protocol import Decoded

HOLD_KEY = "abstain.hold"           # scope extensions set by serve/server/http_protocol.py
RESPOND_KEY = "abstain.respond"


class HttpCall:
    """One HTTP inference request (a :class:`serve.server.dataplane.infer.Call`)."""

    __slots__ = ("route", "head", "rid", "receive")
    method = "POST"
    only_when_ready = False

    def __init__(self, route: Route, head: Head, receive: Any) -> None:
        self.route, self.head, self.receive = route, head, receive
        self.rid = new_request_id()

    def deadline(self, default_s: float) -> float:
        return parse_deadline(self.head.deadline_ms, default_s)

    def read(self, limit: int) -> Any:
        return read_body(self.receive, limit)

    def decode(self, decoder: Decoder, body: bytes, mv: ModelVersion) -> Decoded | None:
        if len(body) < OFF_LOOP_BYTES:
            return decoder.tensor(self.route, self.head, body, mv)
        return None

    def encode(self, mv: ModelVersion, req: Decoded, out: dict[str, np.ndarray]
               ) -> encode.Response:
        return encode.success(self.route, mv, req, out, self.head.request_id or self.rid)

    def error(self, err: AbstainError) -> encode.Response:
        status, body, headers = http_answer(err)
        return encode.Response(status, body, encode.JSON, headers)


async def serve(plane: DataPlane, scope: dict, receive: Any, send: Any, route: Route) -> None:
    """The ASGI app of the inference routes (``serve/server/app.py`` matched ``route``)."""
    call = HttpCall(route, Head.parse(scope), receive)
    if scope["method"] == "POST":
        resp = await plane.infer(call)
        if resp is None:                            # the client left
            return
    else:
        resp = _not_allowed(plane, route, time.perf_counter())
    extensions = scope.get("extensions", {})
    respond = extensions.get(RESPOND_KEY)
    if respond is None or not respond(scope, resp.status, resp.with_id(call.rid), resp.body):
        await resp.send(send, call.rid)
    if resp.status == 503 and plane.shed_hold_s > 0:
        hold = extensions.get(HOLD_KEY)
        if hold is not None:
            hold(plane.shed_hold_s)


def _not_allowed(plane: DataPlane, route: Route, t0: float) -> encode.Response:
    """The answer to another method than POST (counted like a request, not as an error)."""
    resp = encode.error("method not allowed: inference endpoints take POST; see /docs", 405,
                        {"Allow": "POST"})
    plane.monitor.request_started()
    plane.monitor.request_finished(route.endpoint, "POST", 405, time.perf_counter() - t0,
                                   inference=True)
    return resp
