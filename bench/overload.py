"""Overload benchmark (issue 16): goodput, refusals and memory at 1×, 2×, 4× and 16× capacity.

For single-sample requests (server ``--max-queue-size 32``) and 64-sample requests (the default
queue, 2048 samples = 32 requests), ``wrk`` offers load by concurrency (32, 64, 128, 512
connections; one request in flight per connection, so 32 connections fill the queue: 1×). Per
phase:

- goodput and 503 rate from the server's ``/metrics`` deltas of ``abstain_requests_total``;
- p50/p99 of SERVED requests, server side, from the deltas of the
  ``abstain_request_duration_seconds_bucket{code="200"}`` histogram (``histogram_quantile``
  interpolation, so the resolution is the bucket width), beside wrk's client-side p50/p99 of ALL
  responses (served and refused);
- the time to answer a refused request: a side prober opens a NEW connection per probe and times
  send → status line; only 503 answers count;
- server RSS (``/proc/PID/status``) before the phase and after the load stops (after the
  server's hold on refused connections has passed);
- the queue drain time, queue size in requests / goodput, and one batch (mean
  ``abstain_inference_duration_seconds`` over the phase), so served p99 can be judged against
  drain time + one batch.

Usage: ``python -m bench.overload [--duration 20] [--out docs/benchmarks.md]``: replaces (or
appends) the "## Overload" section of ``--out``; ``python -m bench --overload`` puts it in the full
report.
"""

from __future__ import annotations

import argparse
import math
import re
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from bench import servers
from bench.wrk import LoadResult, find_wrk, run_wrk, write_script
from serve.errors import AbstainError
from serve.files import atomic_write_text
from serve.runtime import OnnxModel

GOODPUT_RATIO, REFUSED_P99_MS, RSS_TOLERANCE = 0.90, 5.0, 0.10
SETTLE_S = 1.5                        # > the server's default hold on a refused connection (1 s)


@dataclass
class OverloadConfig:
    default_model: Path = Path("models/mnist1d-maxsup/1")
    duration_s: float = 20.0
    connections: tuple[int, ...] = (32, 64, 128, 512)
    sizes: tuple[int, ...] = (1, 64)
    device: str = "auto"
    intra_op_threads: str = "auto"
    max_batch_size: int = 64
    probe_interval_s: float = 0.05


@dataclass
class Phase:
    size: int                          # samples per request
    connections: int
    factor: float                      # offered load / capacity (connections / queue in requests)
    queue_requests: float
    wrk: LoadResult
    served: float                      # 200 answers in the phase
    refused: float                     # 503 answers in the phase
    seconds: float
    served_p50_ms: float | None        # server side, from the histogram
    served_p99_ms: float | None
    batch_ms: float | None             # mean session run
    refused_ms: list[float] = field(default_factory=list)
    rss_before_kib: int | None = None
    rss_after_kib: int | None = None

    @property
    def goodput(self) -> float:
        return self.served / self.seconds if self.seconds else 0.0

    @property
    def drain_ms(self) -> float | None:
        return 1e3 * self.queue_requests / self.goodput if self.goodput else None

    def refused_q(self, q: float) -> float | None:
        return float(np.quantile(self.refused_ms, q)) if self.refused_ms else None


@dataclass
class OverloadResult:
    config: OverloadConfig
    phases: list[Phase] = field(default_factory=list)
    command: str = ""


# ---------------------------------------------------------------- /metrics parsing

_LINE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(base: str) -> list[tuple[str, dict[str, str], float]]:
    """Every labelled sample of ``GET base/metrics`` as (name, labels, value)."""
    status, body = servers.http(base + "/metrics")
    if status != 200:
        raise AbstainError(f"GET {base}/metrics answered {status}")
    out = []
    for line in body.decode().splitlines():
        m = _LINE.match(line)
        if m:
            out.append((m.group(1), dict(_LABEL.findall(m.group(2))), float(m.group(3))))
    return out


def total(samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name
               and all(lab.get(k) == want for k, want in labels.items()))


