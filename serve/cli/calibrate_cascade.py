"""`abstain calibrate CASCADE_DIR`: certify a cascade's per-stage thresholds as one system.

Runs every stage's model (torch-free, serve.server.runtime) on the calibration data, checks each
against the sha256 that ``cascade.json`` pins, and hands the logits to
serve.calibration.cascade_pipeline. Writes ``cascade_calibration.json`` (the previous one kept as
``.bak``) only when a threshold vector is certified within the budgets.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from serve.calibration.cascade_artifact import (
    CALIBRATION_FILE,
    SPEC_FILE,
    CascadeCalibration,
    read_spec,
    save_cascade_calibration,
    stage_dir,
)
from serve.cli.argtypes import fraction
from serve.cli.model_inputs import check_calibration_role
from serve.errors import AbstainError
from serve.files import keep_backup

if TYPE_CHECKING:
    from serve.calibration.cascade_pipeline import CascadeRun


def is_cascade(path: str) -> bool:
    return (Path(path) / SPEC_FILE).is_file()


def stage_share(text: str) -> tuple[int, float]:
    """``K=SHARE`` for --max-stage-share."""
    k, sep, v = text.partition("=")
    try:
        stage, share = int(k), float(v)
    except ValueError:
        stage, share = -1, -1.0
    if not sep or stage < 2 or not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"expected STAGE=SHARE with STAGE ≥ 2 and SHARE in "
                                         f"[0, 1], e.g. 2=0.3; got {text!r}")
    return stage, share


def costs(text: str) -> list[float]:
    """``C1,C2[,CH]``: the cost of one call of each stage, then of one sample a person reviews."""
    try:
        out = [float(v) for v in text.split(",")]
    except ValueError:
        out = []
    if len(out) < 2 or any(not math.isfinite(c) or c < 0 for c in out):
        raise argparse.ArgumentTypeError(f"expected non-negative numbers C1,C2[,C3][,HUMAN] "
                                         f"(one per stage, then a person), e.g. 1,10,100; got {text!r}")
    return out


def _stage_logits(cascade: Path, device: str, spec: str | None, batch_size: int):
    from serve.data import load_split
    from serve.server.runtime import OnnxModel

    stages = read_spec(cascade)
    models = []
    for k, s in enumerate(stages, 1):
        path = stage_dir(cascade, s) / "model.onnx"
        if not path.is_file():
            raise AbstainError(f"stage {k} ({s.label}) of {cascade}: no model at {path}")
        m = OnnxModel(path, device=device)  # type: ignore[arg-type]
        if m.sha256 != s.model_sha256:
            raise AbstainError(f"stage {k} ({s.label}): {path} has sha256 {m.sha256[:12]}…, but "
                               f"{cascade / SPEC_FILE} pins {s.model_sha256[:12]}…: the model "
                               "changed; pin the new hash in cascade.json, then calibrate again")
        models.append(m)
    if spec is None:
        own = models[-1].metadata.get("data_spec")
        if not isinstance(own, str) or not own:
            raise AbstainError("the last stage has no 'data_spec' metadata: pass --data "
                               "SPEC:calibration")
        spec = f"{own}:calibration"
    x, y, info = load_split(check_calibration_role(spec))
    shapes = {m.input_shape for m in models}
    if len(shapes) != 1 or x.shape[1:] not in shapes:
        raise AbstainError(f"the stages take inputs {sorted(shapes)} and the data has "
                           f"{x.shape[1:]}: every stage must read the same inputs")
    logits = [m.logits(x, batch_size=batch_size, progress=sys.stderr.isatty()) for m in models]
    return stages, logits, y, info


def cascade_main(args: argparse.Namespace) -> int:
    if args.logits or args.from_feedback or args.target_coverage is not None:
        raise AbstainError("a cascade is calibrated from --data only (not --logits, "
                           "--from-feedback or --target-coverage)")
    if args.allow_defer_all:
        raise AbstainError("--allow-defer-all does not apply to a cascade: one that certifies "
                           "nothing is not written (its stages keep serving on their own)")
    if args.method != "ltt":
        raise AbstainError("a cascade is certified with Learn-then-Test only (--method ltt)")
    from serve.calibration.cascade_pipeline import calibrate_cascade_arrays, to_cascade_calibration
    from serve.calibration.cascade_plan import Budgets

    cascade = Path(args.model)
    budgets = Budgets(args.max_defer, dict(args.max_stage_share or ()))
    stages, logits, y, info = _stage_logits(cascade, args.device, args.data, args.batch_size)
    if args.costs is not None and len(args.costs) not in (len(stages), len(stages) + 1):
        raise AbstainError(f"--costs needs {len(stages)} or {len(stages) + 1} numbers (one per "
                           f"stage, then a person); got {len(args.costs)}")
    budgets.validate(len(stages))
    run = calibrate_cascade_arrays(stages, logits, y, args.target_risk, args.delta, budgets,
                                   args.score, args.tune_fraction, args.seed, args.temperature)
    data = {k: info[k] for k in ("spec", "split", "fingerprint", "n")}
    if "seed" in info:
        data["data_seed"] = info["seed"]
    cal = to_cascade_calibration(run, data)
    backup = keep_backup(cascade / CALIBRATION_FILE)
    save_cascade_calibration(cal, cascade)
    print_cascade(run, cal, cascade, args.costs)
    if backup is not None:
        from serve.cli.console import report_console

        report_console().print(f"kept the previous calibration as {backup}")
    return 0


def print_cascade(run: CascadeRun, cal: CascadeCalibration, out: Path,
                  cost: list[float] | None) -> None:
    from rich.table import Table

    from serve.cli.console import report_console

    con = report_console()
    c = run.certificate
    t = Table(title=f"cascade on {c.n} certification samples (tuning {run.n_tune}); certified "
                    f"system risk ≤ {c.target_risk:g} with probability ≥ {1 - c.delta:g}")
    for col in ("stage", "model", "score (T)", "threshold", "reaches", "accepted share",
                "risk of its acceptances"):
        t.add_column(col, justify="left" if col in ("model", "score (T)") else "right")
    for row, rule in zip(c.stage_rows(), cal.stages, strict=True):
        t.add_row(str(row["stage"]), f"{rule.model}/{rule.version}",
                  f"{rule.score} ({rule.temperature:.3f})",
                  "accepts none" if rule.threshold is None else f"{rule.threshold:.6g}",
                  f"{row['reach_share']:.4f} (≤ {row['reach_upper']:.4f})",
                  f"{row['accepted_share']:.4f}", f"{row['risk']:.4f} ({row['errors']}/"
                  f"{row['accepted']})")
    t.add_row("person", "—", "—", "—", f"{c.human_share:.4f} (≤ {c.human_upper:.4f})", "—", "—")
    con.print(t)
    calls = [r["reach_share"] for r in c.stage_rows()]
    unit = cost or [1.0] * len(calls) + [0.0]
    human_cost = unit[len(calls)] if len(unit) > len(calls) else 0.0
    expected = sum(u * r for u, r in zip(unit, calls, strict=False)) + human_cost * c.human_share
    con.print(f"system: accepted {c.n_accepted} of {c.n} ({1 - c.human_share:.4f}), risk "
              f"{c.risk:.4f} ({c.n_errors} errors; post-selection CP bound "
              f"{c.risk_upper_bound:.4f}, indicative); people see {c.human_share:.4f} (upper "
              f"{1 - c.delta:g} bound {c.human_upper:.4f})")
    con.print(f"expected cost per sample: {expected:.4g} "
              + (f"(--costs {','.join(f'{u:g}' for u in unit)})" if cost else
                 "(model calls per sample: " + " + ".join(f"{r:.3f}" for r in calls)
                 + "; pass --costs C1,C2,HUMAN to weigh them)"))
    con.print(f"procedure: {c.procedure}; {c.start}; {c.detail}")
    con.print(f"wrote {out / CALIBRATION_FILE}")


def add_cascade_flags(p: argparse.ArgumentParser) -> None:
    """The flags only a cascade takes (calibrate refuses them for a model directory)."""
    p.add_argument("--max-defer", type=fraction(0.05, closed_right=True), default=None,
                   metavar="SHARE",
                   help="cascade only: reviewer budget, at most this share of samples goes to "
                   "people (checked with a (1 − δ) upper bound; default: none)")
    p.add_argument("--max-stage-share", type=stage_share, action="append", metavar="K=SHARE",
                   help="cascade only: compute budget, at most SHARE of samples reach stage K, "
                   "e.g. 2=0.3; repeatable (default: none)")
    p.add_argument("--costs", type=costs, default=None, metavar="C1,C2[,HUMAN]",
                   help="cascade only: cost of one call per stage, then of one sample a person "
                   "reviews, for the expected-cost line (default: model calls per sample)")
