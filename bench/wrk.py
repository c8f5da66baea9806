"""Driving ``wrk`` (one thread) with a POST body from a file; exact numbers from its Lua ``done``.

The Lua script reads the body once (binary-safe) and, when wrk finishes, prints one JSON line
with the request count, duration, latency percentiles in microseconds and the error counters;
``wrk --latency``'s human table is not parsed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from serve.errors import AbstainError

LUA = r"""
wrk.method = "POST"
local f = assert(io.open("%(body)s", "rb"))
wrk.body = f:read("*a")
f:close()
%(headers)s
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %%d, "duration_us": %%d, "bytes": %%d, "p50_us": %%d, "p90_us": %%d, ' ..
    '"p99_us": %%d, "mean_us": %%.2f, "max_us": %%d, "connect": %%d, "read": %%d, "write": %%d, ' ..
    '"status": %%d, "timeout": %%d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class WrkMissing(AbstainError):
    """wrk is not installed."""


@dataclass(frozen=True)
class LoadResult:
    """One wrk run at fixed concurrency; latencies in milliseconds."""

    concurrency: int
    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    errors: int          # non-2xx/3xx (wrk counts status > 399) + socket errors

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def find_wrk() -> str:
    """Path of wrk, installing the Debian package when missing and allowed (root, apt-get)."""
    path = shutil.which("wrk")
    if path:
        return path
    apt = shutil.which("apt-get")
    import os
    if apt and os.geteuid() == 0:
        subprocess.run([apt, "update", "-qq"], check=False, capture_output=True)
        subprocess.run([apt, "install", "-y", "-qq", "--no-install-recommends", "wrk"],
                       check=False, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        path = shutil.which("wrk")
        if path:
            return path
    raise WrkMissing("wrk (the HTTP load generator) is not installed: run `make sysdeps` or "
                     "`sudo apt-get install wrk`, then re-run python -m bench")


def write_script(path: Path, body: bytes, headers: dict[str, str]) -> Path:
    """The Lua script for POSTing ``body`` with ``headers``; the body goes to ``path``.body."""
    body_path = path.with_suffix(".body")
    body_path.write_bytes(body)
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    path.write_text(LUA % {"body": str(body_path), "headers": lines})
    return path


def run_wrk(url: str, script: Path, concurrency: int, duration_s: float,
            timeout_s: float = 10.0) -> LoadResult:
    """``wrk -t1 -c C -d D --latency -s script url``, parsed from the script's JSON line."""
    cmd = [find_wrk(), "-t1", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s",
           f"--timeout={max(1, round(timeout_s))}s", "--latency", "-s", str(script), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise AbstainError(f"wrk failed (exit {proc.returncode}) against {url}: "
                           f"{(proc.stderr or proc.stdout).strip()[:300]}")
    d = json.loads(line[len("BENCH_JSON "):])
    errors = d["status"] + d["connect"] + d["read"] + d["write"] + d["timeout"]
    return LoadResult(concurrency, d["requests"], d["duration_us"] / 1e6, d["p50_us"] / 1e3,
                      d["p90_us"] / 1e3, d["p99_us"] / 1e3, d["mean_us"] / 1e3, errors)
