"""``python -m bench``: the runtime ceiling, the HTTP ceiling and abstain under wrk, in one run.

For each model (the shipped default, and a compute-heavy ResNet-18 built by
:mod:`bench.heavy_model`), on the same machine and providers:

1. runtime ceiling: :class:`serve.runtime.OnnxModel` in this process, batch sizes 1…256, under
   each intra-op thread setting (the best samples/s of all is the runtime ceiling);
2. HTTP ceiling: :mod:`bench.ceiling_app` (bare ASGI) under uvicorn, v2 JSON, one worker, once
   per intra-op thread setting; the ceiling at a concurrency is the best of those runs;
3. abstain: ``abstain serve`` (one worker, its own ``--intra-op-threads`` default ``auto``) over
   v1 JSON, v2 JSON and v2 binary, at each concurrency, with the mean batch size from
   ``/metrics`` deltas;
4. scaling: abstain with 1, 2 … uvicorn workers (default model, v2 JSON, c=32 and c=128);
5. recording (optional): abstain plain and abstain with ``--record-args`` side by side at c=32.

Then :mod:`bench.report` writes the markdown page (with the three target ratios) and the plot.
"""

from __future__ import annotations

import re
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
from serve.runtime import OnnxModel

Endpoint = Literal["v1", "v2-json", "v2-binary"]
ENDPOINTS: tuple[Endpoint, ...] = ("v1", "v2-json", "v2-binary")
ModelKind = Literal["default", "heavy"]
HEAVY_NAME = "resnet18-heavy"


@dataclass
class BenchConfig:
    """What ``python -m bench`` measures; bench/__main__.py fills it from flags."""

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
    ceiling_threads: tuple[int, ...] = (1, 0)     # intra-op settings for both ceilings; 0 = all
    abstain_threads: str = "auto"                 # abstain serve --intra-op-threads
    max_batch_size: int = 64
    workers: tuple[int, ...] = (1, 2)             # scaling table; () skips it
    scaling_concurrency: tuple[int, ...] = (32, 128)
    record_args: tuple[str, ...] = ()             # extra `abstain serve` args; () skips it
    record_concurrency: int = 32
    command: str = ""


@dataclass
class RuntimePoint:
    batch: int
    calls: int
    latency_ms: float                             # median per call
    samples_per_s: float
    threads: int = 0                              # intra-op setting (0 = onnxruntime default)


@dataclass
class LoadPoint:
    model: str
    server: Literal["ceiling", "abstain"]
    endpoint: str
    result: LoadResult
    mean_batch: float | None = None               # abstain only
    threads: str = ""                             # intra-op setting of the server
    workers: int = 1
    phase: Literal["main", "scaling", "plain", "record"] = "main"

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
    abstain_threads_log: str = ""                 # the server's start-up line on its choice
    overload: object | None = None                # bench.overload.OverloadResult when run
    started: str = ""
    seconds: float = 0.0


def runtime_ceiling(model: OnnxModel, batch_sizes: tuple[int, ...], budget_s: float,
                    min_calls: int = 3, threads: int = 0) -> list[RuntimePoint]:
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
                                   b * len(times) / total, threads))
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


def _model_paths(cfg: BenchConfig, work: Path, console: Console) -> list[tuple[ModelKind, str, Path]]:
    out: list[tuple[ModelKind, str, Path]] = []
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
        out.append((kind, name, path.resolve()))
    return out


