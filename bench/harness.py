"""``python -m bench`` (``make bench``): runtime ceiling, HTTP ceiling and abstain under wrk.

For each model (the shipped default, and a compute-heavy ResNet-18 built by
:mod:`bench.heavy_model`), on the same machine:

1. runtime ceiling: :class:`serve.server.runtime.OnnxModel` in this process, batch sizes 1…256, at the
   best of the intra-op thread settings;
2. HTTP ceiling: :mod:`bench.ceiling_app` (bare ASGI) under uvicorn, v2 JSON, one worker, once
   per intra-op thread setting (1, all cores): the ceiling is the best of them;
3. abstain: ``abstain serve`` (one worker, ``--intra-op-threads auto``) over v1 JSON, v2 JSON and
   v2 binary, at each concurrency, with the mean batch size from ``/metrics`` deltas;
4. optionally: ``--workers 2`` scaling, a run with extra serve flags (recording) for its
   throughput ratio, the gRPC endpoint (bench/grpc_load.py) and the overload benchmark
   (:mod:`bench.overload`).

Then :mod:`bench.report` writes the markdown page (with the targets) and the plot.
"""

from __future__ import annotations

import re
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench import servers
from bench.wrk import LoadResult, find_wrk, run_wrk, write_script
from serve.errors import AbstainError
from serve.server.runtime import OnnxModel

Endpoint = Literal["v1", "v2-json", "v2-binary"]
ENDPOINTS: tuple[Endpoint, ...] = ("v1", "v2-json", "v2-binary")
ModelKind = Literal["default", "heavy"]
HEAVY_NAME = "resnet18-heavy"


@dataclass
class BenchConfig:
    """What ``python -m bench`` measures; the CLI fills it from flags."""

    out: Path = Path("docs/benchmarks.md")
    plot: Path | None = None                      # default: ``out`` with .png
    duration_s: float = 10.0                      # per wrk point
    runtime_s: float = 1.0                        # per batch size of the runtime ceiling
    concurrency: tuple[int, ...] = (1, 8, 32, 128)
    endpoints: tuple[Endpoint, ...] = ENDPOINTS
    models: tuple[ModelKind, ...] = ("default", "heavy")
    default_model: Path = Path("models/mnist1d-maxsup/1")
    heavy_model: Path | None = None               # None: build one in a temp dir
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    device: str = "auto"
    intra_op_threads: str = "auto"                # abstain's setting
    ceiling_threads: tuple[int, ...] = (1, 0)     # bare app: each is run, the best is the ceiling
    max_batch_size: int = 64
    workers: tuple[int, ...] = (1, 2)             # --workers scaling (v2 JSON, default model)
    workers_concurrency: tuple[int, ...] = (32, 128)
    record_args: str = ""                         # extra serve flags for a second run (c=32)
    grpc: bool = False                            # the gRPC endpoint at c=1 and c=32
    overload: bool = False                        # bench.overload after the load points
    overload_duration_s: float = 20.0
    command: str = ""


@dataclass
class RuntimePoint:
    batch: int
    calls: int
    latency_ms: float                             # median per call
    samples_per_s: float


@dataclass
class LoadPoint:
    model: str
    server: str                                   # "ceiling", "abstain", "abstain+record"
    endpoint: str
    result: LoadResult
    mean_batch: float | None = None               # abstain only
    threads: str = ""                             # ceiling: its intra-op threads
    workers: int = 1

    @property
    def samples_per_s(self) -> float:
        return self.result.rps                    # one sample per request


@dataclass
class ModelInfo:
    kind: ModelKind
    name: str
    path: Path                                    # version directory
    input_shape: tuple[int, ...]
    provider: str
    num_classes: int


@dataclass
class BenchResult:
    config: BenchConfig
    models: list[ModelInfo] = field(default_factory=list)
    runtime: dict[str, list[RuntimePoint]] = field(default_factory=dict)
    load: list[LoadPoint] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""
    started: str = ""
    seconds: float = 0.0
    grpc_rows: list[str] = field(default_factory=list)       # markdown rows (bench/grpc_load.py)
    overload: list = field(default_factory=list)             # bench.overload.OverloadPoint
    abstain_threads: str = ""                                # what --intra-op-threads auto chose


def runtime_ceiling(model: OnnxModel, batch_sizes: tuple[int, ...], budget_s: float,
                    min_calls: int = 3) -> list[RuntimePoint]:
    """Raw ``session.run`` at each batch size: median latency per call, samples/s overall."""
    rng = np.random.default_rng(0)
    points = []
    for b in batch_sizes:
        x = rng.standard_normal((b, *model.input_shape)).astype(model.input_dtype)  # (b, *shape)
        model.run(x)                                                                # warm-up
        times = []
        t0 = time.perf_counter()
        while len(times) < min_calls or time.perf_counter() - t0 < budget_s:
            t = time.perf_counter()
            model.run(x)
            times.append(time.perf_counter() - t)
        total = float(np.sum(times))
        points.append(RuntimePoint(b, len(times), float(np.median(times)) * 1e3,
                                   b * len(times) / total))
    return points


