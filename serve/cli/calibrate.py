"""`abstain calibrate`: torch-free, logits through serve.server.runtime.

The model, its data or logits and the data roles (calibration never uses a ``train``/``test``
split) come from :mod:`serve.cli.model_inputs`, shared with ``abstain evaluate``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from serve.calibration.artifact import FILENAME, Calibration, save_calibration
from serve.calibration.probe import write_probe
from serve.cli.argtypes import NONNEGATIVE_INT, float_above, fraction
from serve.cli.calibrate_cascade import add_cascade_flags, cascade_main, is_cascade
from serve.cli.from_feedback import (
    add_feedback_args,
    from_feedback_main,
    refuse_feedback_only,
    track_given,
)
from serve.cli.model_inputs import (
    add_model_inputs,
    check_calibration_role,
    logits_and_labels,
    model_file,
)
from serve.errors import AbstainError
from serve.files import keep_backup

# The sign of the gain column: positive is an improvement on the incumbent, as the name says.
GAIN_MEANING = "AURC(MSP) − AURC(score), lower AURC is better: > 0 improves on MSP, < 0 is worse"


def _print_calibration(run, cal: Calibration, out: Path) -> None:
    from rich.table import Table

    from serve.cli.console import report_console

    con = report_console()
    if run.n_tune:
        t = Table(title=f"score candidates on the tuning split (n = {run.n_tune}, "
                        f"error rate {run.choice.error_rate:.4f}, T = "
                        f"{run.choice.fitted_temperature or run.choice.temperature:.4f})",
                  caption=f"AURC gain = {GAIN_MEANING}")
        for col in ("score", "AURC", "AURC gain vs MSP", "z", "E-AURC", "AUROC", ""):
            t.add_column(col, justify="right" if col not in ("score", "") else "left")
        for i, c in enumerate(run.choice.candidates):
            mark = "◀ chosen" if c.spec == run.choice.spec else ""
            evidence = ("—", "—") if i == 0 else (f"{c.delta_aurc:+.5f}", f"{c.z:.2f}")
            t.add_row(c.spec, f"{c.aurc:.5f}", *evidence, f"{c.e_aurc:.5f}", f"{c.auroc:.4f}",
                      mark, style="bold" if mark else None)
        con.print(t)
    con.print(f"[bold]choice:[/bold] {run.choice.reason}")
    cert = run.certificate
    d = Table(title=f"certification (n = {cert.n} samples, method {cert.method})")
    d.add_column("quantity")
    d.add_column("value", justify="right")
    s = run.settings
    rows = [("target risk r*", f"{s.target_risk:g}"), ("δ", f"{s.delta:g}"),
            ("threshold", "none (defer all)" if cal.threshold is None else f"{cal.threshold:.6g}"),
            ("temperature: score / probabilities", f"{cal.temperature:.4g} / "
                                                    f"{cal.probs_temperature:.4g}"),
            ("coverage (cert)", f"{cal.coverage:.4f}"), ("selective risk (cert)", f"{cal.risk:.4f}"),
            ("post-selection CP bound (indicative)", f"{cal.risk_upper_bound:.4f}"),
            ("accepted / errors", f"{cert.n_accepted} / {cert.n_errors}"),
            ("procedure", cert.procedure), ("certification samples", str(cert.n)),
            ("start", cert.start or "—"), ("detail", cert.detail)]
    for k, v in rows:
        d.add_row(k, v)
    con.print(d)
    if cal.threshold is not None and cert.method in ("ltt", "sgr"):
        con.print(f"[bold]certified:[/bold] selective risk ≤ {s.target_risk:g} with probability "
                  f"≥ {1 - s.delta:g} (the CP bound above was computed after choosing the "
                  "threshold on the same data: indicative only)")
    if cal.threshold is None:
        con.print("[bold red]WARNING: nothing could be certified; this calibration DEFERS EVERY "
                  f"PREDICTION.[/bold red] {cert.detail}")
    elif cert.method == "coverage" and cert.risk_upper_bound > s.target_risk:
        con.print(f"[bold yellow]note:[/bold yellow] at coverage {s.target_coverage:g} the risk bound "
                  f"{cert.risk_upper_bound:.4f} exceeds the target {s.target_risk:g}")
    con.print(f"wrote {out / FILENAME}, {out / 'risk_coverage.png'}, {out / 'reliability.png'}")


def calibrate_main(args: argparse.Namespace) -> int:
    if is_cascade(args.model):                               # a cascade's version directory
        if getattr(args, "from_feedback", None):
            raise AbstainError(f"--from-feedback re-certifies one model's threshold; {args.model} "
                               "is a cascade: calibrate it with --data SPEC:calibration")
        refuse_feedback_only(args)
        return cascade_main(args)
    if args.max_defer is not None or args.max_stage_share or args.costs is not None:
        raise AbstainError(f"--max-defer, --max-stage-share and --costs apply to a cascade (a "
                           f"directory with cascade.json); {args.model} is a model")
    if getattr(args, "from_feedback", None):                # the feedback loop (serve/feedback)
        return from_feedback_main(args)
    refuse_feedback_only(args)
    from serve.calibration.pipeline import CalibrationSettings, calibrate_arrays, to_calibration
    from serve.calibration.plots import reliability_plot, risk_coverage_plot

    model_path = model_file(args.model)
    settings = CalibrationSettings(target_risk=args.target_risk, delta=args.delta,
                                   method=args.method, score=args.score,
                                   target_coverage=args.target_coverage,
                                   tune_fraction=args.tune_fraction, seed=args.seed,
                                   temperature=args.temperature).validate()
    z, y, info, sha = logits_and_labels(args, model_path, check_calibration_role)
    data = {"spec": info["spec"], "split": info["split"], "fingerprint": info["fingerprint"],
            "n": info["n"]}
    if "seed" in info:
        data["data_seed"] = info["seed"]
    run = calibrate_arrays(z, y, settings)
    cal = to_calibration(run, sha, data, allow_defer_all=args.allow_defer_all)
    out = model_path.parent
    risk_coverage_plot(run, out / "risk_coverage.png")
    reliability_plot(run, out / "reliability.png")
    backup = keep_backup(out / FILENAME)
    if "probe" in info:            # written last but one: a failed plot leaves no orphan probe
        px, pz, provider, precision = info["probe"]
        cal = dataclasses.replace(cal, provider=provider, precision=precision,
                                  probe_sha256=write_probe(out, px, pz))
    save_calibration(cal, out)
    _print_calibration(run, cal, out)
    if backup is not None:
        from serve.cli.console import report_console

        report_console().print(f"kept the previous calibration as {backup}")
    return 0


def register_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="choose the score and certify a rejection threshold",
                       description="Split calibration data into tuning and certification parts, "
                       "choose the confidence score and temperature, certify a threshold with "
                       "P(selective risk ≤ target) ≥ 1 − δ, and write calibration.json + plots "
                       "beside the model. An existing calibration.json is kept as "
                       "calibration.json.bak. Given a cascade's directory (with cascade.json), "
                       "certify its per-stage thresholds as one system and write "
                       "cascade_calibration.json instead (docs/cascade.md).")
    add_model_inputs(p, "calibration", "calibration")
    p.add_argument("--target-risk", type=fraction(0.02), default=0.02,
                   help="r*: maximal selective risk")
    p.add_argument("--delta", type=fraction(0.05), default=0.05,
                   help="δ: allowed failure probability")
    p.add_argument("--method", choices=("ltt", "sgr"), default="ltt",
                   help="ltt = Learn-then-Test, sgr = selection with guaranteed risk")
    p.add_argument("--score", default="auto",
                   help="auto (MSP unless a pnorm:0..10 has a significantly lower tuning AURC), "
                   "msp, pnorm:2, ... (default: auto)")
    p.add_argument("--temperature", type=float_above(0.0, 1.5), default=None,
                   help="fix the temperature instead of fitting it; with a fixed --score there is "
                   "nothing to tune, so every sample certifies (default: fitted on the tuning "
                   "split)")
    p.add_argument("--target-coverage", type=fraction(0.9, closed_right=True), default=None,
                   help="pick the threshold for this coverage and report its risk bound instead "
                   "(default: off, certify --target-risk)")
    p.add_argument("--tune-fraction", type=fraction(0.3), default=0.3,
                   help="share of the calibration data used to choose the score")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0,
                   help="seed of the tuning/certification split")
    p.add_argument("--allow-defer-all", action="store_true",
                   help="if nothing can be certified, write a calibration that defers everything")
    add_feedback_args(p)
    add_cascade_flags(p)
    track_given(p)
    p.set_defaults(handler=calibrate_main)
