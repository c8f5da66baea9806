"""The CUDA path on a machine with CUDA (``pytest -m cuda``; ``make gpu-check`` runs these).

Skipped where onnxruntime offers no CUDA provider; the no-CUDA behaviour of the GPU check itself
is tested on every machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from server_support import make_version

from serve.runtime import OnnxModel

ROOT = Path(__file__).resolve().parents[2]
HAS_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDAExecutionProvider")
def test_cuda_session_really_runs_on_cuda_and_matches_cpu(tmp_path: Path) -> None:
    vdir = make_version(tmp_path / "repo", "clf", 1, seed=3)
    gpu = OnnxModel(vdir / "model.onnx", device="cuda")
    cpu = OnnxModel(vdir / "model.onnx", device="cpu")
    assert gpu.provider == "CUDAExecutionProvider"
    x = np.random.default_rng(0).standard_normal((33, *cpu.input_shape)).astype(np.float32)
    np.testing.assert_allclose(gpu.run(x), cpu.run(x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: the refusal is not what runs here")
def test_gpu_check_without_cuda_exits_nonzero_with_one_line() -> None:
    r = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "no CUDA provider is available" in r.stderr
    assert "CPUExecutionProvider" in r.stderr and r.stdout == ""