def buckets(samples, name: str, **labels: str) -> dict[float, float]:
    """Cumulative counts by upper bound of histogram ``name`` summed over other labels."""
    out: dict[float, float] = {}
    for n, lab, v in samples:
        if n == name + "_bucket" and all(lab.get(k) == w for k, w in labels.items()):
            le = math.inf if lab["le"] == "+Inf" else float(lab["le"])
            out[le] = out.get(le, 0.0) + v
    return out


def histogram_quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear within the bucket holding rank q·count."""
    les = sorted(cumulative)
    if not les or cumulative[les[-1]] <= 0:
        return None
    rank = q * cumulative[les[-1]]
    lower, below = 0.0, 0.0
    for le in les:
        count = cumulative[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = le, count
    return lower


def _delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {le: v - before.get(le, 0.0) for le, v in after.items()}


# ---------------------------------------------------------------- the refused-request prober

class Prober(threading.Thread):
    """Opens a new connection per probe, sends ``request`` and times send → status line."""

    def __init__(self, port: int, request: bytes, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.port, self.request, self.interval_s = port, request, interval_s
        self.refused_ms: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as s:
                    t0 = time.perf_counter()
                    s.sendall(self.request)
                    head = b""
                    while b"\r\n" not in head:
                        chunk = s.recv(256)
                        if not chunk:
                            break
                        head += chunk
                    dt = (time.perf_counter() - t0) * 1e3
                if head.startswith(b"HTTP/1.1 503"):
                    self.refused_ms.append(dt)
            except OSError:
                pass
            self.stop.wait(self.interval_s)


def raw_request(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


# ---------------------------------------------------------------- the run

def run_overload(cfg: OverloadConfig, command: str = "") -> OverloadResult:
    find_wrk()
    if not (cfg.default_model / "model.onnx").is_file():
        raise AbstainError(f"no default model at {cfg.default_model} (model.onnx missing): pass "
                           "--default-model DIR")
    res = OverloadResult(cfg, command=command)
    m = OnnxModel(cfg.default_model / "model.onnx", device="cpu")
    name = cfg.default_model.resolve().parent.name
    shape, input_name = m.input_shape, m.input_name
    del m
    with tempfile.TemporaryDirectory(prefix="abstain-overload-") as tmp:
        work = Path(tmp)
        (work / "repo" / name).mkdir(parents=True)
        (work / "repo" / name / "1").symlink_to(cfg.default_model.resolve(), target_is_directory=True)
        for size in cfg.sizes:
            x = np.random.default_rng(size).uniform(0, 1, (size, *shape)).astype(np.float32)
            body = orjson.dumps({"inputs": [{"name": input_name, "shape": [size, *shape],
                                             "datatype": "FP32", "data": x.ravel()}]},
                                option=orjson.OPT_SERIALIZE_NUMPY)
            path = f"/v2/models/{name}/infer"
            script = write_script(work / f"overload-{size}.lua", body,
                                  {"Content-Type": "application/json"})
            extra = ["--max-queue-size", "32"] if size == 1 else []
            queue_requests = 32 / size if size == 1 else 2048 / size
            port = servers.free_port()
            with servers.abstain_server(work / "repo", port, cfg.device, cfg.intra_op_threads,
                                        cfg.max_batch_size, work / f"abstain-{size}.log",
                                        extra_args=extra) as srv:
                status, resp = servers.http(srv.base + path, body,
                                            {"Content-Type": "application/json"})
                if status != 200:
                    raise AbstainError(f"overload: POST {path} answered {status}: {resp[:200]!r}")
                run_wrk(srv.base + path, script, cfg.connections[0], 1.0)          # warm-up
                time.sleep(SETTLE_S)
                for c in cfg.connections:
                    res.phases.append(_phase(srv, path, body, script, size, c, queue_requests,
                                             cfg))
    return res


def _phase(srv: servers.Running, path: str, body: bytes, script: Path, size: int, c: int,
           queue_requests: float, cfg: OverloadConfig) -> Phase:
    rss0 = servers.rss_kib(srv.pid)
    m0 = scrape(srv.base)
    prober = Prober(int(srv.base.rsplit(":", 1)[1]), raw_request(path, body), cfg.probe_interval_s)
    prober.start()
    t0 = time.perf_counter()
    r = run_wrk(srv.base + path, script, c, cfg.duration_s)
    seconds = time.perf_counter() - t0
    prober.stop.set()
    prober.join(10)
    m1 = scrape(srv.base)
    time.sleep(SETTLE_S)
    rss1 = servers.rss_kib(srv.pid)
    ok = _delta(buckets(m1, "abstain_request_duration_seconds", code="200"),
                buckets(m0, "abstain_request_duration_seconds", code="200"))
    p50, p99 = (histogram_quantile(q, ok) for q in (0.5, 0.99))
    runs = total(m1, "abstain_inference_duration_seconds_count") - total(
        m0, "abstain_inference_duration_seconds_count")
    run_s = total(m1, "abstain_inference_duration_seconds_sum") - total(
        m0, "abstain_inference_duration_seconds_sum")
    served = (total(m1, "abstain_requests_total", code="200")
              - total(m0, "abstain_requests_total", code="200"))
    refused = (total(m1, "abstain_requests_total", code="503")
               - total(m0, "abstain_requests_total", code="503"))
    # wrk's own duration excludes its start-up; the metrics window spans the whole call.
    return Phase(size, c, c / queue_requests, queue_requests, r, served, refused,
                 max(r.duration_s, 1e-9) if r.duration_s else seconds,
                 None if p50 is None else p50 * 1e3, None if p99 is None else p99 * 1e3,
                 run_s / runs * 1e3 if runs else None, prober.refused_ms, rss0, rss1)


# ---------------------------------------------------------------- the report section

def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def checks(res: OverloadResult) -> list[tuple[str, bool | None]]:
    """Issue 16's done-when lines, each (text, passed); None where this run cannot tell."""
    out: list[tuple[str, bool | None]] = []
    for size in res.config.sizes:
        ph = [p for p in res.phases if p.size == size]
        base = next((p for p in ph if p.factor == 1), ph[0] if ph else None)
        for p in ph:
            if p.factor >= 4 and base is not None and base.goodput:
                r = p.goodput / base.goodput
                out.append((f"{size}-sample, {p.factor:g}×: goodput {p.goodput:,.0f} req/s = "
                            f"{r:.2f} of 1× (≥ {GOODPUT_RATIO:.2f})", r >= GOODPUT_RATIO))
        for p in ph:
            q = p.refused_q(0.99)
            if p.refused or q is not None:
                out.append((f"{size}-sample, {p.factor:g}×: refused answered in p99 {_ms(q)} ms "
                            f"over {len(p.refused_ms)} probes (≤ {REFUSED_P99_MS:g} ms)",
                            None if q is None else q <= REFUSED_P99_MS))
            limit = None if p.drain_ms is None else p.drain_ms + (p.batch_ms or 0.0)
            ok = None if limit is None or p.served_p99_ms is None else p.served_p99_ms <= limit
            out.append((f"{size}-sample, {p.factor:g}×: served p99 {_ms(p.served_p99_ms)} ms "
                        f"(server side) ≤ drain {_ms(p.drain_ms)} + one batch {_ms(p.batch_ms)} "
                        f"= {_ms(limit)} ms", ok))
            if p.rss_before_kib and p.rss_after_kib:
                r = p.rss_after_kib / p.rss_before_kib
                out.append((f"{size}-sample, {p.factor:g}×: RSS {p.rss_before_kib / 1024:.1f} → "
                            f"{p.rss_after_kib / 1024:.1f} MiB after the load ({r:.2f}×, within "
                            f"{RSS_TOLERANCE:.0%})", abs(r - 1) <= RSS_TOLERANCE))
    return out


