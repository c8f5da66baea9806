"""The HTTP layer: uvicorn's httptools protocol with the limits a public server needs.

uvicorn bounds neither the size of request headers nor the time a client may take to send them
or its body, so one slow or hostile client can hold memory and file descriptors indefinitely
(a 1-byte-every-2-s body is still served after 20 s). :class:`GuardedProtocol` adds:

* a header limit: request line + headers over ``max_header_bytes`` → 431 and close;
* a header timeout: from a connection's first byte (or from its opening) to the end of the
  headers, ``header_timeout_s`` → 408 and close;
* a body timeout: from the end of the headers to the end of the body, ``body_timeout_s`` →
  408 and close (a request the server already answered is simply closed);
* ``hold``: the data plane's HTTP transport (``serve/server/rest.py``) asks for it after a 503,
  and the connection is then not read for the hold (``serve/server/shed_hold.py``: jitter, and
  doubling for repeated 503s on the connection) — a client that ignores ``Retry-After`` and fires
  again at once waits in its own socket buffer instead of spending the server's CPU on more
  refusals;
* ``respond``: the data plane's answers (status, a few trusted headers, a body of known length)
  go out in one ``transport.write`` instead of two ASGI messages — one system call and no
  per-header validation less per request, a sixth of the served time of a one-sample request;
* arrivals: each request whose headers are complete is counted in its app's
  :class:`serve.server.dataplane.head.Arrivals` (the app uncounts it as its task starts).

The limits belong to a :class:`GuardedHttp` — uvicorn's ``http`` option, which makes one
protocol per connection — not to the class, so servers in one process keep their own; it
pickles by value into uvicorn's worker processes. Timeouts are checked by one sweeper per
``GuardedHttp`` and event loop (every ``SWEEP_S``), not one timer per request.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serve.server.dataplane.head import Arrivals
from serve.server.rest import HOLD_KEY, RESPOND_KEY
from serve.server.settings import Limits
from serve.server.shed_hold import hold_s

log = logging.getLogger(__name__)
SWEEP_S = 0.25


class HeadersTooLarge(Exception):
    pass


def _response(status: int, reason: str, message: str) -> bytes:
    body = ('{"error": "' + message.replace('"', "'") + '"}').encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class GuardedHttp:
    """uvicorn's ``http`` option: one :class:`GuardedProtocol` per connection, with these limits.

    Args:
        max_header_bytes: request line + headers over this → 431 and close.
        header_timeout_s: headers not complete this long after the first byte → 408 and close.
        body_timeout_s: body not complete this long after the headers → 408 and close.
    """

    def __init__(self, max_header_bytes: int = 64 * 1024, header_timeout_s: float = 10.0,
                 body_timeout_s: float = 30.0) -> None:
        self.max_header_bytes = max_header_bytes
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.live: weakref.WeakSet[GuardedProtocol] = weakref.WeakSet()
        self._sweepers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __reduce__(self) -> tuple:
        return GuardedHttp, (self.max_header_bytes, self.header_timeout_s, self.body_timeout_s)

    def __call__(self, **kwargs: Any) -> GuardedProtocol:
        return GuardedProtocol(self, **kwargs)

    def track(self, conn: GuardedProtocol) -> None:
        """Have ``conn``'s timeouts checked (by this loop's sweeper, started on first use)."""
        self.live.add(conn)
        if conn.loop not in self._sweepers:
            self._sweepers[conn.loop] = conn.loop.create_task(self._sweep(conn.loop))

    async def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            now = loop.time()
            for conn in list(self.live):
                if conn.loop is loop:
                    try:
                        conn.expire(now)
                    except Exception:
                        log.exception("connection sweep failed (ignored)")


class GuardedProtocol(HttpToolsProtocol):
    """httptools protocol with header/body limits and timeouts (made by a :class:`GuardedHttp`)."""

    def __init__(self, limits: GuardedHttp, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.max_header_bytes = limits.max_header_bytes
        self.header_timeout_s = limits.header_timeout_s
        self.body_timeout_s = limits.body_timeout_s
        self.arrivals = _arrivals(self.app)
        self._head_bytes = 0
        self._phase = ""                 # "headers" | "body" | "" (idle or being answered)
        self._deadline = 0.0
        self._held = False
        self._strikes = 0                # 503s in a row on this connection (see ``hold``)

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers", self.header_timeout_s)
        self.limits.track(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.limits.live.discard(self)
        self._phase = ""
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as err:
            if isinstance(err.__context__, HeadersTooLarge):
                self._refuse(431, "Request Header Fields Too Large",
                             f"the request line and headers exceed {self.max_header_bytes} bytes "
                             "(--max-header-bytes); send smaller headers")
            else:
                log.warning("invalid HTTP request received")
                self.send_400_response("Invalid HTTP request received.")

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {HOLD_KEY: self.hold, RESPOND_KEY: self.respond}
        self._head_bytes = 0
        if self._phase != "headers":
            self._arm("headers", self.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.arrivals is not None:
            self.arrivals.waiting += 1
        if self.parser.should_upgrade():
            self._phase = ""
        else:
            self._arm("body", self.body_timeout_s)

    def on_message_complete(self) -> None:
        self._phase = ""
        super().on_message_complete()

    # ------------------------------------------------------------------ limits
    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self.max_header_bytes:
            raise HeadersTooLarge()

    def _arm(self, phase: str, seconds: float) -> None:
        self._phase, self._deadline = phase, self.loop.time() + seconds

    def _refuse(self, status: int, reason: str, message: str) -> None:
        answered = self.cycle is not None and self.cycle.response_started and \
            not self.cycle.response_complete
        if not answered and (self.cycle is None or not self.cycle.response_complete
                             or self._phase == "headers"):
            self.transport.write(_response(status, reason, message))
        self._phase = ""
        self.transport.close()

    def expire(self, now: float) -> None:
        """Close this connection if its current phase ran past its deadline."""
        if not self._phase or now < self._deadline or self.transport.is_closing():
            return
        if self._phase == "headers":
            if self._head_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
                self._phase = ""          # idle between requests: uvicorn's keep-alive timeout
                self.transport.close()
                return
            self._refuse(408, "Request Timeout", f"the request headers did not arrive within "
                         f"{self.header_timeout_s:g} s (--header-timeout-s)")
        else:
            self._refuse(408, "Request Timeout", f"the request body did not arrive within "
                         f"{self.body_timeout_s:g} s (--body-timeout-s); send it at once")

    def respond(self, scope: dict, status: int, headers: list[tuple[bytes, bytes]],
                body: bytes) -> bool:
        """Write a whole response at once, as uvicorn's two ``send`` calls would (same status line,
        default headers and connection handling). False when the request's cycle cannot take it
        as is — not the current one (a pipelined request was read after it), already answered,
        client gone, writes paused, HEAD — and then the caller uses ``send``."""
        cycle = self.cycle
        if (cycle is None or cycle.scope is not scope or cycle.response_started
                or cycle.disconnected or self.flow.write_paused or scope["method"] == "HEAD"):
            return False
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        if status != 503:
            self._strikes = 0
        parts = [STATUS_LINE[status]]
        for name, value in (*cycle.default_headers, *headers):
            parts += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        self.transport.write(b"".join(parts))
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()
        return True

    def hold(self, seconds: float) -> None:
        """Do not read this connection for about ``seconds`` after a 503, doubled for each
        further 503 in a row on it (``shed_hold.hold_s``)."""
        if self._held or self.transport.is_closing():
            return
        self._held = True
        self.transport.pause_reading()
        self._unset_keepalive_if_required()     # a held connection is not idle: do not close it
        self.loop.call_later(hold_s(seconds, self._strikes), self._unhold)
        self._strikes += 1

    def _unhold(self) -> None:
        self._held = False
        if self.transport.is_closing():
            return
        if not self.flow.read_paused:
            self.transport.resume_reading()
        if (self.cycle is None or self.cycle.response_complete) and \
                self.timeout_keep_alive_task is None:   # idle again: uvicorn's keep-alive timer
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler)


def _arrivals(app: Any) -> Arrivals | None:
    """The arrivals counter of the app uvicorn serves (under any middleware it wrapped it in)."""
    for _ in range(8):
        arrivals = getattr(app, "arrivals", None)
        if isinstance(arrivals, Arrivals):
            return arrivals
        app = getattr(app, "app", None)
    return None


def configure(limits: Limits) -> GuardedHttp:
    """The protocol factory with the header and body limits of ``limits``."""
    return GuardedHttp(limits.max_header_bytes, limits.header_timeout_s, limits.body_timeout_s)


def uvicorn_options(limits: Limits) -> dict[str, Any]:
    """uvicorn keyword arguments every abstain server uses (tests, ``abstain serve``, bench)."""
    return {"http": configure(limits), "lifespan": "on",
            "timeout_keep_alive": limits.keep_alive_s,  # (not while held after a 503)
            "proxy_headers": False,                     # nothing here reads client addresses
            "h11_max_incomplete_event_size": limits.max_header_bytes}
