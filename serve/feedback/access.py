"""The review API's trust boundary: who may call it, how much body it reads, what a store outage says.

Roles: the reviewer key reads the queues, the records and live risk and posts labels; the admin key
does the same (besides /v1/admin/*); the API key belongs to inference clients and
is refused here with 403, so a client can neither read which of its samples are audited nor label
them. Without a reviewer or admin key the review API is off (404) unless the server was started
with ``--open-review-api``. The Label Studio webhook has its own shared secret.

Limits before work: the key is checked from the request head, then the body is read up to
``limit`` bytes (413 past it, at once when ``Content-Length`` says so), and only then parsed — in a
worker thread, with the store call — so an unauthenticated or oversized body is never read and
never blocks the event loop. Refusals of a request whose body was not read close the connection.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from serve.errors import AbstainError

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
RETRY_AFTER_S = 5
_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
    for c in (400, 401, 403, 404, 409, 413, 422, 503)}


class ReviewError(AbstainError):
    """A review API request refused: its ``status`` and message say why and what to do."""

    def __init__(self, msg: str, status: int, reason: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.status, self.reason, self.headers = status, reason, headers or {}


class StoreUnavailable(ReviewError):
    """The decision store cannot be reached or written now: 503, retry later."""

    def __init__(self, what: str) -> None:
        super().__init__(f"the decision store is unavailable ({what}); retry in "
                         f"{RETRY_AFTER_S} s", 503, "store_unavailable",
                         {"Retry-After": str(RETRY_AFTER_S)})


def _has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers


def _closing(request: Request, headers: dict[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus ``connection: close`` when the request has a body we will not read."""
    return {**(headers or {}), **({"connection": "close"} if _has_body(request) else {})}


def bearer(request: Request) -> bytes:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" else b""


@dataclass(frozen=True, slots=True)
class ReviewAccess:
    """Who may use the review API (see the module docstring for the roles)."""

    reviewer: str | None = None
    admin: str | None = None
    api: str | None = None
    open: bool = False

    @property
    def enabled(self) -> bool:
        return self.open or bool(self.reviewer or self.admin)

    def check(self, request: Request) -> None:
        """Raise the refusal for this request's ``Authorization``, or return when it may pass."""
        if self.open:
            return
        if not self.enabled:
            raise ReviewError("the review API is off: start the server with --reviewer-key-file "
                              "(or ABSTAIN_REVIEWER_KEY) or --admin-key-file to enable it",
                              404, "review_off", _closing(request))
        token = bearer(request)
        if any(k and hmac.compare_digest(token, k.encode()) for k in (self.reviewer, self.admin)):
            return
        if self.api and hmac.compare_digest(token, self.api.encode()):
            raise ReviewError("the API key is for inference only: the review API needs the "
                              "reviewer or admin key", 403, "review_forbidden", _closing(request))
        raise ReviewError("missing or wrong key: send 'Authorization: Bearer <reviewer or admin "
                          "key>'", 401, "unauthorized",
                          _closing(request, {"WWW-Authenticate": "Bearer"}))

    async def __call__(self, request: Request) -> None:     # a FastAPI dependency
        self.check(request)


def check_secret(request: Request, header: str, secret: str, flag: str) -> None:
    """The shared-secret check of a webhook, before its body is read."""
    given = request.headers.get(header, "").encode()
    if not hmac.compare_digest(given, secret.encode()):
        raise ReviewError(f"missing or wrong {header} header: configure the webhook with the "
                          f"server's {flag}", 401, "unauthorized", _closing(request))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    too_large = ReviewError(f"request body exceeds the review API's limit of {limit} bytes "
                            "(--max-control-body-bytes / ABSTAIN_MAX_CONTROL_BODY_BYTES)", 413,
                            "body_too_large", {"connection": "close"})
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 18:
            raise ReviewError(f"Content-Length {declared[:32]!r} is not a byte count", 400,
                              "bad_content_length", {"connection": "close"})
        if int(declared) > limit:
            raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise ReviewError("the client closed the connection before the whole body arrived", 400,
                          "client_disconnect") from None
    return b"".join(chunks)


def parse(model: type[M], raw: bytes) -> M:
    """``raw`` JSON as ``model``, or a 422 that names every field that is wrong."""
    if not raw.strip():
        raise ReviewError("the request body is empty: send a JSON object", 422, "invalid_body")
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        raise ReviewError("invalid request: " + describe(err), 422, "invalid_body") from None


def describe(err: ValidationError | RequestValidationError) -> str:
    """A validation error as one line: ``field: problem; …`` (inputs are not echoed)."""
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}"
                     for e in err.errors()[:8])


@contextlib.contextmanager
def store_errors(store: Any) -> Iterator[None]:
    """Store failures as answers: an outage is 503 with ``Retry-After``, a value it cannot hold 422."""
    try:
        yield
    except ReviewError:
        raise
    except AbstainError as err:                 # StoreError: cannot connect or open
        log.warning("review API: decision store unavailable: %s", err)
        raise StoreUnavailable("cannot connect") from None
    except OverflowError:
        raise ReviewError("a number is too large for the decision store", 422,
                          "invalid_value") from None
    except (sqlite3.Error, OSError) as err:
        log.warning("review API: decision store error: %s: %s", type(err).__name__, err)
        raise StoreUnavailable(type(err).__name__) from None
    except Exception as err:
        if not getattr(store, "postgres", False):
            raise
        import psycopg

        if isinstance(err, psycopg.DataError):
            raise ReviewError("a value the decision store cannot hold: "
                              f"{str(err).strip().splitlines()[0][:200]}", 422,
                              "invalid_value") from None
        if isinstance(err, psycopg.Error):
            log.warning("review API: decision store error: %s: %s", type(err).__name__,
                        str(err).strip().splitlines()[0] if str(err).strip() else "")
            raise StoreUnavailable(type(err).__name__) from None
        raise


def answer(err: ReviewError) -> Response:
    return JSONResponse({"error": str(err)}, err.status, dict(err.headers))


def guarded_route(check: Callable[[Request], None]) -> type[APIRoute]:
    """A route class whose requests pass ``check`` first — before FastAPI reads a parameter or
    the body — and whose refusals (and FastAPI's own validation errors) are JSON answers."""

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Any]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    check(request)
                    return await handler(request)
                except ReviewError as err:
                    return answer(err)
                except RequestValidationError as err:
                    return answer(ReviewError("invalid request: " + describe(err), 422,
                                              "invalid_request"))

            return guarded

    return GuardedRoute


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body the handler reads itself (after the key)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}
