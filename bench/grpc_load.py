"""Load generator for the v2 gRPC endpoint: ModelInfer at fixed concurrency, typed and raw contents.

    python bench/grpc_load.py --serve models --model mnist1d-maxsup --concurrency 1 32 \\
        --contents raw typed --duration 15

``--serve REPO`` starts ``abstain serve REPO --grpc-port …`` itself (one worker, free ports) and
stops it after; ``--target HOST:PORT`` loads a server that is already running instead. Prints one
markdown table row per (contents, concurrency), after a header::

    | endpoint | model | c | req/s | p50 ms | p99 ms | errors | client |

The client: ``grpc.aio``, ``c`` calls in flight on one HTTP/2 channel per process, the request
serialized once and the reply not parsed (only its status counted; the first reply is parsed and
checked), so the client spends as little as it can per call. It is still Python: one process
tops out at some thousands of calls/s. The ``client`` column reports the client processes' CPU
(user + system) per second of wall time: near 100% per process means the client, not the
server, was the limit — then pass ``--processes N`` (the concurrency is split across N
processes, each with its own channel) and compare.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serve.server.protocol import grpc_v2 as P  # noqa: E402

METHOD = f"/{P.SERVICE}/"
HEADER = ("| endpoint | model | c | req/s | p50 ms | p99 ms | errors | client |\n"
          "|---|---|---|---|---|---|---|---|")


def _call(channel, name: str, raw: bool = False):
    req, resp = P.METHODS[name]
    return channel.unary_unary(METHOD + name,
                               request_serializer=None if raw else P.MESSAGES[req].SerializeToString,
                               response_deserializer=None if raw else P.MESSAGES[resp].FromString)


async def build_request(target: str, model: str, batch: int, contents: str,
                        metadata: tuple) -> bytes:
    """A serialized ModelInferRequest for ``model`` (shape and dtype from its metadata)."""
    import grpc

    async with grpc.aio.insecure_channel(target) as ch:
        meta = await _call(ch, "ModelMetadata")(P.MESSAGES["ModelMetadataRequest"](name=model),
                                                metadata=metadata, timeout=10)
    inp = meta.inputs[0]
    if inp.datatype != "FP32":
        raise SystemExit(f"model {model} takes {inp.datatype}; this benchmark sends FP32")
    shape = [batch, *inp.shape[1:]]
    x = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
    req = P.ModelInferRequest(model_name=model)
    t = req.inputs.add(name=inp.name, datatype="FP32", shape=shape)
    if contents == "raw":
        req.raw_input_contents.append(x.astype("<f4").tobytes())
    else:
        t.contents.fp32_contents.extend(x.ravel().tolist())
    return req.SerializeToString()


async def _load(target: str, body: bytes, conc: int, warmup: float, duration: float,
                metadata: tuple) -> tuple[list[float], int, float, float]:
    """``conc`` calls in flight for warm-up + duration; latencies (s) of calls inside the window."""
    import grpc

    lat: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as ch:
        call = _call(ch, "ModelInfer", raw=True)
        first = P.ModelInferResponse.FromString(await call(body, metadata=metadata, timeout=30))
        assert first.outputs, "the server answered without outputs"
        start = time.perf_counter() + warmup
        stop = start + duration

        async def worker() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                try:
                    await call(body, metadata=metadata, timeout=30)
                except grpc.aio.AioRpcError:
                    if t0 >= start:
                        errors += 1
                    continue
                t1 = time.perf_counter()
                if t0 >= start and t1 <= stop:
                    lat.append(t1 - t0)

        r0 = resource.getrusage(resource.RUSAGE_SELF)
        w0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return lat, errors, cpu, time.perf_counter() - w0


def _proc(args: tuple, out: mp.Queue) -> None:
    out.put(asyncio.run(_load(*args)))


def run_point(target: str, body: bytes, conc: int, procs: int, warmup: float, duration: float,
              metadata: tuple) -> dict:
    """One load point, split over ``procs`` client processes."""
    procs = max(1, min(procs, conc))
    shares = [conc // procs + (i < conc % procs) for i in range(procs)]
    if procs == 1:
        results = [asyncio.run(_load(target, body, conc, warmup, duration, metadata))]
    else:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        ps = [ctx.Process(target=_proc, args=((target, body, s, warmup, duration, metadata), q))
              for s in shares]
        for p in ps:
            p.start()
        results = [q.get(timeout=warmup + duration + 120) for _ in ps]
        for p in ps:
            p.join(30)
    lat = np.sort(np.concatenate([np.asarray(r[0]) for r in results]))
    cpu, wall = sum(r[2] for r in results), max(r[3] for r in results)
    return {"requests": len(lat), "rps": len(lat) / duration,
            "p50_ms": float(np.percentile(lat, 50)) * 1e3 if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) * 1e3 if len(lat) else float("nan"),
            "errors": sum(r[1] for r in results), "client_cpu": cpu / wall, "procs": procs}


def row(contents: str, model: str, conc: int, r: dict) -> str:
    client = f"{r['procs']} proc, CPU {100 * r['client_cpu']:.0f}%"
    return (f"| gRPC {contents} | {model} | {conc} | {r['rps']:,.0f} | {r['p50_ms']:.3f} | "
            f"{r['p99_ms']:.3f} | {r['errors']} | {client} |")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(repo: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port, gport = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "serve.cli.main", "serve", repo, "--port", str(port),
                             "--grpc-port", str(gport), "--log-level", "warning", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, f"127.0.0.1:{gport}"


async def wait_ready(target: str, proc: subprocess.Popen | None, timeout: float = 120) -> None:
    import grpc

    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as ch:
        ready = _call(ch, "ServerReady")
        while True:
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"server exited {proc.returncode}: {proc.stderr.read().decode()}")
            try:
                if (await ready(P.MESSAGES["ServerReadyRequest"](), timeout=2)).ready:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"no ready gRPC server at {target} within {timeout:.0f} s")
            await asyncio.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--serve", metavar="REPO", help="start `abstain serve REPO` for the run")
    where.add_argument("--target", metavar="HOST:PORT", help="a running server's gRPC address")
    ap.add_argument("--model", default="mnist1d-maxsup")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--contents", nargs="+", choices=("raw", "typed"), default=["raw", "typed"])
    ap.add_argument("--batch", type=int, default=1, help="samples per request (default 1)")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per load point")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--processes", type=int, default=1, help="client processes per load point")
    ap.add_argument("--no-header", action="store_true")
    ap.add_argument("server_args", nargs="*", help="after --: extra `abstain serve` flags")
    args = ap.parse_args(argv)
    key = os.environ.get("ABSTAIN_API_KEY")
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    proc = None
    target = args.target
    if args.serve:
        proc, target = start_server(args.serve, args.server_args)
    try:
        asyncio.run(wait_ready(target, proc))
        if not args.no_header:
            print(HEADER, flush=True)
        for contents in args.contents:
            body = asyncio.run(build_request(target, args.model, args.batch, contents, metadata))
            for conc in args.concurrency:
                r = run_point(target, body, conc, args.processes, args.warmup, args.duration,
                              metadata)
                print(row(contents, args.model, conc, r), flush=True)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
