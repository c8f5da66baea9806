"""Start and stop the servers under test (abstain, the bare-ASGI ceiling) as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from serve.errors import AbstainError

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60.0) -> tuple[int, bytes]:
    """One request with the standard library (status, body); HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=body, headers=headers or {},
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def child_env(extra: dict[str, str]) -> dict[str, str]:
    # Settings travel as flags: stray ABSTAIN_* variables (an API key…) must not change the run;
    # ABSTAIN_TENSORRT is the one switch the GPU check sets on purpose (serve/server/runtime.py reads it
    # in the server processes).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ABSTAIN_") or k == "ABSTAIN_TENSORRT"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return {**env, **extra}


@contextlib.contextmanager
def run_server(cmd: list[str], env: dict[str, str], ready_url: str, log: Path,
             what: str, timeout_s: float = 180.0,
             ok: Callable[[int], bool] = lambda status: status == 200,
             cwd: Path = ROOT) -> Iterator[None]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise AbstainError(f"{what} exited with code {proc.returncode} before it was ready: "
                                   f"{log.read_text(errors='replace')[-600:].strip()}")
            with contextlib.suppress(OSError):
                if ok(http(ready_url, timeout=2.0)[0]):
                    break
            if time.monotonic() > deadline:
                raise AbstainError(f"{what} was not ready within {timeout_s:.0f}s; see {log}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def abstain_process(repo: Path, port: int, device: str, intra_op_threads: str | int,
                    max_batch_size: int, log: Path, workers: int = 1,
                    extra: list[str] | None = None, src: Path | None = None
                    ) -> Iterator[tuple[str, subprocess.Popen]]:
    """``abstain serve`` with no repository polling; yields (base URL, process). ``src``: run
    the ``serve`` package of that source tree instead of this one (a before/after comparison)."""
    cmd = [sys.executable, "-m", "serve.cli.main", "serve", str(repo), "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--poll-interval-s", "0",
           "--log-level", "warning", "--device", device, "--intra-op-threads",
           str(intra_op_threads), "--max-batch-size", str(max_batch_size), "--follow-symlinks",
           *(extra or [])]
    base = f"http://127.0.0.1:{port}"
    env = child_env({})
    if src is not None:
        env["PYTHONPATH"] = str(src)
    with run_server(cmd, env, base + "/readyz", log, "abstain serve", cwd=src or ROOT) as proc:
        yield base, proc


@contextlib.contextmanager
def abstain_server(repo: Path, port: int, device: str, intra_op_threads: str | int,
                   max_batch_size: int, log: Path, workers: int = 1,
                   extra: list[str] | None = None, src: Path | None = None) -> Iterator[str]:
    """``abstain serve`` (see :func:`abstain_process`); yields its base URL."""
    with abstain_process(repo, port, device, intra_op_threads, max_batch_size, log, workers,
                         extra, src) as (base, _):
        yield base


@contextlib.contextmanager
def ceiling_server(models: dict[str, Path], port: int, device: str, intra_op_threads: int,
                   log: Path) -> Iterator[str]:
    """The bare ASGI app under uvicorn (uvloop, httptools, one worker); yields its base URL."""
    cmd = [sys.executable, "-m", "uvicorn", "bench.ceiling_app:app", "--host", "127.0.0.1",
           "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--workers", "1",
           "--log-level", "warning", "--no-access-log", "--lifespan", "on"]
    env = child_env({"BENCH_MODELS": json.dumps({k: str(v) for k, v in models.items()}),
                      "BENCH_DEVICE": device, "BENCH_INTRA_OP_THREADS": str(intra_op_threads)})
    base = f"http://127.0.0.1:{port}"
    # The bare app has no health route: any HTTP answer (404 for GET /) means it is up.
    with run_server(cmd, env, base + "/", log, "the ceiling app", ok=lambda status: True):
        yield base
