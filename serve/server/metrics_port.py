"""``/metrics`` on a port of its own (``--metrics-port``): Prometheus scrapes there, and the
serving port exposes no hashes, thresholds or traffic numbers. A minimal HTTP/1.1 responder on
the server's event loop; with several workers each binds the port with SO_REUSEPORT and renders
every worker's numbers (multiprocess mode), so any of them can answer a scrape.
"""

from __future__ import annotations

import asyncio
import logging

from serve.monitoring.monitor import Monitor
from serve.server.dataplane.admit import key_ok

log = logging.getLogger(__name__)


def _answer(status: str, ctype: str, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n").encode() + body


async def serve_metrics(host: str, port: int, monitor: Monitor, key: str | None) -> None:
    """Serve ``GET /metrics`` on ``host:port`` until cancelled."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, _, rest = lines[0].partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            auth = next((v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
                         if k.strip().lower() == "authorization"), "")
            if method != "GET" or path != "/metrics":
                out = _answer("404 Not Found", "application/json",
                              b'{"error": "this port serves GET /metrics only"}')
            elif not key_ok(auth, key):
                out = _answer("401 Unauthorized", "application/json",
                              b'{"error": "send Authorization: Bearer <metrics key>"}',
                              "www-authenticate: Bearer\r\n")
            else:
                body, ctype = monitor.render()
                out = _answer("200 OK", ctype, body)
            writer.write(out)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, reuse_port=True, limit=64 * 1024)
    log.info("metrics on http://%s:%d/metrics", host, port)
    async with server:
        await server.serve_forever()
