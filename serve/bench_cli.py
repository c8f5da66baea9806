"""``abstain bench``: measure abstain against the runtime and HTTP ceilings (issue 8).

The harness lives in the checkout's ``bench/`` folder (it drives wrk, starts servers and builds a
ResNet with torch in a subprocess), so this command works from a source checkout only; it never
imports torch itself.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from serve.argtypes import NONNEGATIVE_INT, POSITIVE_INT, float_above
from serve.errors import AbstainError

ROOT = Path(__file__).resolve().parents[1]


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _choices(valid: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        vals = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in vals if v not in valid]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; valid: {', '.join(valid)}")
        return vals
    return parse


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark: runtime ceiling, HTTP ceiling, abstain under wrk",
                       description="Measure raw onnxruntime, a bare ASGI app and abstain serve (wrk, "
                       "one thread) on this machine and write docs/benchmarks.md + .png.")
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
    p.add_argument("--intra-op-threads", type=NONNEGATIVE_INT, default=0,
                   help="onnxruntime threads, same for all three (0 = the server's default)")
    p.add_argument("--max-batch-size", type=POSITIVE_INT, default=64, help="abstain serve --max-batch-size (default: 64)")
    p.add_argument("--notes", type=Path, default=None,
                   help="markdown file appended under the targets (comments on the run; default: none)")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    if not (ROOT / "bench" / "harness.py").is_file():
        raise AbstainError(f"abstain bench runs from a source checkout (no bench/ beside {ROOT / 'serve'})")
    if args.duration < 1:
        raise AbstainError(f"--duration {args.duration} must be ≥ 1 second (wrk's resolution)")
    if args.runtime_seconds <= 0:
        raise AbstainError("--runtime-seconds must be > 0")
    if args.intra_op_threads < 0 or args.max_batch_size < 1:
        raise AbstainError("--intra-op-threads must be ≥ 0 and --max-batch-size ≥ 1")
    if args.notes is not None and not args.notes.is_file():
        raise AbstainError(f"--notes {args.notes}: no such file")
    if args.device == "cuda":
        from serve.runtime import providers_for

        providers_for("cuda")                    # refuses with the fix when CUDA is missing
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench import report
    from bench.harness import BenchConfig, run_bench

    cfg = BenchConfig(out=args.out, plot=args.plot or args.out.with_suffix(".png"),
                      duration_s=args.duration, runtime_s=args.runtime_seconds,
                      concurrency=args.concurrency, endpoints=args.endpoints, models=args.models,
                      default_model=args.default_model, heavy_model=args.heavy_model,
                      batch_sizes=args.batch_sizes, device=args.device,
                      intra_op_threads=args.intra_op_threads, max_batch_size=args.max_batch_size,
                      command="abstain " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"]
                      else "abstain bench")
    res = run_bench(cfg)
    notes = args.notes.read_text() if args.notes else ""
    out = report.write(res, notes)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"abstain bench → {out}")
    for col in ("target", "measured", "goal", "ratio", "verdict"):
        t.add_column(col)
    for tg in report.targets(res):
        t.add_row(tg.name, tg.measured, tg.goal, "–" if tg.ratio is None else f"{tg.ratio:.2f}",
                  report.verdict(tg))
    Console().print(t)
    return 0


def _needs_checkout() -> AbstainError | None:
    """Why `bench` cannot run here: it drives the checkout's bench/ harness (``None`` when present)."""
    if (ROOT / "bench" / "harness.py").is_file():
        return None
    return AbstainError("needs a source checkout: abstain bench drives the checkout's bench/ "
                        "harness (git clone; pip install -e '.[cpu,train]' for the heavy model; "
                        "wrk on PATH), which an installed package does not hold")


register_bench.unavailable = _needs_checkout  # type: ignore[attr-defined]
