"""Encode: batch outputs → v1 / v2 HTTP response bytes (an error's body: ``error_answers.py``).

A response carries ``Content-Length`` and ``X-Request-Id`` (every answer of the data plane, 200
or not); it goes out in one write through serve/server/http_protocol.py's ``respond``
extension, or as two ASGI messages under any other server (``serve/server/rest.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from serve.server.dataplane.head import Route
from serve.server.model_version import ModelVersion
from serve.server.protocol import Decoded, v1, v2

JSON = b"application/json"
OCTETS = b"application/octet-stream"


class Response:
    """A complete response: status, headers, body (``__slots__``: one is built per request)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, body: bytes, ctype: bytes = JSON,
                 extra: dict[str, str] | None = None) -> None:
        self.status, self.body = status, body
        self.headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        if extra:
            self.headers += [(k.lower().encode("latin-1"), str(v).encode("latin-1"))
                             for k, v in extra.items()]

    def with_id(self, request_id: str) -> list[tuple[bytes, bytes]]:
        """The headers, with the request id every answer carries."""
        return [*self.headers, (b"x-request-id", request_id.encode("latin-1"))]

    async def send(self, send: Any, request_id: str) -> None:
        """Through ASGI ``send`` (under a server without serve/server/http_protocol.py's ``respond``)."""
        await send({"type": "http.response.start", "status": self.status,
                    "headers": self.with_id(request_id)})
        await send({"type": "http.response.body", "body": self.body})


def error(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(status, orjson.dumps({"error": message}), JSON, headers)


def success(route: Route, mv: ModelVersion, req: Decoded, out: dict[str, np.ndarray],
            request_id: str) -> Response:
    """The 200 answer in the route's protocol (``out`` holds the probabilities it asks for)."""
    version = str(mv.version)
    if route.protocol == "v1":
        body = orjson.dumps({"id": req.id or request_id, "model_name": mv.name,
                             "model_version": version,
                             "predictions": v1.encode_predictions(out, mv.class_names, req.top_k)})
        return Response(200, body)
    content, hlen = v2.encode_infer(out, mv.class_names, mv.name, version, req.id or request_id,
                                    req.outputs)
    if hlen is None:
        return Response(200, content)
    return Response(200, content, OCTETS, {v2.HEADER: str(hlen)})
