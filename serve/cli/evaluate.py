"""``abstain evaluate``: the deployed score and threshold measured on test data.

Shares the data plumbing (logits from ``--data`` or ``--logits``, data-role checks) with
``abstain calibrate``: :mod:`serve.cli.model_inputs`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from typing import Any

import numpy as np

from serve.calibration.artifact import Calibration, load_calibration
from serve.cli.argtypes import fraction
from serve.cli.model_inputs import (
    DataRoleError,
    add_model_inputs,
    check_evaluation_role,
    logits_and_labels,
    model_file,
)

log = logging.getLogger(__name__)


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    return v


# What the test estimate says about the certificate, by where its interval lies against the target.
VERDICTS = {
    "below": "below the target (the whole interval is under it)",
    "within": "within the test estimate's interval (consistent with the guarantee)",
    "above": "above the target: the whole interval exceeds it (the certificate's 1 − δ event may "
             "have failed, or the test data differ from the calibration data)",
    "none": "n/a (nothing accepted)",
}


def risk_verdict(n_accepted: int, ci: tuple[float, float] | list[float], target: float) -> str:
    """``below``, ``within`` or ``above``: the Clopper–Pearson interval against the target risk.

    A point estimate a little over the target is what a correct certificate gives on a finite test
    set now and then; only an interval wholly above the target contradicts it. ``none`` when
    nothing was accepted (no risk to estimate).
    """
    if not n_accepted:
        return "none"
    lo, hi = ci
    if hi <= target:
        return "below"
    if lo > target:
        return "above"
    return "within"


def evaluate_arrays(cal: Calibration, logits: np.ndarray, labels: np.ndarray,
                    confidence: float = 0.95) -> dict[str, Any]:
    """Every deployment metric of a calibration's rule on labelled logits."""
    from serve import selective_metrics as metrics
    from serve.calibration.binomial import clopper_pearson_interval, clopper_pearson_upper
    from serve.decision import DecisionRule

    y = np.asarray(labels, dtype=np.int64)
    d = DecisionRule(cal)(logits, probabilities=True)
    errors = d.label != y                                   # (n,) bool
    accepted = ~d.reject
    n, n_acc = len(y), int(accepted.sum())
    k = int(errors[accepted].sum())
    risk = k / n_acc if n_acc else float("nan")
    lo, hi = clopper_pearson_interval(k, n_acc, confidence)
    summ = metrics.summary(d.score, errors)
    return _nan_to_none({
        "n": n, "accuracy": float(1.0 - errors.mean()), "coverage": n_acc / n,
        "n_accepted": n_acc, "n_errors_accepted": k, "selective_risk": risk,
        "risk_ci": [lo, hi], "confidence": confidence,
        "risk_upper_bound": float(clopper_pearson_upper(k, n_acc, cal.delta)) if n_acc else float("nan"),
        "target_risk": cal.target_risk, "under_target": bool(n_acc and risk <= cal.target_risk),
        "verdict": risk_verdict(n_acc, (lo, hi), cal.target_risk),
        "aurc": summ["aurc"], "e_aurc": summ["e_aurc"], "augrc": summ["augrc"],
        "auroc": summ["auroc"],
        "ece": metrics.ece(d.probabilities.max(axis=1), errors),  # the served probabilities
    })


def evaluate_main(args: argparse.Namespace) -> int:

    model_path = model_file(args.model)
    z, y, info, sha = logits_and_labels(args, model_path, check_evaluation_role)
    cal = load_calibration(model_path.parent, sha)
    if info["fingerprint"] == cal.data_fingerprint and info["split"] == cal.data.get("split"):
        raise DataRoleError(f"refusing to evaluate on {info['spec']} ({info['split']}): it is the "
                            "data this model was calibrated on. Evaluate on held-out test data")
    if info["split"] in ("train", "tune"):
        log.warning("evaluating on the '%s' split: the model has seen it, numbers are optimistic",
                    info["split"])
    res = evaluate_arrays(cal, z, y, args.confidence)
    report = {"model": str(model_path), "model_sha256": sha,
              "data": {k: info[k] for k in ("spec", "split", "fingerprint", "n")},
              "calibration": {"score": cal.score, "temperature": cal.temperature,
                              "probability_temperature": cal.probs_temperature,
                              "threshold": cal.threshold, "method": cal.method,
                              "target_risk": cal.target_risk, "delta": cal.delta,
                              "certified_coverage": cal.coverage}, "metrics": res}
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
        return 0
    from rich.table import Table

    from serve.cli.console import report_console

    c = report["calibration"]
    report_console().print(f"[bold]{model_path.parent}[/bold] on {info['spec']}:{info['split']} "
                     f"(n = {res['n']}): score {c['score']}, threshold {c['threshold']}, "
                     f"T = {c['temperature']:.4f} (probabilities T = "
                     f"{c['probability_temperature']:.4f}), method {c['method']}")
    t = Table()
    t.add_column("metric")
    t.add_column("value", justify="right")

    def f(v: Any, fmt: str = ".4f") -> str:
        return "n/a" if v is None else format(v, fmt)

    rows = [("accuracy (all)", f(res["accuracy"])), ("coverage", f(res["coverage"])),
            ("accepted / errors", f"{res['n_accepted']} / {res['n_errors_accepted']}"),
            ("selective risk", f(res["selective_risk"])),
            (f"{res['confidence']:.0%} Clopper–Pearson CI", f"[{res['risk_ci'][0]:.4f}, "
                                                             f"{res['risk_ci'][1]:.4f}]"),
            (f"target risk (δ = {cal.delta:g})", f"{cal.target_risk:g}"),
            ("realised risk vs target", VERDICTS[res["verdict"]]),
            ("AURC", f(res["aurc"])), ("E-AURC", f(res["e_aurc"])), ("AUGRC", f(res["augrc"])),
            ("AUROC", f(res["auroc"])), ("ECE (top served probability)", f(res["ece"]))]
    for k, v in rows:
        t.add_row(k, v)
    report_console().print(t)
    return 0


def register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="measure the deployed score and threshold on test data",
                       description="Apply the model's calibration.json (score, temperature, "
                       "threshold) to labelled held-out data and report accuracy, coverage, the "
                       "selective risk with a Clopper–Pearson interval, whether that interval lies "
                       "below, around or above the target, AURC/E-AURC/AUGRC/AUROC and ECE. Refuses the calibration split "
                       "and a whole built-in dataset; warns on train/tune.")
    add_model_inputs(p, "labelled test", "test")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of a table")
    p.add_argument("--confidence", type=fraction(0.95), default=0.95,
                   help="confidence of the two-sided Clopper–Pearson interval")
    p.set_defaults(handler=evaluate_main)
