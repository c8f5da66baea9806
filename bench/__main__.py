"""``python -m bench``: measure abstain against the runtime and HTTP ceilings (issues 8, 14, 16).

A development script, not part of the installed ``abstain`` CLI: it drives wrk, starts servers
and builds a ResNet with torch in a subprocess, so it runs from a source checkout
(``make bench ARGS="--duration 15"``). Bad flags exit 2 with one line.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from serve.errors import AbstainError


def ints(text: str, minimum: int = 1) -> tuple[int, ...]:
    """Comma-separated integers ≥ ``minimum`` (argparse type)."""
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < minimum for v in vals):
        raise argparse.ArgumentTypeError(f"expected integers ≥ {minimum}, got {text!r}")
    return vals


def _choices(valid: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        vals = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in vals if v not in valid]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; valid: {', '.join(valid)}")
        return vals
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description="Measure raw onnxruntime, a bare ASGI app and abstain "
        "serve (wrk, one thread) on this machine and write docs/benchmarks.md + .png.")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="markdown report")
    p.add_argument("--plot", type=Path, default=None, help="plot (default: OUT with .png)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load point (≥ 1)")
    p.add_argument("--runtime-seconds", type=float, default=1.0,
                   help="seconds per batch size for the runtime ceiling")
    p.add_argument("--concurrency", type=ints, default=(1, 8, 32, 128), help="e.g. 1,8,32,128")
    p.add_argument("--endpoints", type=_choices(("v1", "v2-json", "v2-binary")),
                   default=("v1", "v2-json", "v2-binary"), help="v1,v2-json,v2-binary")
    p.add_argument("--models", type=_choices(("default", "heavy")), default=("default", "heavy"),
                   help="default,heavy (heavy = untrained ResNet-18 on 3×32×32, built with torch)")
    p.add_argument("--default-model", type=Path, default=Path("models/mnist1d-maxsup/1"),
                   help="version directory of the default model")
    p.add_argument("--heavy-model", type=Path, default=None,
                   help="version directory of a ready heavy model (default: build one)")
    p.add_argument("--batch-sizes", type=ints, default=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                   help="runtime ceiling batch sizes")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--ceiling-threads", type=lambda t: ints(t, 0), default=(1, 0),
                   help="intra-op thread settings for both ceilings, best counts (0 = all cores)")
    p.add_argument("--intra-op-threads", default="auto",
                   help="abstain serve --intra-op-threads (auto measures 1 vs all at warm-up)")
    p.add_argument("--max-batch-size", type=int, default=64, help="abstain serve --max-batch-size")
    p.add_argument("--workers", type=lambda t: ints(t, 0), default=(1, 2),
                   help="uvicorn worker counts for the scaling table (0 skips it)")
    p.add_argument("--scaling-concurrency", type=ints, default=(32, 128))
    p.add_argument("--record-args", default="",
                   help='extra `abstain serve` args for a second run compared at c=32, e.g. '
                   '"--state-dir DIR --audit-rate 0.05"')
    p.add_argument("--overload", action="store_true",
                   help="also run the overload benchmark (bench.overload) into the report")
    p.add_argument("--overload-duration", type=float, default=20.0, help="seconds per phase")
    p.add_argument("--notes", type=Path, default=None,
                   help="markdown file appended under the targets (comments on the run)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        return _run(args, argv)
    except AbstainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.duration < 1 or args.overload_duration < 1:
        raise AbstainError(f"--duration {args.duration} must be ≥ 1 second (wrk's resolution)")
    if args.runtime_seconds <= 0:
        raise AbstainError("--runtime-seconds must be > 0")
    if args.max_batch_size < 1:
        raise AbstainError("--max-batch-size must be ≥ 1")
    if args.intra_op_threads != "auto" and not args.intra_op_threads.isdigit():
        raise AbstainError(f"--intra-op-threads {args.intra_op_threads!r}: use auto, 0 or a number")
    if args.notes is not None and not args.notes.is_file():
        raise AbstainError(f"--notes {args.notes}: no such file")
    if args.device == "cuda":
        from serve.runtime import providers_for

        providers_for("cuda")                    # refuses with the fix when CUDA is missing
    from bench import report
    from bench.harness import BenchConfig, run_bench

    cfg = BenchConfig(out=args.out, plot=args.plot or args.out.with_suffix(".png"),
                      duration_s=args.duration, runtime_s=args.runtime_seconds,
                      concurrency=args.concurrency, endpoints=args.endpoints, models=args.models,
                      default_model=args.default_model, heavy_model=args.heavy_model,
                      batch_sizes=args.batch_sizes, device=args.device,
                      ceiling_threads=args.ceiling_threads, abstain_threads=args.intra_op_threads,
                      max_batch_size=args.max_batch_size,
                      workers=tuple(w for w in args.workers if w > 0),
                      scaling_concurrency=args.scaling_concurrency,
                      record_args=tuple(shlex.split(args.record_args)),
                      command="python -m bench " + shlex.join(argv))
    res = run_bench(cfg)
    if args.overload:
        from bench.overload import OverloadConfig, run_overload

        res.overload = run_overload(OverloadConfig(
            default_model=args.default_model, duration_s=args.overload_duration,
            device=args.device, intra_op_threads=args.intra_op_threads,
            max_batch_size=args.max_batch_size))
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


if __name__ == "__main__":
    sys.exit(main())
