"""RSS of a real ``abstain serve --grpc-port`` under unauthenticated large ModelInfer calls.

Issue 28 (Medium 5): gRPC read whole messages before checking the key — 40 unauthenticated
16 MiB calls took the server from 222 MB to 1.58 GB. This starts the server (the code under
``--tree``, default this checkout) with an API key on the shipped model, sends ``--calls``
concurrent calls of ``--mib`` MiB without the key, and prints the status codes and the server's
RSS before, after, and its peak (VmHWM)::

    python bench/grpc_unauth_rss.py                       # this checkout
    python bench/grpc_unauth_rss.py --tree /path/to/old   # the same on another checkout
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[1]
METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _message(mib: int) -> bytes:
    """A ModelInferRequest with one ``mib`` MiB raw input (field 7, raw_input_contents)."""
    from serve.server.protocol.grpc_v2 import ModelInferRequest

    req = ModelInferRequest(model_name="mnist1d-maxsup")
    t = req.inputs.add(name="input", datatype="FP32")
    t.shape.extend([mib * 1024 * 1024 // 160, 40])
    req.raw_input_contents.append(b"\0" * (mib * 1024 * 1024 // 160 * 160))
    return req.SerializeToString()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", default=str(ROOT), help="the abstain checkout to serve")
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--mib", type=int, default=16)
    args = ap.parse_args()
    http, port = _port(), _port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ABSTAIN_")},
           "PYTHONPATH": args.tree, "ABSTAIN_API_KEY": "secret"}
    proc = subprocess.Popen([sys.executable, "-m", "serve.cli.main", "serve", str(ROOT / "models"),
                             "--port", str(http), "--grpc-port", str(port), "--max-body-bytes",
                             str(args.mib * 1024 * 1024 + 4096)], cwd=args.tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        time.sleep(1.0)
        before = _mib(proc.pid, "VmRSS")
        body = _message(args.mib)
        codes: collections.Counter = collections.Counter()
        lock = threading.Lock()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_send_message_length", -1)])
        call = channel.unary_unary(METHOD)          # raw bytes in and out

        def one() -> None:
            try:
                call(body, timeout=60)
                code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                code = err.code()
            with lock:
                codes[code.name] += 1

        t0 = time.perf_counter()
        threads = [threading.Thread(target=one) for _ in range(args.calls)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.perf_counter() - t0
        time.sleep(0.5)
        after, peak = _mib(proc.pid, "VmRSS"), _mib(proc.pid, "VmHWM")
        channel.close()
        print(f"tree {args.tree}: {args.calls} unauthenticated {args.mib} MiB ModelInfer calls in "
              f"{took:.2f} s: {dict(codes)}; server RSS {before:.0f} MiB before, {after:.0f} MiB "
              f"after, peak {peak:.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
