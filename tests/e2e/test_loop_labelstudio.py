"""The review queue through a real Label Studio on loopback (its own venv, started here).

A deferred request becomes a task with the model's prediction pre-annotated; an annotation made
through Label Studio's API comes back as feedback (by sync and by webhook), and
/v1/monitor/risk counts it. Syncing twice imports nothing twice.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from loop_support import LS_TOKEN, label_studio
from server_support import ROOT, make_version, server_process

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
]
LS_AUTH = {"Authorization": f"Token {LS_TOKEN}"}
SECRET = "hook-secret"
REV = {"Authorization": "Bearer rev"}             # the review API needs the reviewer key


def _sync(ls: str, state: Path, *extra: str) -> str:
    r = subprocess.run([sys.executable, "-m", "serve.cli.review", "review", "sync",
                        "--label-studio", ls, "--token", LS_TOKEN, "--project", "abstain-e2e",
                        "--model", "clf", "--store", str(state), *extra],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _annotate(ls: str, task_id: int, label: str) -> None:
    r = httpx.post(f"{ls}/api/tasks/{task_id}/annotations", headers=LS_AUTH, timeout=30, json={
        "result": [{"from_name": "label", "to_name": "input", "type": "choices",
                    "value": {"choices": [label]}}]})
    assert r.status_code == 201, r.text


def test_label_studio_round_trip(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    make_version(repo, "clf", 1, seed=1)
    state = tmp_path / "state"
    env = {"ABSTAIN_STATE_DIR": str(state), "ABSTAIN_AUDIT_RATE": "1.0",
           "ABSTAIN_STORE_INPUTS": "true", "ABSTAIN_REVIEW_WEBHOOK_SECRET": SECRET,
           "ABSTAIN_REVIEWER_KEY": "rev"}
    with label_studio() as ls, server_process(repo, env=env) as (url, _):
        x = np.random.default_rng(0).normal(1.0, 2.0, (12, 8)).round(3).tolist()
        rid = httpx.post(f"{url}/v1/models/clf/predict", json={"instances": x}).json()["id"]
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/v1/requests/{rid}", headers=REV).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        samples = httpx.get(f"{url}/v1/requests/{rid}", headers=REV).json()["samples"]
        assert any(s["reject"] for s in samples) and any(not s["reject"] for s in samples)

        out = _sync(ls, state, "--webhook", f"{url}/v1/review/labelstudio", "--webhook-secret", SECRET)
        assert "pushed 12 new tasks" in out
        assert "pushed 0 new tasks (12 already there)" in _sync(ls, state)      # idempotent
        pid = httpx.get(f"{ls}/api/projects", headers=LS_AUTH).json()["results"][0]["id"]
        tasks = httpx.get(f"{ls}/api/projects/{pid}/export", headers=LS_AUTH,
                          params={"exportType": "JSON", "download_all_tasks": "true"}).json()
        by_index = {t["data"]["index"]: t for t in tasks}
        deferred = next(s for s in samples if s["reject"])
        accepted = [s for s in samples if not s["reject"]]
        task = by_index[deferred["index"]]
        assert task["data"]["kind"] == "deferred" and task["data"]["request_id"] == rid
        (pred,) = httpx.get(f"{ls}/api/predictions", headers=LS_AUTH,
                            params={"task": task["id"]}).json()
        assert pred["result"][0]["value"]["choices"] == [deferred["label"]]

        # labels pulled by sync: a deferred sample, and an accepted one labelled wrong
        wrong = next(c for c in ("ant", "bee", "cat", "dog") if c != accepted[0]["label"])
        _annotate(ls, by_index[deferred["index"]]["id"], "bee")
        _annotate(ls, by_index[accepted[0]["index"]]["id"], wrong)
        assert "pushed 0" in _sync(ls, state)
        got = {s["index"]: s for s in httpx.get(f"{url}/v1/requests/{rid}", headers=REV).json()["samples"]}
        assert got[deferred["index"]]["human_label"] == "bee"
        assert got[deferred["index"]]["feedback_source"] == "label-studio"
        assert "2 unchanged" in _sync(ls, state)                               # resumable
        (epoch,) = httpx.get(f"{url}/v1/monitor/risk?model=clf", headers=REV).json()["epochs"]
        assert (epoch["labels"], epoch["errors"]) == (1, 1)

        # a label through Label Studio's webhook arrives without a sync
        _annotate(ls, by_index[accepted[1]["index"]]["id"], accepted[1]["label"])
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/v1/requests/{rid}", headers=REV).json()["samples"][accepted[1]["index"]][
                "human_label"] != accepted[1]["label"]:
            assert time.monotonic() < deadline, "the webhook did not deliver the label"
            time.sleep(0.5)
        (epoch,) = httpx.get(f"{url}/v1/monitor/risk?model=clf", headers=REV).json()["epochs"]
        assert (epoch["labels"], epoch["errors"]) == (2, 1)
        bad = httpx.post(f"{url}/v1/review/labelstudio", json={"action": "ANNOTATION_CREATED"},
                         headers={"X-Abstain-Webhook-Secret": "wrong"})
        assert bad.status_code == 401
