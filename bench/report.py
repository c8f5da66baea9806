"""``docs/benchmarks.md`` and its plot from a :class:`bench.harness.BenchResult`."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.harness import BenchResult, LoadPoint
from serve.files import atomic_write_text

PACKAGES = ("abstain", "numpy", "onnxruntime", "fastapi", "starlette", "uvicorn", "uvloop",
            "httptools", "orjson", "prometheus-client")
THROUGHPUT_RATIO, LATENCY_RATIO, P99_RATIO, HEAVY_RATIO, RECORD_RATIO = 0.50, 3.0, 3.0, 0.90, 0.90


@dataclass
class Target:
    name: str
    measured: str
    goal: str
    ratio: float | None
    passed: bool | None          # None: not measured in this run


def machine() -> dict[str, str]:
    cpu = "unknown"
    mem = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 ** 2:.1f} GiB"
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cores (nproc)": str(cores), "CPU": cpu, "memory": mem,
            "OS": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        first = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
        out["wrk"] = first[0].split(" Copyright")[0] if first else "unknown"
    except OSError:
        out["wrk"] = "not installed"
    return out


def _find(res: BenchResult, model: str, server: str, endpoint: str, c: int,
          workers: int = 1) -> LoadPoint | None:
    return next((p for p in res.load if p.model == model and p.server == server
                 and p.endpoint == endpoint and p.result.concurrency == c
                 and p.workers == workers), None)


def ceiling(res: BenchResult, model: str, c: int) -> tuple[LoadPoint | None, LoadPoint | None]:
    """The best bare-app points at concurrency c over the thread settings: (most req/s, lowest
    p50) — the ceiling is the best the bare baseline can do here."""
    pts = [p for p in res.load if p.model == model and p.server == "ceiling"
           and p.result.concurrency == c]
    if not pts:
        return None, None
    return max(pts, key=lambda p: p.result.rps), min(pts, key=lambda p: p.result.p50_ms)


def targets(res: BenchResult) -> list[Target]:
    """The issue's three ratios, each from this run only."""
    out: list[Target] = []
    default = next((m.name for m in res.models if m.kind == "default"), None)
    heavy = next((m.name for m in res.models if m.kind == "heavy"), None)
    a = _find(res, default, "abstain", "v2-json", 32) if default else None
    c, _ = ceiling(res, default, 32) if default else (None, None)
    if a and c and c.result.rps:
        r = a.result.rps / c.result.rps
        out.append(Target("c=32, default model, v2 JSON: req/s vs HTTP ceiling, zero errors",
                          f"{a.result.rps:,.0f} / {c.result.rps:,.0f} req/s ({c.threads} thr), "
                          f"{a.result.errors} errors", f"≥ {THROUGHPUT_RATIO:.0%}, 0 errors", r,
                          r >= THROUGHPUT_RATIO and a.result.errors == 0))
        r = a.result.p99_ms / c.result.p99_ms if c.result.p99_ms else float("inf")
        out.append(Target("c=32, default model, v2 JSON: p99 latency vs HTTP ceiling's",
                          f"{a.result.p99_ms:.2f} / {c.result.p99_ms:.2f} ms",
                          f"≤ {P99_RATIO:g}×", r, r <= P99_RATIO))
    else:
        out.append(Target("c=32 throughput vs HTTP ceiling", "not measured", "", None, None))
    a = _find(res, default, "abstain", "v2-json", 1) if default else None
    _, c = ceiling(res, default, 1) if default else (None, None)
    if a and c and c.result.p50_ms:
        r = a.result.p50_ms / c.result.p50_ms
        out.append(Target("c=1, default model, v2 JSON: p50 latency vs HTTP ceiling",
                          f"{a.result.p50_ms:.3f} / {c.result.p50_ms:.3f} ms ({c.threads} thr)",
                          f"≤ {LATENCY_RATIO:g}×", r, r <= LATENCY_RATIO))
    else:
        out.append(Target("c=1 p50 latency vs HTTP ceiling", "not measured", "", None, None))
    rt = res.runtime.get(heavy or "", [])
    served = [p for p in res.load if p.model == heavy and p.server == "abstain"]
    if rt and served:
        best_rt = max(rt, key=lambda p: p.samples_per_s)
        best = max(served, key=lambda p: p.samples_per_s)
        r = best.samples_per_s / best_rt.samples_per_s
        out.append(Target("heavy model at saturation: served samples/s vs raw runtime best",
                          f"{best.samples_per_s:,.1f} ({best.endpoint}, c={best.result.concurrency}) "
                          f"/ {best_rt.samples_per_s:,.1f} (batch {best_rt.batch}) samples/s",
                          f"≥ {HEAVY_RATIO:.0%}", r, r >= HEAVY_RATIO))
    else:
        out.append(Target("heavy model vs raw runtime", "not measured", "", None, None))
    rec = _find(res, default, "abstain+record", "v2-json", 32) if default else None
    plain = _find(res, default, "abstain", "v2-json", 32) if default else None
    if rec and plain and plain.result.rps:
        r = rec.result.rps / plain.result.rps
        out.append(Target("c=32, v2 JSON: with the extra serve flags (recording) vs without",
                          f"{rec.result.rps:,.0f} / {plain.result.rps:,.0f} req/s, "
                          f"{rec.result.errors} errors", f"≥ {RECORD_RATIO:.0%}", r,
                          r >= RECORD_RATIO and rec.result.errors == 0))
    return out


