"""A cascade on a real server: the shipped mnist1d cascade (mnist1d-mlp → mnist1d-maxsup).

Stage 2 runs only on stage 1's deferrals, counted on stage 2's own batcher
(``/v2/models/mnist1d-maxsup/stats``); every v1, v2 and gRPC answer says which stage answered;
the per-stage Prometheus series count the same samples; and a stage whose model changes makes the
cascade refuse to load while the stage model keeps serving.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from server_support import ROOT, copy_shipped, running_server, server_process

from serve.calibration.cascade_artifact import load_cascade_calibration, read_spec
from serve.decision import DecisionRule
from serve.server.runtime import OnnxModel, sha256_file
from serve.server.settings import load_settings

grpcclient = pytest.importorskip("tritonclient.grpc")
ADMIN = {"authorization": "Bearer adm"}
NAMES = ("mnist1d-mlp", "mnist1d-maxsup", "mnist1d-cascade")
pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return copy_shipped(tmp_path, NAMES)


def _expected(repo: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1's own acceptances under the cascade's threshold, computed without the server."""
    d = repo / "mnist1d-cascade" / "1"
    cal = load_cascade_calibration(d, read_spec(d))
    z1 = OnnxModel(repo / "mnist1d-mlp" / "1" / "model.onnx").run(x)
    dec = DecisionRule(cal.stages[0])(z1)
    return ~dec.reject, dec.label


def _stage2_samples(c: httpx.Client) -> int:
    return c.get("/v2/models/mnist1d-maxsup/stats").json()["model_stats"][0]["samples"]


def test_stage_two_runs_only_on_stage_one_deferrals(repo):
    with np.load(repo / "mnist1d-maxsup" / "1" / "probe.npz") as f:
        x = f["x"][:120].astype(np.float32)                    # calibration-split inputs
    accept1, label1 = _expected(repo, x)
    assert 0 < accept1.sum() < len(x)                          # both stages have work
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                      admin_key="adm", grpc_port=0)
    with running_server(s) as (url, app), httpx.Client(base_url=url, timeout=30) as c:
        before = _stage2_samples(c)
        r = c.post("/v1/models/mnist1d-cascade/predict", json={"instances": x.tolist()})
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        stage = np.array([p["stage"] for p in preds])
        assert np.array_equal(stage == 1, accept1)
        assert np.array_equal(np.array([p["label"] for p in preds])[accept1], label1[accept1])
        assert not any(p["reject"] for p in preds if p["stage"] == 1)
        assert _stage2_samples(c) - before == int((~accept1).sum())
        # v2 JSON: the same answers, plus the stage tensor after the requested outputs.
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                            "data": x.ravel().tolist()}]}
        out = {o["name"]: o["data"] for o in
               c.post("/v2/models/mnist1d-cascade/infer", json=body).json()["outputs"]}
        assert out["stage"] == stage.tolist()
        assert out["reject"] == [p["reject"] for p in preds]
        # gRPC (the unchanged Triton client): stage in the answer.
        with grpcclient.InferenceServerClient(f"127.0.0.1:{app.grpc_port}") as g:
            t = grpcclient.InferInput("input", list(x.shape), "FP32")
            t.set_data_from_numpy(x)
            res = g.infer("mnist1d-cascade", [t])
            assert res.as_numpy("stage").tolist() == stage.tolist()
        assert _stage2_samples(c) - before == 3 * int((~accept1).sum())
        meta = c.get("/v2/models/mnist1d-cascade").json()
        assert meta["outputs"][-1] == {"name": "stage", "datatype": "INT32", "shape": [-1]}
        assert [st["model"] for st in meta["stages"]] == ["mnist1d-mlp", "mnist1d-maxsup"]
        stats = c.get("/v2/models/mnist1d-cascade/stats").json()["model_stats"][0]
        assert stats["stages"]["2"]["reached"] == 3 * int((~accept1).sum())
        assert stats["stages"]["1"]["answered"] == 3 * int(accept1.sum())
        metrics = c.get("/metrics", headers=ADMIN).text
        line = ('abstain_cascade_stage_samples_total{model="mnist1d-cascade",outcome="answered",'
                'stage="1",version="1"}')
        assert f"{line} {3.0 * accept1.sum()}" in metrics
        assert 'abstain_cascade_stage_duration_seconds_count{model="mnist1d-cascade",stage="2"' \
            in metrics
        # The per-stage drift window: stage 1 accepted its share of the 3 × 120 samples (the
        # window, 1000, is not full yet: no p-value).
        cov = ('abstain_cascade_stage_window_coverage{model="mnist1d-cascade",stage="1",'
               'version="1"}')
        assert f"{cov} {accept1.mean()}" in metrics
        assert 'abstain_cascade_stage_drift_p_value{model="mnist1d-cascade",stage="2",' \
            'version="1"} NaN' in metrics


