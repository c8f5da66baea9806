"""The review loop over a cascade on a real server (the shipped mnist1d-mlp → mnist1d-maxsup).

A cascade's decisions are recorded under the cascade's own name, version and calibration, each
sample with the stage that answered it (stage 1's acceptances, stage 2's answers, deferrals at
the last stage); the review API shows the stage; ``/v1/monitor/risk`` gives the whole system's
live risk and the per-stage counts from the labelled audits.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from server_support import copy_shipped, running_server

from serve.calibration.cascade_artifact import load_cascade_calibration, read_spec
from serve.decision import DecisionRule
from serve.server.runtime import OnnxModel
from serve.server.settings import load_settings

REV = {"authorization": "Bearer rev"}
NAMES = ("mnist1d-mlp", "mnist1d-maxsup", "mnist1d-cascade")
pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return copy_shipped(tmp_path / "models", NAMES)


def _expected_stages(repo: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Each sample's answering stage and whether it is deferred, computed without the server
    (onnxruntime and the cascade's calibration), and the calibration's sha256."""
    d = repo / "mnist1d-cascade" / "1"
    cal = load_cascade_calibration(d, read_spec(d))
    stage, reject = np.ones(len(x), np.int64), np.ones(len(x), bool)
    rows = np.arange(len(x))
    for k, (ref, rule) in enumerate(zip(read_spec(d), cal.stages, strict=True), 1):
        z = OnnxModel(repo / ref.model / str(ref.version) / "model.onnx").run(x[rows])
        dec = DecisionRule(rule)(z)
        stage[rows] = k
        reject[rows[~dec.reject]] = False
        rows = rows[dec.reject]
    return stage, reject, cal.sha256


def _recorded(c: httpx.Client, rid: str, n: int) -> list[dict]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = c.get(f"/v1/requests/{rid}", headers=REV)
        if r.status_code == 200 and len(r.json()["samples"]) == n:
            return r.json()["samples"]
        time.sleep(0.05)
    raise AssertionError(f"request {rid} was not recorded within 15 s")