def verdict(t: Target) -> str:
    return "not measured" if t.passed is None else ("PASS" if t.passed else "MISS")


def render_markdown(res: BenchResult, notes: str = "") -> str:
    cfg = res.config
    lines = ["# Benchmarks", "",
             "Generated by `python -m bench` (`make bench`, bench/harness.py); every number below "
             "comes from the one run described here. Re-run the command to refresh the page.", "",
             "## Command", "", "```", cfg.command or "python -m bench", "```", "",
             f"Run started {res.started}, took {res.seconds:.0f} s. Load average (1/5/15 min) "
             f"before: {res.load_before}; after: {res.load_after}.", "",
             "## Machine and versions", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine().items()]
    lines += [f"| {k} | {v} |" for k, v in versions().items()]
    lines += ["", "Setup: server and load generator share the machine; `wrk -t1` (one thread, "
              "`--latency`, a Lua script POSTs the body), one uvicorn worker (uvloop + httptools) "
              "for both servers unless stated; the bare app runs once per onnxruntime intra-op "
              f"thread setting ({', '.join('all' if t == 0 else str(t) for t in cfg.ceiling_threads)})"
              " and its best point is the ceiling; abstain runs `--intra-op-threads "
              f"{cfg.intra_op_threads}` (chose: {res.abstain_threads or 'n/a'})"
              f", device `{cfg.device}`, abstain `--max-batch-size {cfg.max_batch_size}`; "
              f"{cfg.duration_s:g} s per load point after a 1 s warm-up. One sample per request.",
              "", "## Targets", "", "| target | measured | goal | ratio | verdict |",
              "|---|---|---|---|---|"]
    for t in targets(res):
        ratio = "–" if t.ratio is None else f"{t.ratio:.2f}"
        lines.append(f"| {t.name} | {t.measured} | {t.goal} | {ratio} | {verdict(t)} |")
    if notes:
        lines += ["", notes.strip()]
    lines += ["", "## Models", "", "| model | kind | input shape | classes | provider |",
              "|---|---|---|---|---|"]
    for m in res.models:
        lines.append(f"| {m.name} | {m.kind} | {list(m.input_shape)} | {m.num_classes} | "
                     f"{m.provider} |")
    lines += ["", "## Runtime ceiling (raw onnxruntime, same threads and providers)", "",
              "| model | batch | calls | latency per call (ms, median) | samples/s |",
              "|---|---|---|---|---|"]
    for name, pts in res.runtime.items():
        for p in pts:
            lines.append(f"| {name} | {p.batch} | {p.calls} | {p.latency_ms:.3f} | "
                         f"{p.samples_per_s:,.1f} |")
    lines += ["", "## HTTP under load (wrk, one sample per request)", "",
              "`ceiling` is the bare ASGI app (bench/ceiling_app.py: orjson → numpy → one "
              "session run → orjson, no batching, no decision, no metrics). `abstain` is the full "
              "server: routing, validation, adaptive batching, the certified decision, Prometheus "
              "metrics and drift. Errors = non-2xx responses + socket errors. Mean batch = "
              "Δsum/Δcount of `abstain_batch_size` from `/metrics` over the point.", "",
              "| model | server | threads | workers | endpoint | concurrency | req/s | samples/s | "
              "p50 ms | p99 ms | errors | mean batch |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in res.load:
        r = p.result
        mb = "–" if p.mean_batch is None else f"{p.mean_batch:.2f}"
        lines.append(f"| {p.model} | {p.server} | {p.threads or 'auto'} | {p.workers} | "
                     f"{p.endpoint} | {r.concurrency} | {r.rps:,.0f} | {p.samples_per_s:,.1f} | "
                     f"{r.p50_ms:.3f} | {r.p99_ms:.3f} | {r.errors} | {mb} |")
    lines += _workers(res)
    if res.grpc_rows:
        lines += ["", "## gRPC (KServe v2 over gRPC, bench/grpc_load.py, same run)", "",
                  "The client is one `grpc.aio` process sending pre-serialised requests; its own "
                  "CPU use is the last column (near 100%: the client was the limit).", "",
                  "| endpoint | model | c | req/s | p50 ms | p99 ms | errors | client |",
                  "|---|---|---|---|---|---|---|---|", *res.grpc_rows]
    if res.overload:
        from bench.overload import render

        lines += ["", *render(res.overload, cfg.max_batch_size)]
    lines += ["", "## GPU", "",
              "GPU figures are still to be measured: this run had no GPU "
              f"(providers used: {', '.join(sorted({m.provider for m in res.models}))}). The CUDA "
              "path (CUDA execution provider with I/O binding, warmed-up batch-size buckets, "
              "TensorRT behind `ABSTAIN_TENSORRT=1`) is tested for its CPU fallback only.", ""]
    if cfg.plot:
        lines += ["## Plot", "", f"![latency against throughput]({cfg.plot.name})", ""]
    return "\n".join(lines)


def _workers(res: BenchResult) -> list[str]:
    default = next((m.name for m in res.models if m.kind == "default"), None)
    rows = []
    for w in sorted({p.workers for p in res.load if p.server == "abstain"} - {1}):
        for c in res.config.workers_concurrency:
            one, many = (_find(res, default, "abstain", "v2-json", c, k) for k in (1, w))
            if one and many and one.result.rps:
                rows.append(f"| {c} | {one.result.rps:,.0f} | {w} | {many.result.rps:,.0f} | "
                            f"{many.result.rps / one.result.rps:.2f} |")
    if not rows:
        return []
    return ["", "## Worker processes (default model, v2 JSON)", "",
            "| concurrency | 1 worker req/s | workers | req/s | ratio |", "|---|---|---|---|---|",
            *rows]


def plot(res: BenchResult, path: Path) -> None:
    """p50 latency against requests/s, one panel per model, one line per server × endpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.name for m in res.models]
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        series = sorted({(p.server, p.endpoint, p.threads, p.workers) for p in res.load
                         if p.model == name})
        for server, ep, threads, workers in series:
            pts = sorted((p for p in res.load if p.model == name and p.server == server
                          and p.endpoint == ep and p.threads == threads and p.workers == workers),
                         key=lambda p: p.result.concurrency)
            xs = [p.result.rps for p in pts]
            ys = [p.result.p50_ms for p in pts]
            tag = f" {threads} thr" if threads else (f" ×{workers}" if workers > 1 else "")
            ax.plot(xs, ys, marker="o", ls="--" if server == "ceiling" else "-",
                    label=f"{server}{tag} {ep}")
            for p, x, y in zip(pts, xs, ys, strict=True):
                ax.annotate(f"c={p.result.concurrency}", (x, y), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("requests/s (one sample each)")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write(res: BenchResult, notes: str = "") -> Path:
    """Write the plot (if configured) and the markdown atomically; returns the markdown path."""
    cfg = res.config
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    if cfg.plot:
        plot(res, cfg.plot)
    atomic_write_text(cfg.out, render_markdown(res, notes) + "\n")
    return cfg.out