def test_a_changed_stage_refuses_the_cascade_and_keeps_serving_itself(repo):
    x = [[0.1] * 40]
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                      admin_key="adm")
    with running_server(s) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/v1/models/mnist1d-cascade/predict", json={"instances": x}).status_code == 200
        # A new cascade calibration is picked up on reload: stage 1 accepting nothing (null).
        path = repo / "mnist1d-cascade" / "1" / "cascade_calibration.json"
        raw = json.loads(path.read_text())
        raw["stages"][0]["threshold"] = None
        path.write_text(json.dumps(raw))
        assert "mnist1d-cascade/1" in c.post("/v1/admin/reload", headers=ADMIN).json()["loaded"]
        with np.load(repo / "mnist1d-maxsup" / "1" / "probe.npz") as f:
            probe = f["x"][:50].tolist()
        preds = c.post("/v1/models/mnist1d-cascade/predict",
                       json={"instances": probe}).json()["predictions"]
        assert {p["stage"] for p in preds} == {2}
        stage2 = repo / "mnist1d-maxsup" / "1"
        for f in ("model.onnx", "calibration.json", "probe.npz"):   # another valid model
            shutil.copy(repo / "mnist1d-mlp" / "1" / f, stage2 / f)
        r = c.post("/v1/admin/reload", headers=ADMIN).json()
        assert "mnist1d-maxsup/1" in r["loaded"], r
        why = r["failed"]["mnist1d-cascade/1"]
        assert "stage 2 (mnist1d-maxsup/1) now serves a model with sha256" in why
        assert "pins b9fe6d3e6cdb" in why
        gone = c.post("/v1/models/mnist1d-cascade/predict", json={"instances": x})
        assert gone.status_code == 404
        own = c.post("/v1/models/mnist1d-maxsup/predict", json={"instances": x})
        assert own.status_code == 200 and "stage" not in own.json()["predictions"][0]
        served = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert "mnist1d-cascade" not in served
        assert served["mnist1d-maxsup"]["model_sha256"] == sha256_file(stage2 / "model.onnx")


def test_abstain_serve_models_serves_the_cascade_beside_the_default_model():
    """What `make serve` runs (`abstain serve models`) on the repository as shipped."""
    with server_process(ROOT / "models", env={"ABSTAIN_POLL_INTERVAL_S": "0"}) as (url, _), \
            httpx.Client(base_url=url, timeout=30) as c:
        served = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert {"mnist1d-maxsup", "mnist1d-mlp", "mnist1d-cascade"} <= set(served)
        assert [s["model"] for s in served["mnist1d-cascade"]["stages"]] == \
            ["mnist1d-mlp", "mnist1d-maxsup"]
        with np.load(ROOT / "models" / "mnist1d-maxsup" / "1" / "probe.npz") as f:
            x = f["x"][:4].tolist()
        r = c.post("/v1/models/mnist1d-cascade/predict", json={"instances": x})
        assert r.status_code == 200 and all(p["stage"] in (1, 2) for p in r.json()["predictions"])
