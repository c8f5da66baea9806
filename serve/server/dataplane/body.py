"""Reading a request body: whole, within the size limit, or not at all.

Time limits are the HTTP layer's (``serve/server/http_protocol.py`` closes a connection whose headers or
body trickle in too slowly); a client that goes away mid-body raises :class:`ClientGone`.
"""

from __future__ import annotations

from typing import Any

from serve.server.dataplane.admit import BodyTooLarge


class ClientGone(Exception):
    """The client disconnected (or was timed out) before the body was complete."""


async def read_body(receive: Any, limit: int) -> bytes:
    """The whole body from ASGI ``receive``; :class:`BodyTooLarge` as soon as it passes ``limit``."""
    msg = await receive()
    if msg["type"] != "http.request":
        raise ClientGone()
    body = msg.get("body", b"")
    if not msg.get("more_body", False):
        if len(body) > limit:
            raise BodyTooLarge(limit)
        return body
    parts = bytearray(body)
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            raise ClientGone()
        parts += msg.get("body", b"")
        if len(parts) > limit:
            raise BodyTooLarge(limit)
        if not msg.get("more_body", False):
            return bytes(parts)
