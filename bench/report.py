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
          phase: str = "main") -> LoadPoint | None:
    return next((p for p in res.load if p.model == model and p.server == server
                 and p.endpoint == endpoint and p.result.concurrency == c
                 and p.phase == phase), None)


def ceiling(res: BenchResult, model: str, c: int) -> LoadPoint | None:
    """The HTTP ceiling at concurrency ``c``: the thread setting with the most req/s."""
    pts = [p for p in res.load if p.model == model and p.server == "ceiling"
           and p.result.concurrency == c]
    return max(pts, key=lambda p: p.result.rps, default=None)


def _missing(name: str) -> Target:
    return Target(name, "not measured", "", None, None)


def targets(res: BenchResult) -> list[Target]:
    """The issue's ratios, each from this run only; the ceiling is the best thread setting."""
    out: list[Target] = []
    default = next((m.name for m in res.models if m.kind == "default"), None)
    heavy = next((m.name for m in res.models if m.kind == "heavy"), None)
    a = _find(res, default, "abstain", "v2-json", 32) if default else None
    c = ceiling(res, default, 32) if default else None
    if a and c and c.result.rps:
        r = a.result.rps / c.result.rps
        out.append(Target("c=32, default model, v2 JSON: req/s vs HTTP ceiling, zero errors",
                          f"{a.result.rps:,.0f} / {c.result.rps:,.0f} req/s (ceiling threads="
                          f"{c.threads}), {a.result.errors} errors",
                          f"≥ {THROUGHPUT_RATIO:.2f}, 0 errors", r,
                          r >= THROUGHPUT_RATIO and a.result.errors == 0))
    else:
        out.append(_missing("c=32 throughput vs HTTP ceiling"))
    a = _find(res, default, "abstain", "v2-json", 1) if default else None
    c = ceiling(res, default, 1) if default else None
    if a and c and c.result.p50_ms:
        r = a.result.p50_ms / c.result.p50_ms
        out.append(Target("c=1, default model, v2 JSON: p50 latency vs HTTP ceiling",
                          f"{a.result.p50_ms:.3f} / {c.result.p50_ms:.3f} ms",
                          f"≤ {LATENCY_RATIO:g}×", r, r <= LATENCY_RATIO))
    else:
        out.append(_missing("c=1 p50 latency vs HTTP ceiling"))
    a = _find(res, default, "abstain", "v2-json", 32) if default else None
    c = ceiling(res, default, 32) if default else None
    if a and c and c.result.p99_ms:
        r = a.result.p99_ms / c.result.p99_ms
        out.append(Target("c=32, default model, v2 JSON: p99 latency vs HTTP ceiling",
                          f"{a.result.p99_ms:.3f} / {c.result.p99_ms:.3f} ms",
                          f"≤ {P99_RATIO:g}×", r, r <= P99_RATIO))
    else:
        out.append(_missing("c=32 p99 latency vs HTTP ceiling"))
    rt = res.runtime.get(heavy or "", [])
    served = [p for p in res.load if p.model == heavy and p.server == "abstain"
              and p.phase == "main"]
    if rt and served:
        best_rt = max(rt, key=lambda p: p.samples_per_s)
        best = max(served, key=lambda p: p.samples_per_s)
        r = best.samples_per_s / best_rt.samples_per_s
        out.append(Target("heavy model at saturation: served samples/s vs raw runtime best",
                          f"{best.samples_per_s:,.1f} ({best.endpoint}, c={best.result.concurrency}) "
                          f"/ {best_rt.samples_per_s:,.1f} (batch {best_rt.batch}, threads "
                          f"{best_rt.threads or 'all'}) samples/s",
                          f"≥ {HEAVY_RATIO:.2f}", r, r >= HEAVY_RATIO))
    else:
        out.append(_missing("heavy model vs raw runtime"))
    plain = next((p for p in res.load if p.phase == "plain"), None)
    rec = next((p for p in res.load if p.phase == "record"), None)
    if plain and rec and plain.result.rps:
        r = rec.result.rps / plain.result.rps
        out.append(Target(f"recording on vs off: v2 JSON c={rec.result.concurrency} req/s",
                          f"{rec.result.rps:,.0f} / {plain.result.rps:,.0f} req/s, "
                          f"{rec.result.errors} errors", f"≥ {RECORD_RATIO:.2f}", r,
                          r >= RECORD_RATIO and rec.result.errors == 0))
    else:
        out.append(_missing("recording on vs off (--record-args)"))
    return out


def verdict(t: Target) -> str:
    return "not measured" if t.passed is None else ("PASS" if t.passed else "MISS")


