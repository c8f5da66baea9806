"""`abstain calibrate` and `abstain evaluate`: torch-free, logits through serve.server.runtime.

Data roles never mix: calibration refuses a dataset's ``train``/``test`` split (or a whole
built-in dataset, which contains them); evaluation refuses the split the model was calibrated on.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from serve.calibration.artifact import FILENAME, Calibration, save_calibration
from serve.calibration.probe import N_PROBE, write_probe
from serve.cli.argtypes import NONNEGATIVE_INT, POSITIVE_INT, float_above, fraction
from serve.errors import AbstainError
from serve.files import keep_backup

log = logging.getLogger(__name__)
MODEL_FILE = "model.onnx"
# Dataset kinds whose spec without a split suffix means "everything", training data included.
_BUILTIN_KINDS = {"mnist1d", "digits", "cifar10", "cifar100"}


class DataRoleError(AbstainError):
    """Data used in a role it must not play (e.g. calibrating on the test split)."""


def _model_path(arg: str) -> Path:
    p = Path(arg)
    path = p / MODEL_FILE if p.is_dir() else p
    if not path.is_file():
        raise AbstainError(f"no model at {path}: pass a model directory holding {MODEL_FILE} "
                           "(e.g. models/mnist1d-maxsup/1), as written by `abstain export`")
    return path


def _load_logits_npz(path: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from serve.server.runtime import sha256_file

    p = Path(path)
    if not p.is_file():
        raise AbstainError(f"--logits file not found: {p} (an .npz with arrays 'logits' and 'labels')")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = {"logits", "labels"} - set(f.files)
            if missing:
                raise AbstainError(f"{p} lacks array(s) {sorted(missing)}; it has {sorted(f.files)}. "
                                   "Save it with np.savez(path, logits=(n, K), labels=(n,))")
            z, y = f["logits"], f["labels"]
    except (ValueError, OSError) as err:
        raise AbstainError(f"cannot read {p} as .npz without pickle ({err})") from err
    if z.ndim != 2 or y.shape != (len(z),) or not np.issubdtype(y.dtype, np.integer):
        raise AbstainError(f"{p}: need logits (n, K) and integer labels (n,); got {z.shape} {z.dtype} "
                           f"and {y.shape} {y.dtype}")
    if not np.issubdtype(z.dtype, np.floating) or not np.isfinite(z).all():
        raise AbstainError(f"{p}: logits must be finite floating-point numbers")
    info = {"spec": f"logits:{p}", "split": "given", "fingerprint": sha256_file(p), "n": int(len(y))}
    return z, y, info


def _load_model(model_path: Path, device: str):
    from serve.server.runtime import OnnxModel

    return OnnxModel(model_path, device=device)  # type: ignore[arg-type]


def _model_logits(model, spec: str, batch_size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from serve.data import load_split

    x, y, info = load_split(spec)
    if int(y.max()) >= model.num_classes:
        raise AbstainError(f"{spec} has labels up to {int(y.max())} but {model.path} has only "
                           f"{model.num_classes} classes: wrong dataset for this model")
    z = model.logits(x, batch_size=batch_size, progress=sys.stderr.isatty())
    # The probe batch (serve/calibration/probe.py): these rows' inputs and the logits computed here.
    info["probe"] = (x[:N_PROBE], z[:N_PROBE], model.provider, str(model.input_dtype))
    return z, y, info


def _logits_and_labels(args: argparse.Namespace, model_path: Path,
                       check_spec: Callable[[str], str]) -> tuple[np.ndarray, np.ndarray, dict, str]:
    """Logits, labels, data info and model sha256 from ``--logits FILE.npz`` or ``--data SPEC``.

    ``check_spec`` resolves and vets the data spec for the command's data role.
    """
    if args.logits:
        if args.data:
            raise AbstainError("pass either --data or --logits, not both")
        from serve.server.runtime import sha256_file

        z, y, info = _load_logits_npz(args.logits)
        return z, y, info, sha256_file(model_path)
    model = _load_model(model_path, args.device)
    spec = check_spec(args.data or _default_spec(model, getattr(args, "command", "calibrate")))
    z, y, info = _model_logits(model, spec, args.batch_size)
    return z, y, info, model.sha256


def _default_spec(model, command: str = "calibrate") -> str:
    """The model's own data (its ``data_spec`` metadata) in the split ``command`` works on."""
    split = "test" if command == "evaluate" else "calibration"
    spec = model.metadata.get("data_spec")
    if not isinstance(spec, str) or not spec:
        raise AbstainError(f"{model.path} has no 'data_spec' metadata: pass --data SPEC:{split} "
                           "or --logits FILE.npz")
    return f"{spec}:{split}"


