"""``--on-risk-alarm defer`` on a real `abstain serve` process: once the live-risk bound alarms,
every prediction is deferred (from the flush that raised the alarm on); a new calibration,
hot-reloaded, clears it and retires the old calibration's live-risk series."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import numpy as np
from server_support import VECTOR_CLASSES, make_version, server_process, write_calibration

KEY = {"Authorization": "Bearer k"}                  # inference
REV = {"Authorization": "Bearer rev"}                # the review API


def _predict(url: str, n: int, seed: int) -> dict:
    x = np.random.default_rng(seed).normal(1.0, 2.0, (n, 8)).round(4).tolist()
    r = httpx.post(f"{url}/v1/models/clf/predict", json={"instances": x}, headers=KEY, timeout=10)
    r.raise_for_status()
    return r.json()


def _samples(url: str, rid: str, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/v1/requests/{rid}", headers=REV, timeout=5)
        if r.status_code == 200:
            return r.json()["samples"]
        time.sleep(0.05)
    raise AssertionError(f"request {rid} was not recorded within {timeout} s")


def _gauge(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def _wait_gauge(url: str, name: str, value: float, timeout: float = 20.0, **labels: str) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics", timeout=5).text
        if _gauge(text, name, **labels) == value:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{name}{labels} did not reach {value} within {timeout} s")


def test_defer_on_alarm_then_resume_after_a_new_calibration(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    vdir = make_version(repo, "clf", 1, seed=1)
    env = {"ABSTAIN_API_KEY": "k", "ABSTAIN_REVIEWER_KEY": "rev", "ABSTAIN_AUDIT_RATE": "1.0",
           "ABSTAIN_STATE_DIR": str(tmp_path / "state"), "ABSTAIN_POLL_INTERVAL_S": "0.5",
           "ABSTAIN_ON_RISK_ALARM": "defer"}
    mv = {"model": "clf", "version": "1"}
    with server_process(repo, env=env) as (url, _):
        first = _predict(url, 64, seed=0)
        assert not all(p["reject"] for p in first["predictions"])   # the threshold accepts some
        labelled = 0
        for s in _samples(url, first["id"]):                       # reviewers: every accepted
            if not s["reject"]:                                     # prediction was wrong
                wrong = (VECTOR_CLASSES.index(s["label"]) + 1) % 4
                r = httpx.post(f"{url}/v1/feedback", headers=REV, json={
                    "request_id": first["id"], "index": s["index"], "label": wrong})
                assert r.status_code == 201
                labelled += 1
        assert labelled >= 10
        (epoch,) = httpx.get(f"{url}/v1/monitor/risk", headers=REV).json()["epochs"]
        assert epoch["status"] == "alarm" and epoch["lower"] > epoch["target_risk"]
        old = epoch["calibration_sha256"]
        text = _wait_gauge(url, "abstain_risk_alarm_active", 1.0, **mv)
        # The flag and the gauge are set in the same pass: the very next batch is deferred.
        for seed in range(1, 4):
            assert all(p["reject"] for p in _predict(url, 32, seed)["predictions"])
        assert _gauge(text, "abstain_live_risk_status", calibration=old[:12], **mv) == 3.0
        queue = httpx.get(f"{url}/v1/review/queue?kind=audit&limit=1", headers=REV).json()
        (alarm,) = queue["risk_alarms"]
        assert alarm["calibration_sha256"] == old and alarm["policy"] == "defer"
        assert "lower bound" in alarm["reasons"][0] and "deferred" in alarm["action"]

        write_calibration(vdir, threshold=0.55)                     # a new calibration
        deadline = time.monotonic() + 20
        while True:                                                 # the poll reloads it
            out = _predict(url, 64, seed=7)
            if not all(p["reject"] for p in out["predictions"]):
                break
            assert time.monotonic() < deadline, "serving did not resume after the new calibration"
            time.sleep(0.2)
        assert _samples(url, out["id"])[0]["calibration_sha256"] != old
        text = _wait_gauge(url, "abstain_risk_alarm_active", 0.0, **mv)
        assert _wait_retired(url, old)
        assert httpx.get(f"{url}/v1/review/queue", headers=REV).json()["risk_alarms"] == []


def _wait_retired(url: str, sha: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f'calibration="{sha[:12]}"' not in httpx.get(f"{url}/metrics", timeout=5).text:
            return True
        time.sleep(0.2)
    raise AssertionError("the old calibration's live-risk series were not retired")