def render_section(res: OverloadResult) -> str:
    cfg = res.config
    lines = ["## Overload", "",
             f"Generated by `{res.command or 'python -m bench.overload'}` (bench/overload.py). "
             "One `abstain serve` per request size (one worker, `--intra-op-threads "
             f"{cfg.intra_op_threads}`, `--max-batch-size {cfg.max_batch_size}`); single-sample "
             "requests with `--max-queue-size 32`, 64-sample requests with the default queue "
             "(2048 samples = 32 requests). Offered load = wrk connections / queue length in "
             f"requests; {cfg.duration_s:g} s per phase. Goodput and 503s: `/metrics` deltas of "
             "`abstain_requests_total`. Served p50/p99: SERVER side, `histogram_quantile` over the "
             "deltas of `abstain_request_duration_seconds_bucket{code=\"200\"}` (resolution = the "
             "bucket width). wrk p50/p99: CLIENT side, all responses (served and refused). "
             "Refused: a side prober, a new connection per probe, send → status line of 503s. "
             "Drain = queue length in requests / goodput; batch = mean session run.", "",
             "| samples/request | connections | load | goodput req/s | 503/s | served p50 ms "
             "(server) | served p99 ms (server) | wrk p50 ms (all) | wrk p99 ms (all) | refused "
             "p50 ms | refused p99 ms | probes refused | drain ms | batch ms | RSS before MiB | "
             "RSS after MiB |", "|" + "---|" * 16]
    for p in res.phases:
        rss = [f"{v / 1024:.1f}" if v else "–" for v in (p.rss_before_kib, p.rss_after_kib)]
        lines.append(
            f"| {p.size} | {p.connections} | {p.factor:g}× | {p.goodput:,.0f} | "
            f"{p.refused / p.seconds if p.seconds else 0:,.0f} | {_ms(p.served_p50_ms)} | "
            f"{_ms(p.served_p99_ms)} | {p.wrk.p50_ms:.2f} | {p.wrk.p99_ms:.2f} | "
            f"{_ms(p.refused_q(0.5))} | {_ms(p.refused_q(0.99))} | {len(p.refused_ms)} | "
            f"{_ms(p.drain_ms)} | {_ms(p.batch_ms)} | {rss[0]} | {rss[1]} |")
    lines += ["", "### Done when (issue 16)", ""]
    for text, ok in checks(res):
        lines.append(f"- {'not measured' if ok is None else 'PASS' if ok else 'MISS'}: {text}")
    return "\n".join(lines)