def request_bodies(info: ModelInfo, input_name: str) -> dict[Endpoint, tuple[str, bytes, dict]]:
    """One-sample request for each endpoint: (path suffix, body, headers)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (1, *info.input_shape)).astype(np.float32)    # (1, *shape)
    opt = orjson.OPT_SERIALIZE_NUMPY
    shape = [1, *info.input_shape]
    v2_json = orjson.dumps({"inputs": [{"name": input_name, "shape": shape, "datatype": "FP32",
                                        "data": x.ravel()}]}, option=opt)
    header = orjson.dumps({"inputs": [{"name": input_name, "shape": shape, "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "parameters": {"binary_data_output": True}})
    json_h = {"Content-Type": "application/json"}
    return {
        "v1": (f"/v1/models/{info.name}/predict",
               orjson.dumps({"instances": x.reshape(1, -1)}, option=opt), json_h),
        "v2-json": (f"/v2/models/{info.name}/infer", v2_json, json_h),
        "v2-binary": (f"/v2/models/{info.name}/infer", header + x.tobytes(),
                      {"Content-Type": "application/octet-stream",
                       "Inference-Header-Content-Length": str(len(header))}),
    }


_BATCH_RE = r'^abstain_batch_size_(sum|count)\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$'


def batch_totals(base: str, model: str) -> tuple[float, float]:
    """(sum, count) of the model's ``abstain_batch_size`` histogram from /metrics."""
    status, body = servers.http(base + "/metrics")
    if status != 200:
        raise AbstainError(f"GET {base}/metrics answered {status}")
    vals = {"sum": 0.0, "count": 0.0}
    for m in re.finditer(_BATCH_RE.format(model=re.escape(model)), body.decode(), re.M):
        vals[m.group(1)] += float(m.group(2))
    return vals["sum"], vals["count"]


def _check(base: str, path: str, body: bytes, headers: dict, what: str) -> None:
    status, resp = servers.http(base + path, body, headers)
    if status != 200:
        raise AbstainError(f"{what}: POST {path} answered {status}: {resp[:300]!r}")


def _load_models(cfg: BenchConfig, work: Path,
                 console: Console) -> list[tuple[ModelInfo, list[OnnxModel]]]:
    out = []
    for kind in cfg.models:
        if kind == "default":
            path = cfg.default_model
            if not (path / "model.onnx").is_file():
                raise AbstainError(f"no default model at {path} (model.onnx missing): train, export "
                                   "and calibrate it first, or pass --default-model DIR")
            name = path.resolve().parent.name
        else:
            path = cfg.heavy_model or work / "built" / HEAVY_NAME / "1"
            if cfg.heavy_model is None:
                console.print(f"building the heavy model (untrained ResNet-18, 3×32×32) in {path}")
                _build_heavy(path)
            name = HEAVY_NAME
        ms = [OnnxModel(path / "model.onnx", device=cfg.device,  # type: ignore[arg-type]
                        intra_op_threads=t) for t in cfg.ceiling_threads]
        out.append((ModelInfo(kind, name, path.resolve(), ms[0].input_shape, ms[0].provider,
                              ms[0].num_classes), ms))
    return out


def _build_heavy(path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "bench.heavy_model", str(path)], cwd=servers.ROOT,
                          env=servers.child_env({}), capture_output=True, text=True)
    if proc.returncode != 0:
        raise AbstainError("building the heavy model failed (it needs the 'train' extra: torch): "
                           f"{(proc.stderr or proc.stdout).strip()[-400:]}")


