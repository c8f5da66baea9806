"""An error's answer, the same in every transport, and its metrics.

An :class:`serve.errors.AbstainError` carries its HTTP ``status``, a metrics ``reason`` and any
``headers``. Here, and only here, that becomes an HTTP answer (the status, a JSON body
``{"error": message}``, the headers), a gRPC status code with the same message (``retry-after``
and ``x-request-id`` in the trailing metadata) and the metrics (``abstain_errors_total``; 503
and 504 also count as shed). The data plane (HTTP and gRPC) and the control plane use it.

gRPC codes: 400/415/422 → INVALID_ARGUMENT, 401 → UNAUTHENTICATED, 404 → NOT_FOUND, 413 and 503
(over a limit, queue full) → RESOURCE_EXHAUSTED, 504 → DEADLINE_EXCEEDED; not ready and a model
being unloaded → UNAVAILABLE (the client should wait, not back off); anything else → INTERNAL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from serve.errors import AbstainError
from serve.monitoring.monitor import Monitor

if TYPE_CHECKING:
    import grpc

GRPC_CODES = {400: "INVALID_ARGUMENT", 415: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT",
              401: "UNAUTHENTICATED", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED",
              503: "RESOURCE_EXHAUSTED", 504: "DEADLINE_EXCEEDED"}
SHED = (503, 504)


class InternalError(AbstainError):
    """A bug in abstain, logged with the request id; the client gets only the id."""

    status = 500
    reason = "internal"

    def __init__(self, request_id: str) -> None:
        super().__init__("internal server error (a bug; it has been logged with request id "
                         f"{request_id})")


def record(monitor: Monitor, err: AbstainError, model: str = "", version: str = "") -> None:
    """Count a failed request (and a shed one: 503 or 504)."""
    monitor.error(err.reason, model, version)
    if err.status in SHED:
        monitor.shed(model, version, err.status)


def http_answer(err: AbstainError) -> tuple[int, bytes, dict[str, str]]:
    """(status, JSON body, headers) of the HTTP answer."""
    return err.status, orjson.dumps({"error": str(err)}), dict(err.headers)


def grpc_status(err: AbstainError) -> grpc.StatusCode:
    """The gRPC status code of the answer (its details are ``str(err)``, as in HTTP's body)."""
    import grpc  # an extra (cpu / gpu): only gRPC calls get here

    if err.status == 503 and err.unavailable:
        return grpc.StatusCode.UNAVAILABLE
    return getattr(grpc.StatusCode, GRPC_CODES.get(err.status, "INTERNAL"))


def grpc_trailer(err: AbstainError, request_id: str) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of the answer: the request id, and ``retry-after`` when it has one."""
    return (("x-request-id", request_id),
            *((k.lower(), str(v)) for k, v in err.headers.items() if k.lower() == "retry-after"))