def replace_section(md: str, section: str, heading: str = "## Overload") -> str:
    """``md`` with its ``heading`` section (up to the next ``## ``) replaced, or appended."""
    if heading + "\n" not in md:
        return md.rstrip("\n") + "\n\n" + section + "\n"
    head, rest = md.split(heading + "\n", 1)
    nxt = re.search(r"^## ", rest, re.M)
    tail = rest[nxt.start():] if nxt else ""
    return head + section + "\n" + ("\n" + tail if tail else "")


def main(argv: list[str] | None = None) -> int:
    import shlex

    from bench.__main__ import ints

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.overload", description="Overload "
                                "benchmark; writes the '## Overload' section of --out.")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    p.add_argument("--default-model", type=Path, default=Path("models/mnist1d-maxsup/1"))
    p.add_argument("--duration", type=float, default=20.0, help="seconds per phase (≥ 1)")
    p.add_argument("--connections", type=ints, default=(32, 64, 128, 512))
    p.add_argument("--sizes", type=ints, default=(1, 64), help="samples per request")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--intra-op-threads", default="auto")
    p.add_argument("--max-batch-size", type=int, default=64)
    args = p.parse_args(argv)
    try:
        if args.duration < 1:
            raise AbstainError(f"--duration {args.duration} must be ≥ 1 second (wrk's resolution)")
        res = run_overload(OverloadConfig(args.default_model, args.duration, args.connections,
                                          args.sizes, args.device, args.intra_op_threads,
                                          args.max_batch_size),
                           command="python -m bench.overload " + shlex.join(argv))
    except AbstainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    section = render_section(res)
    old = args.out.read_text() if args.out.is_file() else "# Benchmarks\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, replace_section(old, section))
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
