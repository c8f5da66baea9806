"""``make gpu-check``: the prepared GPU check, one script within 8 minutes.

On a machine with CUDA (``make gpu-check`` builds ``.venv-gpu`` with the ``gpu`` extra, i.e.
onnxruntime-gpu instead of onnxruntime, plus torch for the heavy model):

1. the CUDA tests (``pytest -m cuda``: the session really runs on CUDAExecutionProvider and its
   logits match the CPU's);
2. a session on a real model must report CUDAExecutionProvider first (onnxruntime-gpu lists the
   provider even where its libraries cannot load, then silently runs on CPU);
3. ``python -m bench --device cuda`` writes docs/benchmarks-gpu.md; where onnxruntime offers
   TensorRT, a second run with ``ABSTAIN_TENSORRT=1`` writes docs/benchmarks-gpu-tensorrt.md.

Durations are budgeted to fit :data:`BUDGET_S`; a step that would not fit is skipped and said so.
Without a usable CUDA provider it prints one line and exits 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 480.0


def nvidia_lib_dirs() -> list[str]:
    """``site-packages/nvidia/*/lib`` of the pip CUDA/cuDNN wheels (torch's, or onnxruntime-gpu's
    ``[cuda,cudnn]`` extra), which onnxruntime's CUDA provider loads by soname."""
    import site

    roots = [*site.getsitepackages(), site.getusersitepackages()]
    return sorted({str(d) for r in roots for d in Path(r).glob("nvidia/*/lib") if d.is_dir()})


def ensure_library_path() -> None:
    """Re-exec once with those dirs on LD_LIBRARY_PATH (the loader reads it at start-up only);
    the servers the bench starts inherit it."""
    dirs = nvidia_lib_dirs()
    have = os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    missing = [d for d in dirs if d not in have]
    if missing and os.environ.get("ABSTAIN_GPU_CHECK_REEXEC") != "1":
        env = {**os.environ, "ABSTAIN_GPU_CHECK_REEXEC": "1",
               "LD_LIBRARY_PATH": os.pathsep.join([*missing, *(h for h in have if h)])}
        os.execve(sys.executable, [sys.executable, "-m", "bench.gpu_check", *sys.argv[1:]], env)


def cuda_error() -> str | None:
    """None where a session really runs on CUDA, else the one-line reason."""
    import numpy as np
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return ("no CUDA provider is available: onnxruntime offers "
                f"{', '.join(available)}; run `make gpu-check` on a machine with an NVIDIA GPU "
                "(it installs onnxruntime-gpu in .venv-gpu)")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    try:
        sess = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        sess.run(None, {"x": np.zeros((1, 4), np.float32)})
    except Exception as err:  # noqa: BLE001 - any failure means no usable CUDA
        return f"no CUDA provider is available: creating a CUDA session failed: {err}"
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        return ("no CUDA provider is available: onnxruntime-gpu is installed but the session fell "
                f"back to {sess.get_providers()[0]} (CUDA/cuDNN libraries missing or no GPU)")
    return None


def _step(name: str, cmd: list[str], deadline: float, need_s: float,
          env: dict[str, str] | None = None) -> bool:
    left = deadline - time.monotonic()
    if left < need_s:
        print(f"SKIPPED {name}: {left:.0f} s left of the budget, needs ~{need_s:.0f} s", flush=True)
        return False
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    # Its own process group, so a step past the budget goes with the servers it started.
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                            start_new_session=True)
    try:
        rc = proc.wait(timeout=left)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        print(f"FAILED {name}: ran past the budget", flush=True)
        return False
    print(f"{'OK' if rc == 0 else 'FAILED'} {name} (exit {rc})", flush=True)
    return rc == 0


def main() -> int:
    ensure_library_path()
    deadline = time.monotonic() + BUDGET_S
    err = cuda_error()
    if err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from serve.runtime import OnnxModel

    py = sys.executable
    ok = _step("CUDA tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
                              "-m", "cuda", "tests"], deadline, 30)
    default = ROOT / "models" / "mnist1d-maxsup" / "1"
    if (default / "model.onnx").is_file():
        provider = OnnxModel(default / "model.onnx", device="cuda").provider
        print(f"default model provider: {provider}", flush=True)
        ok &= provider == "CUDAExecutionProvider"
    common = ["--device", "cuda", "--duration", "3", "--runtime-seconds", "0.5",
              "--concurrency", "1,32,128", "--endpoints", "v2-json,v2-binary",
              "--ceiling-threads", "0", "--workers", "1"]
    with tempfile.TemporaryDirectory(prefix="abstain-gpu-") as tmp:
        heavy = Path(tmp) / "resnet18-heavy" / "1"
        built = _step("build the heavy model", [py, "-m", "bench.heavy_model", str(heavy)],
                      deadline, 60)
        models = ["--models", "default,heavy", "--heavy-model", str(heavy)] if built else [
            "--models", "default"]
        ok &= _step("bench on CUDA", [py, "-m", "bench", *common, *models,
                                      "--out", "docs/benchmarks-gpu.md"], deadline, 200)
        import onnxruntime as ort

        if "TensorrtExecutionProvider" in ort.get_available_providers():
            ok &= _step("bench on TensorRT", [py, "-m", "bench", *common, "--models", "default",
                                              "--concurrency", "1,32",
                                              "--out", "docs/benchmarks-gpu-tensorrt.md"],
                        deadline, 120, env={"ABSTAIN_TENSORRT": "1"})
        else:
            print("TensorRT: not offered by this onnxruntime; skipped", flush=True)
    print("gpu-check: " + ("all steps passed" if ok else "some steps FAILED (see above)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
