"""CUDA-provider tests: run by `make gpu-check` on a machine with a GPU, skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
from server_support import make_version

from serve.server.runtime import OnnxModel

onnxruntime = pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    "CUDAExecutionProvider" not in onnxruntime.get_available_providers(),
    reason="no CUDAExecutionProvider in this onnxruntime")]


def test_cuda_is_really_active_and_matches_cpu(tmp_path):
    vdir = make_version(tmp_path, "clf", 1)
    gpu = OnnxModel(vdir / "model.onnx", device="cuda")
    cpu = OnnxModel(vdir / "model.onnx", device="cpu")
    assert gpu.provider == "CUDAExecutionProvider"
    x = np.random.default_rng(0).normal(size=(512, 8)).astype(np.float32)
    np.testing.assert_allclose(gpu.logits(x), cpu.logits(x), rtol=1e-4, atol=1e-5)


def test_io_binding_path_serves_every_batch_size(tmp_path):
    vdir = make_version(tmp_path, "clf", 1)
    gpu = OnnxModel(vdir / "model.onnx", device="cuda")
    for n in (1, 7, 64, 300):
        assert gpu.run(np.zeros((n, 8), np.float32)).shape == (n, 4)