def render_markdown(res: BenchResult, notes: str = "") -> str:
    cfg = res.config
    lines = ["# Benchmarks", "",
             "Generated by `python -m bench` (bench/harness.py, `make bench ARGS=...`); every "
             "number below comes from the one run described here. Re-run the command to refresh "
             "the page.", "",
             "## Command", "", "```", cfg.command or "python -m bench", "```", "",
             f"Run started {res.started}, took {res.seconds:.0f} s. Load average (1/5/15 min) "
             f"before: {res.load_before}; after: {res.load_after}.", "",
             "## Machine and versions", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine().items()]
    lines += [f"| {k} | {v} |" for k, v in versions().items()]
    lines += ["", "Setup: server and load generator share the machine; `wrk -t1` (one thread, "
              "`--latency`, a Lua script POSTs the body), one uvicorn worker (uvloop + httptools) "
              "for both servers unless stated; the ceilings run once per onnxruntime intra-op "
              f"thread setting ({', '.join(str(t or 'all') for t in cfg.ceiling_threads)}; all = "
              "onnxruntime's default) and the best counts; abstain runs with "
              f"`--intra-op-threads {cfg.abstain_threads}` (its start-up log: "
              f"{res.abstain_threads_log or 'not logged'}); device `{cfg.device}`, abstain "
              f"`--max-batch-size {cfg.max_batch_size}`; "
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
    lines += ["", "## Runtime ceiling (raw onnxruntime, same providers, each thread setting)", "",
              "| model | threads | batch | calls | latency per call (ms, median) | samples/s |",
              "|---|---|---|---|---|---|"]
    for name, pts in res.runtime.items():
        for p in pts:
            lines.append(f"| {name} | {p.threads or 'all'} | {p.batch} | {p.calls} | "
                         f"{p.latency_ms:.3f} | {p.samples_per_s:,.1f} |")
    lines += ["", "## HTTP ceiling (best thread setting per concurrency)", "",
              "| model | concurrency | best threads | req/s | p50 ms | p99 ms | errors |",
              "|---|---|---|---|---|---|---|"]
    for m in res.models:
        for c in cfg.concurrency:
            p = ceiling(res, m.name, c)
            if p:
                r = p.result
                lines.append(f"| {m.name} | {c} | {p.threads} | {r.rps:,.0f} | {r.p50_ms:.3f} | "
                             f"{r.p99_ms:.3f} | {r.errors} |")
    lines += ["", "## HTTP under load (wrk, one sample per request)", "",
              "`ceiling` is the bare ASGI app (bench/ceiling_app.py: orjson → numpy → one "
              "session run → orjson, no batching, no decision, no metrics). `abstain` is the full "
              "server: routing, validation, adaptive batching, the certified decision, Prometheus "
              "metrics and drift. Errors = non-2xx responses + socket errors. Mean batch = "
              "Δsum/Δcount of `abstain_batch_size` from `/metrics` over the point.", "",
              "| model | server | threads | endpoint | concurrency | req/s | samples/s | p50 ms | "
              "p99 ms | errors | mean batch |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in (p for p in res.load if p.phase == "main"):
        r = p.result
        mb = "–" if p.mean_batch is None else f"{p.mean_batch:.2f}"
        lines.append(f"| {p.model} | {p.server} | {p.threads} | {p.endpoint} | {r.concurrency} | "
                     f"{r.rps:,.0f} | {p.samples_per_s:,.1f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | "
                     f"{r.errors} | {mb} |")
    lines += _scaling(res) + _recording(res)
    if res.overload is not None:
        from bench.overload import render_section

        lines += ["", render_section(res.overload)]  # type: ignore[arg-type]
    lines += ["", "## GPU", "",
              "GPU figures are still to be measured: this run had no GPU "
              f"(providers used: {', '.join(sorted({m.provider for m in res.models}))}). The CUDA "
              "path (CUDA execution provider with I/O binding, warmed-up batch-size buckets, "
              "TensorRT behind `ABSTAIN_TENSORRT=1`) is measured by `make gpu-check` "
              "(bench/gpu_check.py) into docs/benchmarks-gpu.md on a machine with CUDA.", ""]
    if cfg.plot:
        lines += ["## Plot", "", f"![latency against throughput]({cfg.plot.name})", ""]
    return "\n".join(lines)


def _scaling(res: BenchResult) -> list[str]:
    pts = [p for p in res.load if p.phase == "scaling"]
    if not pts:
        return []
    lines = ["", "## Scaling with uvicorn workers (default model, v2 JSON)", "",
             "Each worker is a process with its own sessions and batcher; the ratio is req/s "
             "against the same concurrency with one worker.", "",
             "| workers | concurrency | req/s | p50 ms | p99 ms | errors | ratio vs 1 worker |",
             "|---|---|---|---|---|---|---|"]
    for p in sorted(pts, key=lambda p: (p.result.concurrency, p.workers)):
        one = next((q for q in pts if q.workers == 1
                    and q.result.concurrency == p.result.concurrency), None)
        ratio = f"{p.result.rps / one.result.rps:.2f}" if one and one.result.rps else "–"
        r = p.result
        lines.append(f"| {p.workers} | {r.concurrency} | {r.rps:,.0f} | {r.p50_ms:.3f} | "
                     f"{r.p99_ms:.3f} | {r.errors} | {ratio} |")
    return lines


def _recording(res: BenchResult) -> list[str]:
    pts = [p for p in res.load if p.phase in ("plain", "record")]
    if not pts:
        return []
    args = " ".join(res.config.record_args)
    lines = ["", "## Recording on vs off (default model, v2 JSON)", "",
             f"`record` = `abstain serve` with the extra arguments `{args}`; `plain` = without.",
             "", "| run | concurrency | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for p in pts:
        r = p.result
        lines.append(f"| {p.phase} | {r.concurrency} | {r.rps:,.0f} | {r.p50_ms:.3f} | "
                     f"{r.p99_ms:.3f} | {r.errors} |")
    return lines


def plot(res: BenchResult, path: Path) -> None:
    """p50 latency against requests/s, one panel per model, one line per server × endpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.name for m in res.models]
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        main = [p for p in res.load if p.model == name and p.phase == "main"]
        series = sorted({(p.server, p.endpoint, p.threads) for p in main})
        for server, ep, threads in series:
            pts = sorted((p for p in main if p.server == server and p.endpoint == ep
                          and p.threads == threads), key=lambda p: p.result.concurrency)
            xs = [p.result.rps for p in pts]
            ys = [p.result.p50_ms for p in pts]
            ax.plot(xs, ys, marker="o", ls="--" if server == "ceiling" else "-",
                    label=f"{server} {ep} threads={threads}")
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
