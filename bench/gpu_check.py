"""``make gpu-check``: on a machine with CUDA, everything that needs it, in one go (≤ 8 minutes).

1. the CUDA-provider tests (``pytest -m cuda``);
2. the shipped model on ``--device cuda``: the active provider really is CUDA, and its logits and
   decisions match the CPU's on the probe batch (the certificate was made on CPU);
3. the benchmark on the GPU (``python -m bench --device cuda``, short durations) written to
   ``docs/benchmarks-gpu.md``, and again with TensorRT (``ABSTAIN_TENSORRT=1``) where onnxruntime
   has it, to ``docs/benchmarks-gpu-tensorrt.md``.

Without a CUDA provider it exits 2 with one line saying so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mnist1d-maxsup" / "1"
BUDGET_S = 8 * 60


def _step(what: str, cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> None:
    print(f"== {what}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, check=True, timeout=timeout)


def verify_provider() -> str:
    import numpy as np

    from serve.calibration import probe
    from serve.calibration.artifact import load_calibration
    from serve.decision import DecisionRule
    from serve.runtime import OnnxModel

    gpu, cpu = OnnxModel(MODEL / "model.onnx", device="cuda"), OnnxModel(MODEL / "model.onnx", "cpu")
    if gpu.provider != "CUDAExecutionProvider":
        raise SystemExit(f"gpu-check: --device cuda activated {gpu.providers}, not CUDA")
    cal = load_calibration(MODEL)
    x, stored = probe.load_probe(MODEL, cal.probe_sha256)
    rep = probe.compare(DecisionRule(cal), stored, gpu.logits(x))
    diff = float(np.max(np.abs(gpu.logits(x) - cpu.logits(x))))
    return (f"provider {gpu.provider}; probe on CUDA vs the certified CPU logits: "
            f"{rep.describe()}; CUDA vs CPU now: max |Δlogit| {diff:.3g}")


def main() -> int:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        print(f"gpu-check: no CUDA provider in this onnxruntime (available: {available}); run it "
              "on a machine with a GPU in the gpu venv (make gpu-check creates .venv-gpu)",
              file=sys.stderr)
        return 2
    t0 = time.monotonic()
    _step("CUDA tests", [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p",
                         "no:cacheprovider", "tests"], timeout=120)
    print("== provider:", verify_provider(), flush=True)
    common = ["--device", "cuda", "--duration", "5", "--concurrency", "1,32,128", "--endpoints",
              "v2-json,v2-binary", "--runtime-seconds", "0.5", "--workers", "1"]
    _step("bench (CUDA)", [sys.executable, "-m", "bench", *common, "--out",
                           "docs/benchmarks-gpu.md"], timeout=240)
    if "TensorrtExecutionProvider" in available and time.monotonic() - t0 < BUDGET_S - 150:
        _step("bench (TensorRT)", [sys.executable, "-m", "bench", *common, "--models", "default",
                                   "--out", "docs/benchmarks-gpu-tensorrt.md"],
              env={"ABSTAIN_TENSORRT": "1"}, timeout=150)
    print(f"gpu-check done in {time.monotonic() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
