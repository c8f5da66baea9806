"""Server test support: small real ONNX classifiers + calibrations, and real uvicorn servers.

The models are built with the ``onnx`` helper API (no torch) and their ``calibration.json`` with
``serve.calibration.artifact``, so the tests never depend on the shipped default model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
import onnx
import uvicorn
from onnx import TensorProto, helper, numpy_helper

from serve.calibration.artifact import new_calibration, save_calibration
from serve.server.runtime import sha256_file
from serve.server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[1]
Kind = Literal["vector", "image", "slow"]
VECTOR_CLASSES = ["ant", "bee", "cat", "dog"]
IMAGE_CLASSES = ["dark", "mid", "bright"]
QUANTILES = [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


def _meta(m: onnx.ModelProto, props: dict[str, str]) -> None:
    for k, v in props.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v


def build_onnx(path: Path, kind: Kind = "vector", seed: int = 0, slow_size: int = 768,
               slow_steps: int = 12) -> None:
    """Write a linear classifier with standardisation inside the graph.

    vector: input (N, 8) → logits (N, 4). image: input (N, 1, 8, 8) → logits (N, 3).
    slow: the vector model plus ``slow_steps`` (S×S)·(S×S) products that depend on the input
    (so they cannot be constant-folded) and add exactly 0 to the logits.
    """
    rng = np.random.default_rng(seed)
    image = kind == "image"
    d, k = (64, 3) if image else (8, 4)
    in_shape = ["N", 1, 8, 8] if image else ["N", 8]
    inits = [numpy_helper.from_array(rng.normal(0, 1.5, (d, k)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.5, k).astype(np.float32), "b"),
             numpy_helper.from_array(np.float32([0.5 if image else 1.0]), "mu"),
             numpy_helper.from_array(np.float32([0.25 if image else 2.0]), "sd"),
             numpy_helper.from_array(np.int64([-1, d]), "flat")]
    nodes = [helper.make_node("Reshape", ["input", "flat"], ["xf"]),
             helper.make_node("Sub", ["xf", "mu"], ["xc"]),
             helper.make_node("Div", ["xc", "sd"], ["xs"]),
             helper.make_node("MatMul", ["xs", "W"], ["h"])]
    if kind == "slow":
        s = slow_size
        inits += [numpy_helper.from_array((rng.normal(0, 1, (s, s)) / np.sqrt(s)).astype(np.float32), "C"),
                  numpy_helper.from_array(np.float32([0.0]), "zero")]
        nodes += [helper.make_node("ReduceSum", ["xs"], ["t"], keepdims=0),
                  helper.make_node("Mul", ["t", "zero"], ["t0"]),
                  helper.make_node("Add", ["C", "t0"], ["a0"])]
        for i in range(slow_steps):
            nodes += [helper.make_node("MatMul", [f"a{i}", "C"], [f"m{i}"]),
                      helper.make_node("Tanh", [f"m{i}"], [f"a{i + 1}"])]
        nodes += [helper.make_node("ReduceSum", [f"a{slow_steps}"], ["u"], keepdims=0),
                  helper.make_node("Mul", ["u", "zero"], ["u0"]),
                  helper.make_node("Add", ["h", "u0"], ["h2"]),
                  helper.make_node("Add", ["h2", "b"], ["logits"])]
    else:
        nodes.append(helper.make_node("Add", ["h", "b"], ["logits"]))
    graph = helper.make_graph(
        nodes, "clf", [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    names = IMAGE_CLASSES if image else VECTOR_CLASSES
    pre = ('{"kind": "image", "mode": "L", "size": [8, 8], "scale": 0.00392156862745098, '
           '"layout": "NCHW"}') if image else '{"kind": "none"}'
    _meta(model, {"class_names": str(names).replace("'", '"'),
                  "input_shape": "[1, 8, 8]" if image else "[8]", "input_dtype": "float32",
                  "preprocessing": pre, "loss": "ce", "alpha": "0", "model": f"test-{kind}",
                  "data_spec": "synthetic", "data_fingerprint": "0" * 64,
                  "abstain_version": "test", "config": "{}"})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def write_calibration(vdir: Path, threshold: float | None = 0.6, score: str = "msp",
                      sha: str | None = None) -> None:
    cal = new_calibration(
        model_sha256=sha or sha256_file(vdir / "model.onnx"), score=score, temperature=1.0,
        threshold=threshold, target_risk=0.1, delta=0.1, method="ltt", n_tune=500, n_cert=500,
        coverage=0.7, risk=0.06, risk_upper_bound=0.095, data_fingerprint="0" * 64,
        score_quantiles=[0.3 + 0.6 * q for q in QUANTILES])
    save_calibration(cal, vdir)


def make_version(repo: Path, name: str, version: int, kind: Kind = "vector", seed: int = 0,
                 threshold: float | None = 0.6, **kw) -> Path:
    vdir = repo / name / str(version)
    build_onnx(vdir / "model.onnx", kind, seed, **kw)
    write_calibration(vdir, threshold)
    return vdir


def make_repository(root: Path) -> Path:
    """clf (versions 1 and 2), img (1), slow (1)."""
    make_version(root, "clf", 1, seed=1)
    make_version(root, "clf", 2, seed=2)
    make_version(root, "img", 1, "image", seed=3)
    make_version(root, "slow", 1, "slow", seed=4)
    return root


def wait_until_ready(proc: subprocess.Popen, probe: Callable[[], httpx.Response],
                     timeout_s: float, what: str, output: Callable[[], str],
                     every_s: float) -> None:
    """Poll ``probe`` until it answers 200; fail with ``output()`` if ``proc`` exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}: {output()}")
        try:
            if probe().status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready within {timeout_s:g} s")
        time.sleep(every_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(settings: ServerSettings) -> Iterator[tuple[str, object]]:
    """Real uvicorn in a thread on a free loopback port; yields (base URL, app)."""
    from serve.server.app import create_app

    port = free_port()
    settings = settings.model_copy(update={"port": port, "host": "127.0.0.1"})
    from serve.server.http_protocol import uvicorn_options

    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, **uvicorn_options(settings.limits)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)


@contextlib.contextmanager
def server_process(repo: Path, *args: str, env: dict[str, str] | None = None,
                   ready: bool = True) -> Iterator[tuple[str, subprocess.Popen]]:
    """`abstain serve REPO` as a subprocess; yields (base URL, process) once ready."""
    port = free_port()
    exe = shutil.which("abstain", path=str(Path(sys.executable).parent)) or "abstain"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTAIN_")}
    full_env.update(env or {})
    proc = subprocess.Popen([exe, "serve", str(repo), "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env,
                            text=True, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        if ready:
            wait_until_ready(proc, lambda: httpx.get(url + "/v2/health/ready", timeout=1),
                             90, "server", lambda: proc.stdout.read(), 0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def copy_shipped(dst: Path, names: tuple[str, ...]) -> Path:
    """Copy the shipped ``models/<name>`` directories into ``dst`` (no plots, no backups)."""
    for name in names:
        shutil.copytree(ROOT / "models" / name, dst / name,
                        ignore=shutil.ignore_patterns("*.png", "*.bak"))
    return dst


def wait_recorded(c: httpx.Client, rid: str, headers: dict[str, str], timeout: float) -> None:
    """Until the review API shows request ``rid`` (the recorder flushes every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while c.get(f"/v1/requests/{rid}", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "the request was not recorded"
        time.sleep(0.05)