def _split_of(spec: str) -> tuple[str, str | None]:
    from serve.data import parse_spec

    s = parse_spec(spec)
    return s.kind, s.split


def check_evaluation_role(spec: str) -> str:
    """Refuse evaluating on the calibration split or a whole built-in dataset (optimistic numbers)."""
    kind, split = _split_of(spec)
    if split in (None, "all") and kind in _BUILTIN_KINDS:
        raise DataRoleError(f"{spec!r} names the whole dataset, training and calibration data "
                            f"included, so its numbers would be optimistic; use "
                            f"{spec.rsplit(':', 1)[0] if split else spec}:test")
    if split == "calibration":
        raise DataRoleError(f"refusing to evaluate on {spec!r}: the calibration split chose the "
                            "score and certified the threshold, so its numbers are optimistic. "
                            f"Use the test split, e.g. {spec.rsplit(':', 1)[0]}:test")
    return spec


def check_calibration_role(spec: str) -> str:
    """Refuse calibrating on training or test data (the guarantee would be void)."""
    kind, split = _split_of(spec)
    if split in ("train", "test"):
        raise DataRoleError(f"refusing to calibrate on the '{split}' split of {spec!r}: data roles "
                            "never mix (calibration must be disjoint from training and test data). "
                            f"Use {spec.rsplit(':', 1)[0]}:calibration")
    if split in (None, "all") and kind in _BUILTIN_KINDS:
        raise DataRoleError(f"{spec!r} names the whole dataset, training and test data included; "
                            f"use {spec}:calibration")
    return spec


def _console():
    from serve.cli.console import make_console

    return make_console(highlight=False)


def _print_calibration(run, cal: Calibration, out: Path) -> None:
    from rich.table import Table

    con = _console()
    if run.n_tune:
        t = Table(title=f"score candidates on the tuning split (n = {run.n_tune}, "
                        f"error rate {run.choice.error_rate:.4f}, T = {run.choice.temperature:.4f})")
        for col in ("score", "AURC", "ΔAURC vs MSP", "z", "E-AURC", "AUROC", ""):
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
    if getattr(args, "from_feedback", None):                # the feedback loop (serve/feedback)
        from serve.feedback.recalibrate import from_feedback_main

        return from_feedback_main(args)
    from serve.calibration.pipeline import CalibrationSettings, calibrate_arrays, to_calibration
    from serve.calibration.plots import reliability_plot, risk_coverage_plot

    model_path = _model_path(args.model)
    settings = CalibrationSettings(target_risk=args.target_risk, delta=args.delta,
                                   method=args.method, score=args.score,
                                   target_coverage=args.target_coverage,
                                   tune_fraction=args.tune_fraction, seed=args.seed,
                                   temperature=args.temperature).validate()
    z, y, info, sha = _logits_and_labels(args, model_path, check_calibration_role)
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
        _console().print(f"kept the previous calibration as {backup}")
    return 0


def add_model_inputs(p: argparse.ArgumentParser, what: str, split: str) -> None:
    """The arguments calibrate and evaluate share: the model, its data or logits, how to run it."""
    p.add_argument("model", help="model directory (models/NAME/VERSION) or its model.onnx")
    p.add_argument("--data", help=f"{what} data spec, e.g. mnist1d:{split} "
                   f"(default: the model's data_spec metadata + ':{split}')")
    p.add_argument("--logits", help="precomputed .npz with 'logits' (n, K) and 'labels' (n,) "
                   "instead of running the model (default: run it on --data)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="onnxruntime device for the model run")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=1024,
                   help="samples per onnxruntime run")


def register_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="choose the score and certify a rejection threshold",
                       description="Split calibration data into tuning and certification parts, "
                       "choose the confidence score and temperature, certify a threshold with "
                       "P(selective risk ≤ target) ≥ 1 − δ, and write calibration.json + plots "
                       "beside the model. An existing calibration.json is kept as "
                       "calibration.json.bak.")
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
    p.add_argument("--from-feedback", metavar="STORE", default=None,
                   help="re-certify the threshold on labelled AUDITED samples of a decision store "
                   "(a --state-dir or postgresql:// URL); keeps the score, r* and δ (default: off)")
    p.set_defaults(handler=calibrate_main)