def run_bench(cfg: BenchConfig, console: Console | None = None) -> BenchResult:
    """Measure everything in ``cfg``; the caller writes the report."""
    console = console or Console(stderr=True)
    find_wrk()
    res = BenchResult(cfg, started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                      load_before=_loadavg())
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="abstain-bench-") as tmp:
        work = Path(tmp)
        loaded = _load_models(cfg, work, console)
        res.models = [info for info, _ in loaded]
        repo = work / "repo"
        for info in res.models:
            (repo / info.name).mkdir(parents=True)
            (repo / info.name / "1").symlink_to(info.path, target_is_directory=True)

        n_load = len(res.models) * len(cfg.concurrency) * (len(cfg.ceiling_threads)
                                                            + len(cfg.endpoints))
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                      "{task.total}"), TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("runtime ceiling", total=len(res.models) + n_load)
            for info, models in loaded:
                bar.update(task, description=f"runtime ceiling: {info.name}")
                per = [runtime_ceiling(m, cfg.batch_sizes, cfg.runtime_s) for m in models]
                res.runtime[info.name] = [max(pts, key=lambda p: p.samples_per_s)
                                          for pts in zip(*per, strict=True)]
                bar.advance(task)
            inputs = {info.name: models[0].input_name for info, models in loaded}
            del loaded                                       # free the sessions' threads
            bodies = {info.name: request_bodies(info, inputs[info.name]) for info in res.models}
            scripts = {}
            for info in res.models:
                for ep, (_, body, headers) in bodies[info.name].items():
                    scripts[info.name, ep] = write_script(work / f"{info.name}-{ep}.lua", body,
                                                          headers)

            for threads in cfg.ceiling_threads:
                label = "1" if threads == 1 else ("all" if threads == 0 else str(threads))
                with servers.ceiling_server({i.name: i.path / "model.onnx" for i in res.models},
                                            servers.free_port(), cfg.device, threads,
                                            work / f"ceiling-{label}.log") as base:
                    for info in res.models:
                        path, body, headers = bodies[info.name]["v2-json"]
                        _check(base, path, body, headers, "ceiling app")
                        _warm(base + path, scripts[info.name, "v2-json"], cfg)
                        for c in cfg.concurrency:
                            bar.update(task, description=f"HTTP ceiling ({label} thr): "
                                       f"{info.name} c={c}")
                            r = run_wrk(base + path, scripts[info.name, "v2-json"], c,
                                        cfg.duration_s)
                            res.load.append(LoadPoint(info.name, "ceiling", "v2-json", r,
                                                      threads=label))
                            bar.advance(task)

            log = work / "abstain.log"
            with servers.abstain_server(repo, servers.free_port(), cfg.device,
                                        cfg.intra_op_threads, cfg.max_batch_size, log) as base:
                res.abstain_threads = _threads_chosen(base)
                for info in res.models:
                    for ep in cfg.endpoints:
                        path, body, headers = bodies[info.name][ep]
                        _check(base, path, body, headers, "abstain")
                        _warm(base + path, scripts[info.name, ep], cfg)
                        for c in cfg.concurrency:
                            bar.update(task, description=f"abstain: {info.name} {ep} c={c}")
                            res.load.append(_point(base, info.name, "abstain", ep, path,
                                                   scripts[info.name, ep], c, cfg))
                            bar.advance(task)
            default = next((i for i in res.models if i.kind == "default"), None)
            if default is not None:
                _extra_runs(cfg, res, repo, work, default, bodies, scripts, bar)
        if cfg.overload and default is not None:
            from bench.overload import run_overload

            res.overload = run_overload(repo, default, cfg, work, console)
        if cfg.grpc and default is not None:
            from bench.grpc_bench import grpc_rows

            try:
                res.grpc_rows = grpc_rows(repo, default.name, cfg, work)
            except AbstainError as err:          # the HTTP results still make a report
                console.print(f"gRPC stage failed: {err}")
                res.grpc_rows = [f"| gRPC | failed: {str(err)[:200]} | | | | | | |"]
    res.load_after = _loadavg()
    res.seconds = time.perf_counter() - t_start
    return res


def _point(base: str, model: str, server: str, ep: str, path: str, script: Path, c: int,
           cfg: BenchConfig, workers: int = 1) -> LoadPoint:
    s0, n0 = batch_totals(base, model)
    r = run_wrk(base + path, script, c, cfg.duration_s)
    s1, n1 = batch_totals(base, model)
    mean = (s1 - s0) / (n1 - n0) if n1 > n0 else None
    return LoadPoint(model, server, ep, r, mean, workers=workers)


def _extra_runs(cfg: BenchConfig, res: BenchResult, repo: Path, work: Path, info: ModelInfo,
                bodies: dict, scripts: dict, bar: Progress) -> None:
    """--workers scaling and the run with extra serve flags, default model, v2 JSON."""
    path, body, headers = bodies[info.name]["v2-json"]
    script = scripts[info.name, "v2-json"]
    runs = [(w, "abstain", []) for w in cfg.workers if w > 1]
    if cfg.record_args:
        runs.append((1, "abstain+record", shlex.split(cfg.record_args)))
    for workers, server, extra in runs:
        conc = cfg.workers_concurrency if server == "abstain" else (32,)
        with servers.abstain_server(repo, servers.free_port(), cfg.device, cfg.intra_op_threads,
                                    cfg.max_batch_size, work / f"{server}-{workers}.log",
                                    workers, extra) as base:
            _check(base, path, body, headers, server)
            _warm(base + path, script, cfg)
            for c in conc:
                bar.update(bar.task_ids[0], description=f"{server} x{workers}: c={c}")
                res.load.append(_point(base, info.name, server, "v2-json", path, script, c, cfg,
                                       workers))


def _threads_chosen(base: str) -> str:
    """What ``--intra-op-threads auto`` kept, per model, from the server's /v1/models."""
    status, body = servers.http(base + "/v1/models")
    if status != 200:
        return "unknown"
    models = orjson.loads(body).get("models", [])
    return ", ".join(f"{m['name']}: {m.get('threads', '?')}" for m in models)


def _warm(url: str, script: Path, cfg: BenchConfig) -> None:
    """One short unrecorded run so connection set-up and first allocations are not measured."""
    run_wrk(url, script, min(cfg.concurrency), 1.0)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
