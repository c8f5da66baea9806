"""Control-plane bodies against a real ``abstain serve``: what a 100 MB body costs the server.

Each attack sends a 100 MB JSON body to ``/v1/feedback`` or the Label Studio webhook, as fast as
the server takes it, and stops at the answer. Reported per attack: the status, the time to the
answer, the bytes the client had sent by then, the server's RSS growth, and the slowest
``/healthz`` answer while four such uploads run at once. (Issue 28 measured, before the fix: a
100 MB array without the secret answered 401 after 8.6 s with ``/healthz`` blocked up to 7.5 s
and +480 MB RSS.)

    python -m bench.review_bodies [--models models] [--mb 100]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.servers import ROOT, child_env, free_port, http, run_server

API, REVIEWER, HOOK = "bench-api", "bench-reviewer", "bench-hook"
MB = 1 << 20
ATTACKS = [  # (what, path, headers, chunked)
    ("webhook, no secret", "/v1/review/labelstudio", {}, False),
    ("feedback, no key", "/v1/feedback", {}, False),
    ("feedback, the API key", "/v1/feedback", {"Authorization": f"Bearer {API}"}, True),
    ("feedback, reviewer key, Content-Length", "/v1/feedback",
     {"Authorization": f"Bearer {REVIEWER}"}, False),
    ("feedback, reviewer key, chunked", "/v1/feedback", {"Authorization": f"Bearer {REVIEWER}"}, True),
    ("webhook, secret, chunked", "/v1/review/labelstudio", {"X-Abstain-Webhook-Secret": HOOK}, True),
]


def upload(port: int, path: str, headers: dict[str, str], total: int,
           chunked: bool = False, timeout: float = 30.0) -> tuple[int, int, str]:
    """Send ``total`` body bytes as fast as the server takes them; stop at its answer.

    Returns (status, bytes sent when the answer arrived, the answer's head and body).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    head = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json",
            *(f"{k}: {v}" for k, v in headers.items()),
            "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    chunk = b"[" + b"1," * 32767 + b"1"
    sent, answer = 0, b""
    frame, off, last = b"", 0, False
    sock.setblocking(False)
    try:
        while not (last and off == len(frame)) and not answer:
            if off == len(frame):                       # the next frame: never past ``total``
                part = chunk[:total - sent]
                frame = f"{len(part):x}\r\n".encode() + part + b"\r\n" if chunked else part
                sent, off = sent + len(part), 0
                last = sent == total                    # (a chunked body ends with a 0 chunk)
                frame += b"0\r\n\r\n" if chunked and last else b""
            try:
                off += sock.send(frame[off:])
            except BlockingIOError:
                time.sleep(0.0005)
            except OSError:
                break
            with contextlib.suppress(BlockingIOError, ConnectionResetError):
                answer = sock.recv(65536)
        sock.setblocking(True)
        sock.settimeout(timeout)
        while not answer.endswith(b"}"):
            try:
                more = sock.recv(65536)
            except ConnectionResetError:
                break
            if not more:
                break
            answer += more
    finally:
        sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer else 0
    return status, sent, answer.decode(errors="replace")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--mb", type=int, default=100, help="body size in MB (default 100)")
    args = ap.parse_args()
    port, total = free_port(), args.mb * MB
    with tempfile.TemporaryDirectory() as tmp:
        env = child_env({"ABSTAIN_API_KEY": API, "ABSTAIN_REVIEWER_KEY": REVIEWER,
                         "ABSTAIN_REVIEW_WEBHOOK_SECRET": HOOK, "ABSTAIN_STATE_DIR": tmp + "/state",
                         "ABSTAIN_POLL_INTERVAL_S": "0"})
        cmd = [str(Path(ROOT / ".venv/bin/python")), "-m", "serve.cli.main", "serve", args.models,
               "--port", str(port)]
        base = f"http://127.0.0.1:{port}"
        with run_server(cmd, env, base + "/v2/health/ready", Path(tmp) / "log", "abstain") as proc:
            print(f"{args.mb} MB bodies against abstain serve {args.models} (pid {proc.pid})")
            print(f"{'attack':42} status  answer s  sent MB  RSS +MB")
            for what, path, headers, chunked in ATTACKS:
                before = rss_mb(proc.pid)
                t0 = time.perf_counter()
                status, sent, _ = upload(port, path, headers, total, chunked, timeout=60)
                secs = time.perf_counter() - t0
                print(f"{what:42} {status:6} {secs:9.3f} {sent / MB:8.1f} {rss_mb(proc.pid) - before:8.1f}")
            # four uploads without the key at once, /healthz timed meanwhile
            before, lat, stop = rss_mb(proc.pid), [], threading.Event()

            def flood() -> None:
                while not stop.is_set():
                    upload(port, "/v1/review/labelstudio", {}, total, False, timeout=60)

            floods = [threading.Thread(target=flood) for _ in range(4)]
            for t in floods:
                t.start()
            t_end = time.monotonic() + 5
            while time.monotonic() < t_end:
                t0 = time.perf_counter()
                assert http(base + "/healthz", timeout=30)[0] == 200
                lat.append(time.perf_counter() - t0)
                time.sleep(0.02)
            stop.set()
            for t in floods:
                t.join()
            print(f"4 concurrent unauthenticated uploads for 5 s: /healthz n={len(lat)} median "
                  f"{statistics.median(lat) * 1e3:.1f} ms, max {max(lat) * 1e3:.1f} ms; "
                  f"RSS +{rss_mb(proc.pid) - before:.1f} MB")


if __name__ == "__main__":
    main()