def test_cascade_decisions_are_recorded_with_their_stage_and_monitored_per_stage(repo, tmp_path):
    with np.load(repo / "mnist1d-maxsup" / "1" / "probe.npz") as f:
        x = f["x"][:150].astype(np.float32)
    stage, reject, sha = _expected_stages(repo, x)
    assert (stage == 1).any() and (stage == 2).any() and reject.any()   # every path is taken
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                      state_dir=tmp_path / "state", reviewer_key="rev", audit_rate=1.0,
                      store_inputs=True)
    with running_server(s) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/models/mnist1d-cascade/predict", json={"instances": x.tolist()})
        assert r.status_code == 200, r.text
        assert [p["stage"] for p in r.json()["predictions"]] == stage.tolist()
        rid = r.headers["x-request-id"]
        rows = _recorded(c, rid, len(x))
        assert {(row["model"], row["version"], row["calibration_sha256"]) for row in rows} == \
            {("mnist1d-cascade", "1", sha)}
        assert [row["stage"] for row in rows] == stage.tolist()
        assert [row["reject"] for row in rows] == reject.tolist()
        assert all(row["input"] is not None and len(row["top_k"]) == 3 for row in rows)

        # A plain model's own request: no stage.
        r = c.post("/v1/models/mnist1d-mlp/predict", json={"instances": x[:3].tolist()})
        own = _recorded(c, r.headers["x-request-id"], 3)
        assert [(row["model"], row["stage"]) for row in own] == [("mnist1d-mlp", None)] * 3

        # Review queues show the stage: deferred items are at the last stage.
        q = c.get("/v1/review/queue", params={"kind": "deferred", "model": "mnist1d-cascade",
                                              "limit": 1000}, headers=REV).json()["items"]
        assert len(q) == reject.sum() and {i["stage"] for i in q} == {2}

        # Label audited accepted samples: stage 1's all right, two of stage 2's wrong.
        accepted = np.flatnonzero(~reject)
        s1, s2 = accepted[stage[accepted] == 1], accepted[stage[accepted] == 2]
        assert len(s1) >= 5 and len(s2) >= 10
        wrong = set(s2[:2].tolist())
        labelled = [*s1[:5].tolist(), *s2[:10].tolist()]
        for i in labelled:
            pred = rows[i]["label"]
            label = (int(pred) + 1) % 10 if i in wrong else int(pred)
            r = c.post("/v1/feedback", json={"request_id": rid, "index": i, "label": label},
                       headers=REV)
            assert r.status_code == 201, r.text
        body = c.get("/v1/monitor/risk", params={"model": "mnist1d-cascade"}, headers=REV).json()
        (epoch,) = body["epochs"]
        assert "no stage has a certified risk" in body["note"]
        assert epoch["calibration_sha256"] == sha and epoch["current"] is True
        assert (epoch["labels"], epoch["errors"]) == (len(labelled), 2)
        assert epoch["pending_audits"] == len(accepted) - len(labelled)
        by = {st["stage"]: st for st in epoch["stages"]}
        assert set(by) == {1, 2}
        assert (by[1]["labels"], by[1]["errors"], by[1]["pending_audits"]) == \
            (5, 0, len(s1) - 5)
        assert (by[2]["labels"], by[2]["errors"], by[2]["pending_audits"]) == \
            (10, 2, len(s2) - 10)
        assert by[2]["risk"] == pytest.approx(2 / 10)
        assert by[2]["lower"] < by[2]["risk"] < by[2]["upper"] <= by[2]["upper_pessimistic"]
        assert "status" not in by[2]                       # diagnostics: no per-stage verdict
        # A plain model's epoch has no stage breakdown; the cascade's calls to its stages are
        # recorded once, as the cascade's (stage 2 served nothing else: it has no audits).
        plain = c.get("/v1/monitor/risk", params={"model": "mnist1d-mlp"}, headers=REV).json()
        assert plain["epochs"] and all("stages" not in e for e in plain["epochs"])
        (mlp,) = plain["epochs"]
        assert (mlp["labels"], mlp["pending_audits"]) == (0, sum(not o["reject"] for o in own))
        two = c.get("/v1/monitor/risk", params={"model": "mnist1d-maxsup"}, headers=REV).json()
        assert all(e["labels"] == e["pending_audits"] == 0 for e in two["epochs"])


def test_a_cascade_whose_system_risk_alarms_defers_at_every_stage(repo, tmp_path):
    """``--on-risk-alarm defer`` holds for the cascade's epoch: once its audits alarm, every
    sample is deferred, while a stage model served beside it keeps answering."""
    with np.load(repo / "mnist1d-maxsup" / "1" / "probe.npz") as f:
        x = f["x"][:150].astype(np.float32)
    stage, reject, sha = _expected_stages(repo, x)
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                      state_dir=tmp_path / "state", reviewer_key="rev", audit_rate=1.0,
                      on_risk_alarm="defer")
    with running_server(s) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/models/mnist1d-cascade/predict", json={"instances": x.tolist()})
        rid = r.headers["x-request-id"]
        rows = _recorded(c, rid, len(x))
        for i in np.flatnonzero(~reject)[:40].tolist():       # 40 wrong of 40: far above r*
            label = (int(rows[i]["label"]) + 1) % 10
            assert c.post("/v1/feedback", json={"request_id": rid, "index": i, "label": label},
                          headers=REV).status_code == 201
        deadline = time.monotonic() + 20                       # the guard runs every 5 s
        while time.monotonic() < deadline:
            alarms = c.get("/v1/review/queue", headers=REV).json()["risk_alarms"]
            if alarms:
                break
            time.sleep(0.2)
        (alarm,) = alarms
        assert (alarm["model"], alarm["calibration_sha256"]) == ("mnist1d-cascade", sha)
        preds = c.post("/v1/models/mnist1d-cascade/predict",
                       json={"instances": x.tolist()}).json()["predictions"]
        assert all(p["reject"] for p in preds)
        assert {p["stage"] for p in preds} == {2}              # deferred: at the last stage
        own = c.post("/v1/models/mnist1d-mlp/predict", json={"instances": x.tolist()}).json()
        assert not all(p["reject"] for p in own["predictions"])   # the stage model's own rule
