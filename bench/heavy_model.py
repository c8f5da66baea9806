"""Build the benchmark's compute-heavy model: an untrained ResNet-18 on 32×32×3, exported to ONNX.

Usage: .venv/bin/python -m bench.heavy_model OUT_DIR   (needs the train extra: torch)

It exists only for throughput: the weights are random (seed 0) and its ``calibration.json`` is
synthetic (MSP, threshold at the median score of random inputs, quantiles of those scores), made
through :mod:`serve.calibration.artifact` so the server loads it like any other version. Runs in
its own process so that ``python -m bench`` itself never imports torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

QUANTILES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
SHAPE = (3, 32, 32)
CLASSES = [f"class{i}" for i in range(10)]


def build(out: Path, seed: int = 0) -> Path:
    """Write ``out/model.onnx`` and ``out/calibration.json``; returns ``out``."""
    import torch

    from serve import __version__
    from serve.calibration.artifact import new_calibration, save_calibration
    from serve.scores import create_score
    from serve.server.runtime import OnnxModel
    from training.export import export_model
    from training.models import create_model

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = create_model("resnet18", SHAPE, len(CLASSES)).eval()
    x = rng.uniform(0, 1, (64, *SHAPE)).astype(np.float32)            # (64, 3, 32, 32)
    meta = {"class_names": json.dumps(CLASSES), "input_shape": json.dumps(list(SHAPE)),
            "input_dtype": "float32",
            "preprocessing": json.dumps({"kind": "image", "mode": "RGB", "size": [32, 32],
                                         "scale": 1 / 255, "layout": "NCHW"}),
            "loss": "ce", "alpha": "0", "model": "resnet18", "data_spec": "synthetic:uniform",
            "data_fingerprint": "0" * 64, "abstain_version": __version__,
            "config": json.dumps({"purpose": "benchmark only: untrained, random weights"})}
    out.mkdir(parents=True, exist_ok=True)
    export_model(model, x, out / "model.onnx", meta, atol=1e-3)
    onnx_model = OnnxModel(out / "model.onnx", device="cpu")
    scores = create_score("msp")(onnx_model.logits(x))                 # (64,)
    cal = new_calibration(
        model_sha256=onnx_model.sha256, score="msp", temperature=1.0,
        threshold=float(np.median(scores)), target_risk=0.1, delta=0.1, method="none",
        n_tune=0, n_cert=len(x), coverage=0.5, risk=0.0, risk_upper_bound=1.0,
        data_fingerprint="0" * 64, score_quantiles=np.quantile(scores, QUANTILES).tolist(),
        data={"spec": "synthetic:uniform", "note": "benchmark only; not a real calibration"})
    save_calibration(cal, out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.heavy_model OUT_DIR")
    print(build(Path(sys.argv[1])))
