"""The study's numbers, computed from the per-run files it saved (torch-free).

Every number in a study report comes from here, and here reads only what the study wrote:
``runs/<tag>/logits.npz`` (ONNX logits and labels of the tune and test splits) and
``runs/<tag>/features.npz`` (penultimate features and the classifier matrix). Scores come from
serve.scores, metrics from serve.selective_metrics and the ``auto`` choice from serve.calibration.choose:
the code the server and `abstain calibrate` run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serve import selective_metrics as metrics
from serve.errors import AbstainError
from serve.scores import create_score
from training.collapse import collapse

P_GRID = tuple(range(11))
# "pnorm_tuned" = the p-norm with the lowest tune AURC (Xia et al.'s protocol, no MSP fallback);
# "auto" = the deployed rule (MSP at the tune-fitted temperature unless a p-norm is significantly better).
SCORES = ("msp", "maxlogit", *(f"pnorm:{p}" for p in P_GRID), "pnorm_tuned", "auto")
METRICS = ("aurc", "e_aurc", "naurc", "augrc", "auroc", "risk_at_80", "risk_at_50",
           "min_risk_cov_ge_50")
NC_KEYS = ("nc1", "nc2_means", "nc2_weights", "nc3", "within_class_var")
# What the verdicts bootstrap over test samples: (score, metric) pairs, plus "accuracy".
BOOT_KEYS = (("msp", "aurc"), ("msp", "e_aurc"), ("msp", "naurc"), ("msp", "auroc"),
             ("msp", "risk_at_50"), ("pnorm_tuned", "aurc"))
BOOT_RESAMPLES = 300


class StudyError(AbstainError):
    """A study configuration or output directory that cannot be used."""


def score_metrics(logits: np.ndarray, labels: np.ndarray, spec: str,
                  temperature: float = 1.0) -> dict[str, float]:
    """Every metric of METRICS for one score spec (at a temperature) on one split."""
    errors = logits.argmax(axis=1) != labels
    s = create_score(spec, temperature)(logits)
    out = metrics.summary(s, errors, coverages=(0.5, 0.8))
    return {k: float(out[k]) for k in METRICS}


def choose_auto(logits_tune: np.ndarray, labels_tune: np.ndarray) -> tuple[str, float, str]:
    """Cattelan & Silva's rule on the tuning split (the calibration library's ``auto``).

    Returns the chosen spec, the fitted temperature (the deployed score uses it: it changes
    MSP's ranking, not a p-norm's), and the best p-norm on the tuning split regardless of MSP.
    """
    from serve.calibration.choose import choose_score

    choice = choose_score(logits_tune, labels_tune, "auto")
    pnorms = [c for c in choice.candidates if c.spec.startswith("pnorm:")]
    best = min(pnorms, key=lambda c: c.aurc).spec if pnorms else "msp"
    return choice.spec, float(choice.temperature), best


def bootstrap_indices(n_test: int, resamples: int = BOOT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(B, n) test-index resamples, shared by every run of a study so differences are paired."""
    return np.random.default_rng(seed).integers(0, n_test, (resamples, n_test))


def bootstrap_run(logits: np.ndarray, labels: np.ndarray, tuned: str,
                  idx: np.ndarray) -> dict[str, list[float]]:
    """BOOT_KEYS metrics and accuracy of one run on each test resample ``idx[b]``."""
    errors = logits.argmax(axis=1) != labels
    scores = {"msp": create_score("msp")(logits), "pnorm_tuned": create_score(tuned)(logits)}
    out: dict[str, list[float]] = {"accuracy": [float(1.0 - errors[i].mean()) for i in idx]}
    for score in {k[0] for k in BOOT_KEYS}:
        wanted = [m for sc, m in BOOT_KEYS if sc == score]
        reps = {m: [] for m in wanted}
        for i in idx:
            s, e = scores[score][i], errors[i]
            c = metrics.risk_coverage_curve(s, e)
            fns = {"aurc": metrics.aurc, "e_aurc": metrics.e_aurc, "naurc": metrics.naurc,
                   "auroc": metrics.auroc,
                   "risk_at_50": lambda s, e, c: metrics.risk_at_coverage(s, e, 0.5, c)}
            for m in wanted:
                reps[m].append(float(fns[m](s, e, c)))
        out.update({f"{score}/{m}": v for m, v in reps.items()})
    return out


def analyse_run(run_dir: Path, boot_idx: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, every score's metrics on the test split, the auto choice, and NC1–NC3.

    With ``boot_idx`` (bootstrap_indices) the run also carries ``_boot``: per-resample values
    for the verdicts (kept in memory, not written to results.json).
    """
    meta = json.loads((run_dir / "run.json").read_text())
    with np.load(run_dir / "logits.npz") as f:
        z_tune, y_tune = f["logits_tune"].astype(np.float64), f["labels_tune"]
        z_test, y_test = f["logits_test"].astype(np.float64), f["labels_test"]
    auto, temperature, tuned = choose_auto(z_tune, y_tune)
    scores = {spec: score_metrics(z_test, y_test, spec) for spec in SCORES
              if spec not in ("auto", "pnorm_tuned")}
    scores["pnorm_tuned"] = score_metrics(z_test, y_test, tuned)
    scores["auto"] = score_metrics(z_test, y_test, auto, temperature)
    nc: dict[str, dict[str, float]] = {}
    feat = run_dir / "features.npz"
    if feat.is_file():
        with np.load(feat) as f:
            for split in ("train", "test"):
                if f"features_{split}" in f:
                    nc[split] = collapse(f[f"features_{split}"], f[f"labels_{split}"],
                                         f["weights"]).as_dict()
    boot = {} if boot_idx is None else {"_boot": bootstrap_run(z_test, y_test, tuned, boot_idx)}
    return {
        **boot,
        "tag": meta["tag"], "loss": meta["loss"], "seed": meta["seed"],
        "accuracy": float((z_test.argmax(axis=1) == y_test).mean()),
        "n_test_errors": int((z_test.argmax(axis=1) != y_test).sum()),
        "n_test": int(len(y_test)), "n_tune": int(len(y_tune)),
        "auto_spec": auto, "auto_temperature": temperature, "pnorm_tuned_spec": tuned, "scores": scores, "collapse": nc,
        "train_seconds": meta.get("train_seconds"),
        # The final model's errors on its whole train split (None for runs made before it was kept).
        "train_errors": meta.get("train_errors"), "n_train": meta.get("n_train"),
        "final_train_loss": meta.get("final_train_loss"),
    }


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if v.size > 1 else float("nan"),
            "n": int(v.size)}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per loss: mean ± sample std (ddof = 1) over seeds of every number in the runs."""
    by_loss: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_loss.setdefault(r["loss"], []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for loss, rs in by_loss.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        entry: dict[str, Any] = {
            "seeds": [r["seed"] for r in rs],
            "accuracy": _stats([r["accuracy"] for r in rs]),
            "auto_specs": [r["auto_spec"] for r in rs],
            "pnorm_tuned_specs": [r["pnorm_tuned_spec"] for r in rs],
            "scores": {s: {m: _stats([r["scores"][s][m] for r in rs]) for m in METRICS}
                       for s in SCORES},
            "collapse": {},
        }
        if all(r.get("train_errors") is not None for r in rs):
            entry["train_error"] = _stats([r["train_errors"] / r["n_train"] for r in rs])
        for split in ("train", "test"):
            if all(split in r["collapse"] for r in rs):
                entry["collapse"][split] = {k: _stats([r["collapse"][split][k] for r in rs])
                                            for k in NC_KEYS}
        out[loss] = entry
    return out

