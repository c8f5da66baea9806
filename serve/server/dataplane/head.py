"""Route and request head: what the data plane needs from the path and headers, read once.

Each inference endpoint has one route, matched here by one regular expression; the OpenAPI
document describes the same paths (``serve/server/control.py``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from serve.server.protocol import clean_id

ROUTE_RE = re.compile(r"^/(v1|v2)/models/([^/]+)(?:/versions/([^/]+))?/(predict|infer)$")


def new_request_id() -> str:
    """The server's id of a request: 128 random bits, 32 hex characters (≈ 0.7 µs).

    It is the decision store's key and the ``X-Request-Id`` of the answer; a client's own id
    is kept beside it (``client_id``), never used as a key. Random, not a counter: a client that
    could predict the next id could claim or read another client's record.
    """
    return os.urandom(16).hex()


class Arrivals:
    """Requests whose headers are parsed but whose ASGI task has not started yet.

    uvicorn creates one task per request; a burst read in one event-loop turn becomes a row of
    tasks that run one after another in the next. The data plane reads ``waiting`` to tell a
    request that is really alone (run it at once) from the first of a burst (queue it, so the
    burst is batched), without giving up an event-loop turn to find out. One per app
    (``serve/server/app.py``): its HTTP protocol counts them (``serve/server/http_protocol.py``),
    the app uncounts each as its task starts, and the data plane reads the count for every
    transport (a gRPC request is not alone either while HTTP ones wait).
    """

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting = 0


@dataclass(frozen=True, slots=True)
class Route:
    """One inference endpoint: ``protocol`` v1 (predict), v2 (infer) or grpc (``ModelInfer``),
    the model and version."""

    protocol: str
    model: str
    version: str | None

    @property
    def endpoint(self) -> str:
        """The endpoint label of metrics (the route template, never the user's model name)."""
        return _ENDPOINTS[(self.protocol, self.version is not None)]


_ENDPOINTS = {
    ("v1", False): "/v1/models/{model_name}/predict",
    ("v1", True): "/v1/models/{model_name}/versions/{model_version}/predict",
    ("v2", False): "/v2/models/{model_name}/infer",
    ("v2", True): "/v2/models/{model_name}/versions/{model_version}/infer",
    ("grpc", False): "grpc:ModelInfer",
    ("grpc", True): "grpc:ModelInfer",
}


_MATCHED: dict[str, Route | None] = {}       # a few live paths; cleared when it grows
_MATCHED_MAX = 512


def match(path: str) -> Route | None:
    """The inference route of ``path``, or None when it is not an inference endpoint."""
    try:
        return _MATCHED[path]
    except KeyError:
        pass
    m = ROUTE_RE.match(path)
    route = None if m is None or (m[1] == "v1") != (m[4] == "predict") else Route(m[1], m[2], m[3])
    if len(_MATCHED) >= _MATCHED_MAX:           # arbitrary paths must not grow it without bound
        _MATCHED.clear()
    _MATCHED[path] = route
    return route


@dataclass(slots=True)
class Head:
    """The headers the data plane reads, each decoded once (latin-1, lower-cased names)."""

    content_type: str = ""          # media type only, lower case, no parameters
    raw_content_type: bytes = b""   # the whole header (multipart needs its boundary)
    content_length: int | None = None
    authorization: str = ""
    request_id: str = ""            # the client's X-Request-Id, cleaned (clean_id); "" if none
    deadline_ms: str | None = None
    inference_header: str | None = None
    query: bytes = b""

    @classmethod
    def parse(cls, scope: dict) -> Head:
        h = cls(query=scope.get("query_string", b""))
        for name, value in scope["headers"]:
            if name == b"content-type":
                h.raw_content_type = value
                h.content_type = value.decode("latin-1").split(";", 1)[0].strip().lower()
            elif name == b"content-length":
                h.content_length = int(value) if value.isdigit() and len(value) < 19 else -1
            elif name == b"authorization":
                h.authorization = value.decode("latin-1")
            elif name == b"x-request-id":
                h.request_id = clean_id(value.decode("latin-1")) or ""
            elif name == b"x-deadline-ms":
                h.deadline_ms = value.decode("latin-1")
            elif name == b"inference-header-content-length":
                h.inference_header = value.decode("latin-1")
        return h
