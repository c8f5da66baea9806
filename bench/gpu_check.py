"""``make gpu-check``: on a machine with CUDA, everything that needs it, in one go (≤ 8 minutes).

1. the CUDA-provider tests (``pytest -m cuda``);
2. the shipped model on ``--device cuda``: the active provider really is CUDA, and its logits and
   decisions match the CPU's on the probe batch (the certificate was made on CPU);
3. the benchmark on the GPU (``python -m bench --device cuda``, short durations) written to
   ``docs/benchmarks-gpu.md``, and again with TensorRT (``ABSTAIN_TENSORRT=1``) where onnxruntime
   has it, to ``docs/benchmarks-gpu-tensorrt.md``.

Without a CUDA provider it exits 2 with one line saying so. Each step gets what is left of the
budget; a step past it is stopped with its process group (the servers it started go too) and the
check fails with one line, never a traceback. The pip CUDA/cuDNN wheels' ``nvidia/*/lib`` dirs are
put on LD_LIBRARY_PATH (one re-exec: the loader reads it at start-up only), so onnxruntime-gpu
finds the libraries torch's CUDA build brought.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mnist1d-maxsup" / "1"
BUDGET_S = 8 * 60


class StepFailed(Exception):
    """A step failed or ran past its share of the budget (the message is the one line)."""


def _step(what: str, cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> None:
    print(f"== {what}: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                            start_new_session=True)
    try:
        rc = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise StepFailed(f"{what} ran past its {timeout:.0f} s of the budget") from None
    if rc != 0:
        raise StepFailed(f"{what} failed (exit {rc}; its output is above)")


def ensure_library_path() -> None:
    """Re-exec once with the pip nvidia wheels' lib dirs on LD_LIBRARY_PATH."""
    import site

    roots = [*site.getsitepackages(), site.getusersitepackages()]
    dirs = sorted({str(d) for r in roots for d in Path(r).glob("nvidia/*/lib") if d.is_dir()})
    have = [h for h in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if h]
    missing = [d for d in dirs if d not in have]
    if missing and os.environ.get("GPU_CHECK_REEXEC") != "1":
        env = {**os.environ, "GPU_CHECK_REEXEC": "1",
               "LD_LIBRARY_PATH": os.pathsep.join([*missing, *have])}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def verify_provider() -> str:
    import numpy as np

    from serve.calibration import probe
    from serve.calibration.artifact import load_calibration
    from serve.decision import DecisionRule
    from serve.server.runtime import OnnxModel

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
    ensure_library_path()
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        print(f"gpu-check: no CUDA provider in this onnxruntime (available: {available}); run it "
              "on a machine with a GPU in the gpu venv (make gpu-check creates .venv-gpu)",
              file=sys.stderr)
        return 2
    t0 = time.monotonic()

    def left(reserve: float) -> float:                  # this step's share of the budget
        return BUDGET_S - (time.monotonic() - t0) - reserve

    try:
        # The provider first: onnxruntime-gpu lists CUDA even where its libraries cannot load.
        print("== provider:", verify_provider(), flush=True)
        _step("CUDA tests", [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p",
                             "no:cacheprovider", "tests"], timeout=min(120, left(330)))
        # One ceiling thread setting (all cores): on the GPU the intra-op threads barely matter,
        # and it halves the ceiling runs so both pages fit the budget.
        common = ["--device", "cuda", "--duration", "4", "--concurrency", "1,32,128",
                  "--endpoints", "v2-json,v2-binary", "--runtime-seconds", "0.5", "--workers",
                  "1", "--ceiling-threads", "0"]
        trt = "TensorrtExecutionProvider" in available
        _step("bench (CUDA)", [sys.executable, "-m", "bench", *common, "--out",
                               "docs/benchmarks-gpu.md"], timeout=left(120 if trt else 0))
        if trt and left(0) >= 100:
            _step("bench (TensorRT)", [sys.executable, "-m", "bench", *common, "--models",
                                       "default", "--out", "docs/benchmarks-gpu-tensorrt.md"],
                  env={"ABSTAIN_TENSORRT": "1"}, timeout=left(0))
        elif trt:
            print(f"gpu-check: TensorRT skipped, {left(0):.0f} s of the budget left", flush=True)
    except StepFailed as err:
        print(f"gpu-check: {err}", file=sys.stderr)
        return 1
    print(f"gpu-check done in {time.monotonic() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
