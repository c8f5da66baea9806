"""The study's outputs: ``results.json`` (every number) and ``README.md`` (the report).

Torch-free: it works from the per-run files alone (see study_analysis), so a report can be
rebuilt from a finished study directory with no training.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve.files import atomic_write_text
from training import study_plots
from training.study_analysis import (
    METRICS,
    P_GRID,
    SCORES,
    aggregate,
    analyse_run,
    bootstrap_indices,
)
from training.study_verdicts import CLEAR_RULE, all_claims

# Bumped when the verdict rules change; the index marks studies judged by older rules as stale.
VERDICT_RULES = "issue-18: paired seeds t-test + paired test-sample bootstrap, TOST margins"
FINDINGS = "FINDINGS.md"           # the index's hand-written reading of the verdicts, if any
CONVERGED_TRAIN_ERROR = 0.005     # a regime counts as converged when every run is at or below
MAIN_SCORES = ("msp", "maxlogit", "pnorm:0", "pnorm:1", "pnorm:2", "pnorm_tuned", "auto")
METRIC_LABELS = {"aurc": "AURC", "e_aurc": "E-AURC", "naurc": "NAURC", "augrc": "AUGRC",
                 "auroc": "AUROC", "risk_at_80": "risk@80%", "risk_at_50": "risk@50%",
                 "min_risk_cov_ge_50": "min risk, cov ≥ 50%"}
FIGURES = {
    "risk_coverage.png": "Risk–coverage per loss (MSP, max logit, pnorm:2, auto; every seed)",
    "risk_coverage_msp.png": "MSP risk–coverage of every loss on one axis (claim 1)",
    "xia_fig5.png": "Max logit against MSP, correct vs incorrect test predictions (Xia et al. Fig. 5 style)",
    "pnorm_grid.png": "AURC of pnorm:p relative to MSP over p (claim 2)",
}


def _pm(s: dict[str, float], scale: float = 1.0, digits: int = 4) -> str:
    if not math.isfinite(s["mean"]):
        return "n/a"
    std = "" if not math.isfinite(s["std"]) else f" ± {s['std'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f}{std}"


def _score_table(agg: dict[str, Any], scores: tuple[str, ...]) -> list[str]:
    head = "| loss | score | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    for loss, e in agg.items():
        for s in scores:
            label = (f"auto ({', '.join(sorted(set(e['auto_specs'])))})" if s == "auto" else
                     f"pnorm_tuned ({', '.join(sorted(set(e['pnorm_tuned_specs'])))})"
                     if s == "pnorm_tuned" else s)
            lines.append(f"| {loss} | {label} | "
                         + " | ".join(_pm(e["scores"][s][m]) for m in METRICS) + " |")
    return lines


def _collapse_table(agg: dict[str, Any], split: str) -> list[str]:
    keys = ("nc1", "nc2_means", "nc2_weights", "nc3", "within_class_var")
    lines = ["| loss | NC1 | NC2 (means) | NC2 (weights) | NC3 | tr Σ_W |", "|---|---|---|---|---|---|"]
    for loss, e in agg.items():
        c = e["collapse"].get(split)
        if c:
            lines.append(f"| {loss} | " + " | ".join(_pm(c[k], digits=3) for k in keys) + " |")
    return lines


def build(out: Path, meta: dict[str, Any], run_dirs: list[Path],
          analyse: Callable[..., dict[str, Any]] = analyse_run) -> dict[str, Any]:
    """Analyse every run, draw the figures, and write results.json and README.md into ``out``."""
    import numpy as np

    with np.load(run_dirs[0] / "logits.npz") as f:
        idx = bootstrap_indices(len(f["labels_test"]))
    runs = [analyse(d, idx) for d in run_dirs]
    agg = aggregate(runs)
    claims = all_claims(runs)
    runs = [{k: v for k, v in r.items() if k != "_boot"} for r in runs]
    grouped: dict[str, list[tuple[int, Path, tuple[str, float]]]] = {}
    for r, d in sorted(zip(runs, run_dirs, strict=True), key=lambda t: (meta["losses"].index(t[0]["loss"]),
                                                            t[0]["seed"])):
        grouped.setdefault(r["loss"], []).append((r["seed"], d, (r["auto_spec"],
                                                                  r["auto_temperature"])))
    agg = {loss: agg[loss] for loss in grouped}
    study_plots.risk_coverage(grouped, out / "risk_coverage.png")
    study_plots.msp_by_loss(grouped, out / "risk_coverage_msp.png")
    study_plots.xia_scatter(grouped, out / "xia_fig5.png")
    study_plots.pnorm_grid(agg, out / "pnorm_grid.png")
    meta = {**meta, "verdict_rules": VERDICT_RULES}
    results = {"meta": meta, "runs": runs, "aggregate": agg,
               "claims": [c.as_dict() for c in claims],
               "files": {d.name: str(d.relative_to(out)) for d in run_dirs}}
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, sort_keys=False) + "\n")
    atomic_write_text(out / "README.md", render(results))
    return results


def max_train_error(runs: list[dict[str, Any]]) -> float | None:
    """The largest final training error over the runs; None if any run did not record it."""
    if not runs or any(r.get("train_errors") is None for r in runs):
        return None
    return max(r["train_errors"] / r["n_train"] for r in runs)


def convergence_note(runs: list[dict[str, Any]]) -> str:
    """One sentence: did every run reach (near) zero training error? (≤ 0.5% counts as converged)."""
    worst = max_train_error(runs)
    if worst is None:
        return ("Training error: not recorded for these runs (made before the study kept it), "
                "so whether they converged is not shown here; the epochs and accuracies suggest not.")
    verdict = ("every run reached (near) zero training error: this regime is **converged**"
               if worst <= CONVERGED_TRAIN_ERROR else
               "at least one run is above 0.5%: this regime is **not converged**")
    return (f"Training error of the final models (eval mode, whole train split): at most "
            f"{worst * 100:.2f}% over the {len(runs)} runs; {verdict}.")


def render(results: dict[str, Any]) -> str:
    """The Markdown report; every number comes from ``results``."""
    meta, agg = results["meta"], results["aggregate"]
    r = meta["regime"]
    lines = [
        f"# Selective-classification study: {meta['name']}",
        "",
        "Generated by `abstain study` (training/study.py); every number below is recomputed from the "
        "per-run ONNX logits and features saved under `runs/` (see `results.json`).",
        "",
        "## Setup",
        "",
        f"- Command: `{meta.get('first_invocation', meta)['command']}`",
        f"- Runtime of that command: {meta.get('first_invocation', meta)['runtime_seconds']:.0f} s "
        f"wall clock. {meta.get('first_invocation', meta).get('load_note', '')}",
        f"- Machine: {meta['machine']}. Train + export + ONNX evaluation of the "
        f"{len(results['runs'])} runs, summed as timed when each was made: "
        f"{meta.get('runs_seconds', float('nan')):.0f} s"
        + (f". This report was re-generated from the saved runs by `{meta['command']}` "
           f"({meta['runs_reused']} runs reused, {meta['runtime_seconds']:.0f} s)"
           if meta.get("runs_reused") else "") + ".",
        f"- Seeds: {', '.join(str(s) for s in meta['seeds'])}",
        f"- Regime: data `{r['data']}` ({r['n_train']} train / {r['n_tune']} tune / {r['n_test']} test, "
        f"{r['num_classes']} classes), model `{r['model']}`, {r['epochs']} epochs, "
        f"batch {r['batch_size']}, lr {r['lr']}. {r.get('note', '')}",
        f"- Losses: {', '.join(f'`{x}`' for x in meta['losses'])}",
        "- Evaluation path: each run is exported to ONNX and its logits come from "
        "`serve.server.runtime.OnnxModel` (onnxruntime, as deployed); scores from `serve.scores`, metrics "
        "from `serve.selective_metrics`; `auto` = `serve.calibration.choose.choose_score(..., 'auto')` on the "
        "**tune** split (MSP unless a centred pnorm:p, p = 0…10, has a strictly lower AURC), "
        "evaluated on the disjoint **test** split (when it keeps MSP, it is MSP at the "
        "tune-fitted temperature, whose ranking differs from plain `msp` at T = 1); "
        "`pnorm_tuned` = the p-norm with the lowest tune AURC, without the MSP fallback (Xia et "
        "al.'s protocol). Neural-collapse diagnostics use the PyTorch "
        "penultimate features of (a stratified subsample of) the train split.",
        "- Numbers are mean ± sample std (ddof = 1) over seeds; with one seed no spread is shown.",
        f"- GPU: {meta.get('gpu_note', '')}",
        "",
        "## Verdicts on the four claims (METHODS.md §6)",
        "",
        f"Rule for every comparison: {CLEAR_RULE}. Each claim is split into per-setting outcomes "
        "(*for*, *against*, *unclear*): all *for* → reproduced, all *against* → not reproduced, "
        "both → mixed, otherwise inconclusive. Verdicts are computed, not written by hand. "
        "risk@c% is the selective risk at the threshold whose coverage first reaches c%; "
        "'min risk, cov ≥ 50%' is the best risk over thresholds keeping ≥ 50% coverage.",
        "",
    ]
    for i, c in enumerate(results["claims"], 1):
        lines += [f"### Claim {i}: {c['claim']}", "", f"**Verdict: {c['verdict']}** "
                  f"(regime: `{r['data']}`, `{r['model']}`, {r['epochs']} epochs, "
                  f"{len(meta['seeds'])} seed(s)).", "", f"Rule: {c['rule']}.", ""]
        lines += [f"- {e}" for e in c["evidence"]] + [""]
    lines += ["## Accuracy", "",
              "| loss | test accuracy (%) | test errors per seed | train errors per seed "
              "(final model, whole train split) | auto score chosen on tune |",
              "|---|---|---|---|---|"]
    for loss, e in agg.items():
        rs = sorted((r for r in results["runs"] if r["loss"] == loss), key=lambda r: r["seed"])
        errs = [str(r.get("n_test_errors", "?")) for r in rs]
        train = [f"{r['train_errors']}/{r['n_train']}" if r.get("train_errors") is not None
                 else "not recorded" for r in rs]
        lines.append(f"| {loss} | {_pm(e['accuracy'], 100, 2)} | {', '.join(errs)} | "
                     f"{', '.join(train)} | {', '.join(e['auto_specs'])} |")
    lines += ["", convergence_note(results["runs"]), ""]
    lines += ["", "## Selective classification on the test split (main scores)", ""]
    lines += _score_table(agg, MAIN_SCORES)
    lines += ["", "## Figures", ""]
    for f, caption in FIGURES.items():
        lines += [f"### {caption}", "", f"![{caption}]({f})", ""]
    lines += ["## Neural collapse (train-split penultimate features)", ""]
    lines += _collapse_table(agg, "train")
    lines += ["", "Test-split features:", ""] + _collapse_table(agg, "test")
    lines += ["", "## Appendix: every score (full p grid)", ""]
    lines += _score_table(agg, tuple(s for s in SCORES if s not in MAIN_SCORES))
    lines += ["", f"p grid: {', '.join(str(p) for p in P_GRID)} (pnorm:0 = centred max logit).", ""]
    return "\n".join(lines)


def write_index(root: Path) -> Path:
    """``root/README.md``: one row per study under ``root`` (its regime and the four verdicts).

    A hand-written ``root/FINDINGS.md`` (what the rows mean together), when present, follows the
    table: the verdicts are computed, their reading across regimes is not.
    """
    studies = sorted(p.parent for p in root.glob("*/results.json"))
    if not studies:
        from training.study_analysis import StudyError

        raise StudyError(f"no study results under {root} (expected {root}/NAME/results.json); "
                         f"run `abstain study --out {root}/NAME` first")
    lines = [
        "# Reproduction studies (issue 7)",
        "",
        "Each folder holds one regime's report (`README.md`), figures and `results.json`, written by "
        "`abstain study`; the commands that made them are in `run_all.sh` and in each report. "
        "Verdicts are computed by the rules stated in each report (training/study_verdicts.py). "
        "Wall clock = the study command that trained the runs (on a shared, loaded 2-core "
        "machine; '—' where the runs were trained by several processes or an interrupted "
        "invocation, see the report); runs, summed = train + export + ONNX evaluation time of "
        "every run as recorded when it was made; max train error = the largest final training "
        "error over a study's runs (eval mode, whole train split; 'not recorded' for studies made "
        "before the study kept it — all of them stopped at 1–20 epochs, before convergence).",
        "",
        "| study | data | model | epochs | seeds | accuracy range (%) | max train error (%) "
        "| wall clock | runs, summed | claim 1 | claim 2 | claim 3 | claim 4 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    stale = False
    for d in studies:
        res = json.loads((d / "results.json").read_text())
        meta, r = res["meta"], res["meta"]["regime"]
        accs = [e["accuracy"]["mean"] * 100 for e in res["aggregate"].values()]
        first = meta.get("first_invocation", meta)
        lines.append(
            f"| [{d.name}]({d.name}/README.md) | `{r['data']}` | {r['model']} | {r['epochs']} | "
            f"{len(meta['seeds'])} | {min(accs):.1f}–{max(accs):.1f} | "
            + ("not recorded | " if (worst := max_train_error(res["runs"])) is None
               else f"{worst * 100:.2f} | ")
            + (f"{first['runtime_seconds'] / 60:.1f} min | " if first["runtime_seconds"] > 5
               else "— (see report) | ")
            + f"{meta.get('runs_seconds', float('nan')) / 60:.1f} min | "
            + " | ".join(c["verdict"] if meta.get("verdict_rules") == VERDICT_RULES else "stale¹"
                         for c in res["claims"]) + " |")
        stale |= meta.get("verdict_rules") != VERDICT_RULES
    if stale:
        lines += ["", "¹ judged by verdict rules older than the current ones (training/study_verdicts.py), "
                  "which fired on ~21% of pure-noise comparisons. Re-judge with `PYTHONPATH=. python -m "
                  "training.study_rejudge DIR`, which needs the runs' committed logits.npz; these "
                  "folders have none, so they need retraining (`abstain study ... --out DIR`)."]
    findings = root / FINDINGS
    if findings.is_file():
        lines += ["", findings.read_text().rstrip()]
    lines += [
        "",
        "Claims (METHODS.md §6): 1. LS damages the ranking of errors under MSP (E-AURC) relative to CE; 2. MaxLogit-pNorm "
        "recovers much of that loss for LS and helps CE less; 3. MaxSup matches or beats LS accuracy "
        "without the same SC degradation; 4. LS gives lower NC1 than CE.",
        "",
        "GPU: no GPU was available to the session that made these; the CIFAR-100 run "
        "(`abstain study --data cifar100:PATH --model resnet18 --device cuda --out "
        "docs/study/cifar100`) is still to do.",
        "",
    ]
    out = root / "README.md"
    atomic_write_text(out, "\n".join(lines))
    return out
