"""Admission: decide from the request head alone whether a request may spend anything.

Everything here runs before the body is read, so a refused request costs one header parse and
one small response — no body read, no JSON parse (issue: overload without collapse):

* the API key (401);
* the declared body size against ``max_body_bytes`` (413);
* the in-flight caps: requests being served and body bytes being buffered (503);
* room in the model's queue for the samples the body will hold, estimated from its
  ``Content-Length`` and the bytes per sample this model's requests have had so far (503);
* the deadline (``X-Deadline-Ms``, else ``request_timeout_s``).

A 503 carries ``Retry-After`` from the batcher's measured drain rate.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass

from serve.errors import AbstainError
from serve.server.dataplane.batch import Batcher, Overloaded
from serve.server.dataplane.head import Head
from serve.server.protocol import RequestError


class Unauthorized(RequestError):
    def __init__(self, what: str) -> None:
        super().__init__(f"missing or wrong API key: send 'Authorization: Bearer <{what}>'",
                         401, "unauthorized", {"WWW-Authenticate": "Bearer"})


def key_ok(authorization: str, key: str | None) -> bool:
    """True when no key is required or ``Authorization: Bearer <key>`` matches (constant time)."""
    if key is None:
        return True
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.encode(), key.encode())


def check_key(authorization: str, key: str | None, what: str = "api key") -> None:
    if not key_ok(authorization, key):
        raise Unauthorized(what)


class NotReady(AbstainError):
    """The server is starting or stopping (gRPC answers it UNAVAILABLE: clients wait on it)."""

    status = 503
    reason = "not_ready"
    unavailable = True


class BodyTooLarge(RequestError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the limit of {limit} bytes (--max-body-bytes / "
                         "ABSTAIN_MAX_BODY_BYTES); send fewer instances per request",
                         413, "body_too_large", {"connection": "close"})


def parse_deadline(raw: str | None, default_s: float) -> float:
    """Absolute ``time.monotonic()`` deadline from ``X-Deadline-Ms`` (or the default timeout)."""
    timeout = default_s
    if raw is not None:
        try:
            timeout = float(raw) / 1000.0 if len(raw) <= 32 else -1.0
        except ValueError:
            timeout = -1.0
        if not (0 < timeout <= 3600):
            raise RequestError("X-Deadline-Ms must be a number of milliseconds in (0, 3600000]; "
                               f"got {raw[:40]!r}", 400, "bad_deadline")
    return time.monotonic() + timeout


def retry_after(batcher: Batcher) -> str:
    """Seconds until the queue has drained at the measured rate (at least 1: HTTP's unit)."""
    return str(max(1, math.ceil(batcher.drain_s())))


@dataclass(slots=True)
class Ticket:
    """What an admitted request holds: body bytes, and queue samples reserved on a batcher."""

    body_bytes: int
    batcher: Batcher | None = None
    samples: int = 0

    def hand_over(self) -> None:
        """Give the reserved samples back, right before the request's own samples are submitted
        (no ``await`` in between, so no other request takes the room meanwhile) or when it ends."""
        if self.samples and self.batcher is not None:
            self.batcher.unreserve(self.samples)
        self.samples = 0


class Admission:
    """In-flight accounting and the admission checks of one server process.

    Args:
        api_key: the Bearer key inference needs, or None.
        max_body_bytes: the per-request body limit (413).
        max_inflight: requests admitted and not yet answered before 503.
        max_body_buffer: body bytes admitted and not yet released before 503 (all requests).
        request_timeout_s: the default deadline.
    """

    def __init__(self, api_key: str | None, max_body_bytes: int, max_inflight: int,
                 max_body_buffer: int, request_timeout_s: float) -> None:
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.max_inflight = max_inflight
        self.max_body_buffer = max_body_buffer
        self.request_timeout_s = request_timeout_s
        self.inflight = 0                   # admitted requests not yet answered
        self.buffered = 0                   # body bytes reserved by admitted requests
        self._bytes_per_sample: dict[tuple[int, str], float] = {}

    def admit(self, head: Head, batcher: Batcher, kind: str) -> Ticket:
        """Check a request (whose API key was checked) before its body is read; returns what it
        holds until :meth:`release`: body bytes, and queue room for the samples its
        ``Content-Length`` promises (given to the batcher at submit: :meth:`Ticket.hand_over`).

        Raises:
            RequestError: 401, 413 or 503 (with ``Retry-After``), each saying what to do.
        """
        length = head.content_length
        if length is not None and (length < 0 or length > self.max_body_bytes):
            raise BodyTooLarge(self.max_body_bytes)
        if self.inflight >= self.max_inflight:
            raise self._busy(batcher, f"{self.inflight} requests in flight (limit "
                             f"{self.max_inflight}, --max-inflight)")
        reserve = length if length is not None else self.max_body_bytes
        if self.buffered + reserve > self.max_body_buffer and self.inflight:
            raise self._busy(batcher, f"{self.buffered} body bytes being read (limit "
                             f"{self.max_body_buffer}, --max-body-buffer-bytes)")
        n = 0
        if length is not None:
            bps = self._bytes_per_sample.get((id(batcher), kind))
            n = max(1, int(length / (1.25 * bps))) if bps else 1
            if not batcher.has_room(n):
                raise self._busy(batcher, batcher.refused())
            batcher.reserve(n)
        self.inflight += 1
        self.buffered += reserve
        return Ticket(reserve, batcher, n)

    def learn(self, batcher: Batcher, kind: str, body_bytes: int, samples: int) -> None:
        """Remember the bytes per sample of a decoded request (the largest seen, so estimates
        of a body's sample count err low and never refuse a request that would fit)."""
        if samples > 0 and body_bytes > 0:
            key = (id(batcher), kind)
            bps = body_bytes / samples
            if bps > self._bytes_per_sample.get(key, 0.0):
                self._bytes_per_sample[key] = bps

    def release(self, ticket: Ticket) -> None:
        self.inflight -= 1
        self.buffered -= ticket.body_bytes
        ticket.hand_over()

    @staticmethod
    def _busy(batcher: Batcher, why: str) -> Overloaded:
        err = Overloaded(f"server busy: {why}; retry after the Retry-After seconds or add "
                         "capacity")
        err.headers = {"Retry-After": retry_after(batcher)}
        return err