def _build_heavy(path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "bench.heavy_model", str(path)], cwd=servers.ROOT,
                          env=servers._child_env({}), capture_output=True, text=True)
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
        paths = _model_paths(cfg, work, console)
        inputs: dict[str, str] = {}
        for kind, name, path in paths:
            for threads in cfg.ceiling_threads:
                m = OnnxModel(path / "model.onnx", device=cfg.device,  # type: ignore[arg-type]
                              intra_op_threads=threads)
                if threads == cfg.ceiling_threads[0]:
                    res.models.append(ModelInfo(kind, name, path, m.input_shape, m.provider,
                                                m.num_classes))
                    inputs[name] = m.input_name
                console.print(f"runtime ceiling: {name}, intra-op threads {threads or 'all'}")
                res.runtime.setdefault(name, []).extend(
                    runtime_ceiling(m, cfg.batch_sizes, cfg.runtime_s, threads=threads))
                del m                                    # free the session's threads
        repo = work / "repo"
        for info in res.models:
            (repo / info.name).mkdir(parents=True)
            (repo / info.name / "1").symlink_to(info.path, target_is_directory=True)
        bodies = {info.name: request_bodies(info, inputs[info.name]) for info in res.models}
        scripts = {}
        for info in res.models:
            for ep, (_, body, headers) in bodies[info.name].items():
                scripts[info.name, ep] = write_script(work / f"{info.name}-{ep}.lua", body, headers)

        n_load = len(res.models) * len(cfg.concurrency) * (len(cfg.ceiling_threads)
                                                             + len(cfg.endpoints))
        n_load += len(cfg.workers) * len(cfg.scaling_concurrency) + 2 * bool(cfg.record_args)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                      "{task.total}"), TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("load", total=n_load)
            for threads in cfg.ceiling_threads:
                with servers.ceiling_server({i.name: i.path / "model.onnx" for i in res.models},
                                            servers.free_port(), cfg.device, threads,
                                            work / f"ceiling-{threads}.log") as base:
                    for info in res.models:
                        path, body, headers = bodies[info.name]["v2-json"]
                        _check(base, path, body, headers, "ceiling app")
                        _warm(base + path, scripts[info.name, "v2-json"], cfg)
                        for c in cfg.concurrency:
                            bar.update(task, description=f"HTTP ceiling: {info.name} "
                                       f"threads={threads or 'all'} c={c}")
                            r = run_wrk(base + path, scripts[info.name, "v2-json"], c,
                                        cfg.duration_s)
                            res.load.append(LoadPoint(info.name, "ceiling", "v2-json", r,
                                                      threads=str(threads or "all")))
                            bar.advance(task)

            with servers.abstain_server(repo, servers.free_port(), cfg.device,
                                        cfg.abstain_threads, cfg.max_batch_size,
                                        work / "abstain.log") as srv:
                res.abstain_threads_log = _threads_choice(srv.log)
                for info in res.models:
                    for ep in cfg.endpoints:
                        for c in cfg.concurrency:
                            bar.update(task, description=f"abstain: {info.name} {ep} c={c}")
                            res.load.append(_abstain_point(srv.base, info, ep, c, bodies,
                                                           scripts, cfg))
                            bar.advance(task)
            default = next((i for i in res.models if i.kind == "default"), res.models[0])
            for w in cfg.workers:
                with servers.abstain_server(repo, servers.free_port(), cfg.device,
                                            cfg.abstain_threads, cfg.max_batch_size,
                                            work / f"abstain-w{w}.log", workers=w) as srv:
                    for c in cfg.scaling_concurrency:
                        bar.update(task, description=f"scaling: {w} worker(s) c={c}")
                        res.load.append(_abstain_point(srv.base, default, "v2-json", c, bodies,
                                                       scripts, cfg, workers=w, phase="scaling"))
                        bar.advance(task)
            if cfg.record_args:
                for phase, extra in (("plain", ()), ("record", cfg.record_args)):
                    with servers.abstain_server(repo, servers.free_port(), cfg.device,
                                                cfg.abstain_threads, cfg.max_batch_size,
                                                work / f"abstain-{phase}.log",
                                                extra_args=extra) as srv:
                        bar.update(task, description=f"recording: {phase}")
                        res.load.append(_abstain_point(srv.base, default, "v2-json",
                                                       cfg.record_concurrency, bodies, scripts,
                                                       cfg, phase=phase))  # type: ignore[arg-type]
                        bar.advance(task)
    res.load_after = _loadavg()
    res.seconds = time.perf_counter() - t_start
    return res


def _abstain_point(base: str, info: ModelInfo, ep: Endpoint, c: int, bodies: dict,
                   scripts: dict, cfg: BenchConfig, workers: int = 1,
                   phase: Literal["main", "scaling", "plain", "record"] = "main") -> LoadPoint:
    path, body, headers = bodies[info.name][ep]
    _check(base, path, body, headers, "abstain")
    _warm(base + path, scripts[info.name, ep], cfg)
    s0, n0 = batch_totals(base, info.name)
    r = run_wrk(base + path, scripts[info.name, ep], c, cfg.duration_s)
    s1, n1 = batch_totals(base, info.name)
    mean = (s1 - s0) / (n1 - n0) if n1 > n0 and workers == 1 else None
    return LoadPoint(info.name, "abstain", ep, r, mean, threads=cfg.abstain_threads,
                     workers=workers, phase=phase)


def _threads_choice(log: Path) -> str:
    """The server's start-up lines on its intra-op choice (``auto`` logs what it measured)."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()
             if "intra-op threads for" in ln]
    return "; ".join(lines) or "not logged"


def _warm(url: str, script: Path, cfg: BenchConfig) -> None:
    """One short unrecorded run so connection set-up and first allocations are not measured."""
    run_wrk(url, script, min(cfg.concurrency), 1.0)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
