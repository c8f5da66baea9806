"""ASGI plumbing shared by every route: request ids, JSON responses, the body limit, and the
``Guard`` middleware that applies them (and hands inference requests to the fast path).
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from typing import Any

import orjson
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from serve.monitoring import Monitor
from serve.protocol import RequestError

JSON = "application/json"
DEADLINE_HEADER = "x-deadline-ms"
IMAGE_TYPES = ("image/png", "image/jpeg")
# Inference routes served by the fast path (Guard) without FastAPI's routing and dependency
# resolution; FastAPI keeps the same routes for OpenAPI and for forms / image uploads.
FAST_RE = re.compile(r"^/(v1|v2)/models/([^/]+)(?:/versions/([^/]+))?/(predict|infer)$")
# Request ids: a per-process random prefix and a counter (unique, no syscall per request).
_RID_PREFIX = uuid.uuid4().hex[:16]
_rid_counter = itertools.count(1)


def new_request_id() -> str:
    return f"{_RID_PREFIX}{next(_rid_counter):016x}"


def is_json(ctype: str) -> bool:
    return ctype in ("", JSON, "application/*+json") or ctype.endswith("+json")


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, JSON)


def error_json(msg: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": msg}, status, headers)


class BodyTooLarge(RequestError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the limit of {limit} bytes (ABSTAIN_MAX_BODY_BYTES); "
                         "send fewer instances per request", 413, "body_too_large")


class Guard:
    """Pure-ASGI middleware: request id, body limit while reading, and request metrics."""

    def __init__(self, app: Any, limit: int, monitor: Monitor, fast: Any = None) -> None:
        self.app, self.limit, self.monitor, self.fast = app, limit, monitor, fast

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        path = scope["path"]
        inference = path.endswith(("/infer", "/predict"))
        status = [500]
        endpoint = None

        async def send_with_id(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
                msg["headers"] = [*msg.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(msg)

        received = 0

        async def limited() -> dict:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return msg

        if inference:
            self.monitor.request_started()
        try:
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.limit:
                self.monitor.error("body_too_large")
                resp = error_json(str(BodyTooLarge(self.limit)), 413, {"connection": "close"})
                await resp(scope, receive, send_with_id)
                return
            fast = self.fast(scope, headers) if inference and self.fast is not None else None
            if fast is not None:
                endpoint, handler = fast

                async def read_body() -> bytes:
                    body = bytearray()
                    more = True
                    while more:
                        msg = await limited()
                        if msg["type"] != "http.request":
                            raise ClientDisconnect()
                        body += msg.get("body", b"")
                        more = msg.get("more_body", False)
                    return bytes(body)

                resp = await handler(read_body)
                if resp is None:          # the client went away; nothing to send
                    status[0] = 499
                    return
                await resp(scope, receive, send_with_id)
                return
            await self.app(scope, limited, send_with_id)
        finally:
            route = scope.get("route")
            self.monitor.request_finished(endpoint or getattr(route, "path", "unmatched"),
                                          scope["method"],
                                          status[0], time.perf_counter() - t0,
                                          state.get("model", ""), state.get("version", ""),
                                          inference=inference)
