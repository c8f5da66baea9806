"""``python -m bench`` (``make bench``): measure abstain against the runtime and HTTP ceilings.

A development script of the checkout, not an ``abstain`` subcommand: it drives wrk, starts
servers and builds a ResNet with torch in a subprocess, none of which an installed package holds.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from serve.cli.argtypes import POSITIVE_INT, float_above
from serve.errors import AbstainError


def _int_list(least: int, what: str):
    """argparse type: comma-separated integers, each ≥ ``least``."""
    def parse(text: str) -> tuple[int, ...]:
        try:
            vals = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers, got {text!r}") from None
        if not vals or any(v < least for v in vals):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return vals
    return parse


_ints = _int_list(1, "positive integers")
_threads = _int_list(0, "integers ≥ 0 (0 = all cores)")


def _choices(valid: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        vals = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in vals if v not in valid]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; valid: {', '.join(valid)}")
        return vals
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description="Measure raw onnxruntime, a bare ASGI app and abstain "
        "serve (wrk, one thread) on this machine and write docs/benchmarks.md + .png.")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="markdown report")
    p.add_argument("--plot", type=Path, default=None, help="plot (default: OUT with .png)")
    p.add_argument("--duration", type=float_above(1.0, 10.0, inclusive=True), default=10.0,
                   help="seconds per load point (≥ 1)")
    p.add_argument("--runtime-seconds", type=float_above(0.0, 1.0), default=1.0,
                   help="seconds per batch size for the runtime ceiling")
    p.add_argument("--concurrency", type=_ints, default=(1, 8, 32, 128), help="comma-separated (default: 1,8,32,128)")
    p.add_argument("--endpoints", type=_choices(("v1", "v2-json", "v2-binary")),
                   default=("v1", "v2-json", "v2-binary"),
                   help="comma-separated (default: v1,v2-json,v2-binary)")
    p.add_argument("--models", type=_choices(("default", "heavy")), default=("default", "heavy"),
                   help="comma-separated; heavy = untrained ResNet-18 on 3×32×32, built with torch "
                   "(default: default,heavy)")
    p.add_argument("--default-model", type=Path, default=Path("models/mnist1d-maxsup/1"),
                   help="version directory of the default model")
    p.add_argument("--heavy-model", type=Path, default=None,
                   help="version directory of a ready heavy model (default: build one)")
    p.add_argument("--batch-sizes", type=_ints, default=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                   help="runtime ceiling batch sizes (default: 1,2,4,...,256)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="onnxruntime device")
    p.add_argument("--intra-op-threads", default="auto",
                   help="abstain serve --intra-op-threads (default: auto)")
    p.add_argument("--ceiling-threads", type=_threads, default=(1, 0),
                   help="intra-op threads of the bare app, each run, the best is the ceiling; "
                   "0 = all cores (default: 1,0)")
    p.add_argument("--workers", type=_ints, default=(1, 2),
                   help="abstain worker processes to compare, v2 JSON at c=32,128 (default: 1,2)")
    p.add_argument("--record-args", default="", metavar="FLAGS",
                   help="extra `abstain serve` flags for a second run at c=32 whose req/s ratio "
                   "is a target, e.g. '--state-dir /tmp/s --audit-rate 0.05' (default: none)")
    p.add_argument("--grpc", action="store_true", help="also the gRPC endpoint at c=1 and c=32")
    p.add_argument("--overload", action="store_true",
                   help="also the overload benchmark (1×, 2×, 4×, 16× the queue)")
    p.add_argument("--overload-duration", type=float_above(1.0, 20.0, inclusive=True),
                   default=20.0, help="seconds per overload point (default: 20)")
    p.add_argument("--max-batch-size", type=POSITIVE_INT, default=64, help="abstain serve --max-batch-size (default: 64)")
    p.add_argument("--notes", type=Path, default=None,
                   help="markdown file appended under the targets (comments on the run; default: none)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return _bench(build_parser().parse_args(argv))
    except AbstainError as err:
        print(f"python -m bench: error: {err}", file=sys.stderr)
        return 2


def _bench(args: argparse.Namespace) -> int:
    if args.duration < 1:
        raise AbstainError(f"--duration {args.duration} must be ≥ 1 second (wrk's resolution)")
    if args.runtime_seconds <= 0:
        raise AbstainError("--runtime-seconds must be > 0")
    if args.intra_op_threads != "auto" and not args.intra_op_threads.isdigit():
        raise AbstainError(f"--intra-op-threads {args.intra_op_threads!r}: use auto or a number ≥ 0")
    if args.notes is not None and not args.notes.is_file():
        raise AbstainError(f"--notes {args.notes}: no such file")
    if args.device == "cuda":
        from serve.server.runtime import providers_for

        providers_for("cuda")                    # refuses with the fix when CUDA is missing
    from bench import report
    from bench.harness import BenchConfig, run_bench

    cfg = BenchConfig(out=args.out, plot=args.plot or args.out.with_suffix(".png"),
                      duration_s=args.duration, runtime_s=args.runtime_seconds,
                      concurrency=args.concurrency, endpoints=args.endpoints, models=args.models,
                      default_model=args.default_model, heavy_model=args.heavy_model,
                      batch_sizes=args.batch_sizes, device=args.device,
                      intra_op_threads=args.intra_op_threads, max_batch_size=args.max_batch_size,
                      ceiling_threads=args.ceiling_threads, workers=args.workers,
                      record_args=args.record_args, grpc=args.grpc, overload=args.overload,
                      overload_duration_s=args.overload_duration,
                      command="python -m bench " + shlex.join(sys.argv[1:]))
    res = run_bench(cfg)
    notes = args.notes.read_text() if args.notes else ""
    out = report.write(res, notes)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"python -m bench → {out}")
    for col in ("target", "measured", "goal", "ratio", "verdict"):
        t.add_column(col)
    for tg in report.targets(res):
        t.add_row(tg.name, tg.measured, tg.goal, "–" if tg.ratio is None else f"{tg.ratio:.2f}",
                  report.verdict(tg))
    Console().print(t)
    return 0
