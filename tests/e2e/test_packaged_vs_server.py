"""The packaged model, run by onnxruntime, answers as a real abstain server does over v2 HTTP."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
from server_support import build_onnx, running_server, write_calibration

from serve.cli.package import package
from serve.scores import create_score
from serve.server.runtime import OnnxModel
from serve.server.settings import load_settings
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(ROOT / "models" / "mnist1d-maxsup" / "1", root / "mnist1d-maxsup" / "1")
    x = np.random.default_rng(0).normal(0, 3, (2000, 8)).astype(np.float32)
    for version, score in enumerate(("energy", "log_msp", "margin"), start=1):
        vdir = root / "clf" / str(version)
        build_onnx(vdir / "model.onnx", "vector", seed=version)
        s = create_score(score)(OnnxModel(vdir / "model.onnx", device="cpu").run(x))
        write_calibration(vdir, threshold=float(np.median(s)), score=score)   # half deferred
    return root


@pytest.mark.parametrize("name, version, features", [("mnist1d-maxsup", 1, 40), ("clf", 1, 8),
                                                     ("clf", 2, 8), ("clf", 3, 8)])
def test_packaged_model_answers_as_the_server(repo, tmp_path, name, version, features):
    package(repo / name / str(version), out=tmp_path / "p.onnx")
    x = np.random.default_rng(version).normal(0, 2, (1000, features)).astype(np.float32)
    settings = load_settings(model_repository=repo, poll_interval_s=0, max_instances=1024)
    with running_server(settings) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        r = client.post(f"/v2/models/{name}/versions/{version}/infer", content=orjson.dumps(
            {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                         "data": x.ravel().tolist()}]}))
    assert r.status_code == 200, r.text
    served = {o["name"]: np.asarray(o["data"]) for o in r.json()["outputs"]}
    sess = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    logits, label, score, reject = sess.run(["logits", "label", "score", "reject"], {"input": x})
    assert np.array_equal(logits.ravel(), served["logits"].astype(np.float32))
    assert np.array_equal(label, served["label"]) and np.array_equal(reject, served["reject"])
    assert np.max(np.abs(score - served["score"])) <= 1e-12
    assert 0 < reject.sum() < len(x)
