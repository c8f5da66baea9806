"""The digits cascade of bench/cascade_demo.py: an MLP before a real ResNet-18 (the heavy stage 2).

Trains both with ``abstain train`` on ``digits`` (CPU, the train extra) unless ``runs/digits-mlp``
and ``runs/digits-resnet18`` already hold finished runs, exports them into a throw-away model
repository, calibrates each model and then the cascade with the ordinary commands. Nothing of it
is committed (the ResNet-18 ONNX file is ~45 MB).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from serve.calibration.cascade_artifact import StageRef, write_spec
from serve.server.runtime import sha256_file

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"digits-mlp": ["--model", "mlp", "--epochs", "30"],
        "digits-resnet18": ["--model", "resnet18", "--epochs", "15"]}


def _abstain(*args: str) -> None:
    cmd = [sys.executable, "-m", "serve.cli.main", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed: {(proc.stderr or proc.stdout)[-800:]}")


def build(repo: Path, target_risk: float, delta: float) -> Path:
    """Models ``digits-mlp/1``, ``digits-resnet18/1`` and the cascade ``digits-cascade/1`` in
    ``repo``; returns the cascade's directory."""
    for name, extra in RUNS.items():
        run = ROOT / "runs" / name
        if not (run / "checkpoint.pt").is_file() or not (run / "metrics.json").is_file():
            _abstain("train", "--data", "digits", "--loss", "maxsup", "--alpha", "0.1:0.2",
                     "--seed", "0", "--out", str(run), *extra)
        out = repo / name / "1"
        _abstain("export", str(run), "--to", str(out))
        _abstain("calibrate", str(out), "--data", "digits:calibration", "--target-risk",
                 f"{target_risk:g}", "--delta", f"{delta:g}", "--allow-defer-all")
    cascade = repo / "digits-cascade" / "1"
    cascade.mkdir(parents=True)
    write_spec(cascade, [StageRef(n, 1, sha256_file(repo / n / "1" / "model.onnx"))
                         for n in RUNS])
    _abstain("calibrate", str(cascade), "--data", "digits:calibration", "--target-risk",
             f"{target_risk:g}", "--delta", f"{delta:g}", "--score", "msp")
    return cascade
