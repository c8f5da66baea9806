"""The feedback loop through real `abstain serve` processes, on SQLite and on a real PostgreSQL.

kill -9 mid-traffic keeps every flushed record; SIGTERM flushes the queue; two servers sharing
PostgreSQL see one review queue; labels through the API reach /v1/monitor/risk and the metrics;
recalibrating from feedback is hot-reloaded as a new live-risk epoch.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from loop_support import fresh_database, store_location
from server_support import make_version, server_process

from serve.feedback.store import Store

KEY = {"Authorization": "Bearer k"}                  # the inference clients' API key
REV = {"Authorization": "Bearer rev"}                # the reviewers' key: the review API
CLASSES = ["ant", "bee", "cat", "dog"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_version(root, "clf", 1, seed=1)
    return root





def _predict(url: str, n: int = 4, seed: int = 0, client: httpx.Client | None = None) -> str:
    x = np.random.default_rng(seed).normal(1.0, 2.0, (n, 8)).round(4).tolist()
    r = (client or httpx).post(f"{url}/v1/models/clf/predict", json={"instances": x}, headers=KEY,
                               timeout=10)
    r.raise_for_status()
    assert "audit" not in r.text                        # the audit flag is never shown
    return r.json()["id"]


def _traffic(url: str, stop: threading.Event, served: list[str], seed: int) -> None:
    with httpx.Client() as c:
        i = 0
        while not stop.is_set():
            try:
                served.append(_predict(url, 4, seed * 100_000 + i, c))
            except httpx.HTTPError:
                return
            i += 1


def _wait_recorded(url: str, rid: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/v1/requests/{rid}", headers=REV, timeout=5)
        if r.status_code == 200:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"request {rid} was not recorded within {timeout} s")


def _env(store_env: dict[str, str], **extra: str) -> dict[str, str]:
    return {"ABSTAIN_API_KEY": "k", "ABSTAIN_REVIEWER_KEY": "rev", "ABSTAIN_AUDIT_RATE": "0.3",
            "ABSTAIN_STORE_INPUTS": "true", **store_env, **extra}


def test_kill_9_mid_traffic_keeps_every_flushed_record(repo: Path, store_env) -> None:
    flushed: dict[str, list] = {}
    with server_process(repo, env=_env(store_env)) as (url, proc):
        stop, served = threading.Event(), []
        workers = [threading.Thread(target=_traffic, args=(url, stop, served, s)) for s in range(4)]
        for w in workers:
            w.start()
        time.sleep(1.5)
        for rid in list(served[:40]):                   # these are flushed: the API reads them back
            body = _wait_recorded(url, rid)
            flushed[rid] = [(s["label"], s["score"], s["reject"]) for s in body["samples"]]
        proc.send_signal(signal.SIGKILL)                # mid-traffic
        proc.wait(10)
        stop.set()
        for w in workers:
            w.join(10)
    assert len(served) > 40
    store = Store(store_location(store_env))
    for rid, samples in flushed.items():
        rows = store.request(rid)
        assert [(CLASSES[r["label"]], r["score"], r["reject"]) for r in rows] == samples
        assert len(rows) == 4
        assert all((r["input"] is not None) == (r["reject"] or r["audit"]) for r in rows)
    if not store.postgres:
        with store._tx() as cur:
            cur.execute("PRAGMA integrity_check")
            assert cur.fetchone()[0] == "ok"
    total = store.count()
    store.close()
    # the restarted server serves the same store
    with server_process(repo, env=_env(store_env)) as (url, _):
        queue = httpx.get(f"{url}/v1/review/queue?kind=deferred&limit=1000", headers=REV).json()
        assert queue["items"] and all(i["reject"] for i in queue["items"])
        _wait_recorded(url, _predict(url, seed=999))
    assert Store(store_location(store_env)).count() == total + 4


def test_sigterm_flushes_the_queue(repo: Path, store_env) -> None:
    with server_process(repo, env=_env(store_env)) as (url, proc):
        ids = [_predict(url, 2, seed=i) for i in range(30)]
        proc.send_signal(signal.SIGTERM)                # right away: records are still queued
        assert proc.wait(30) in (0, -signal.SIGTERM)     # uvicorn re-raises the signal it handled
    store = Store(store_location(store_env))
    assert all(len(store.request(rid)) == 2 for rid in ids)


def test_label_with_the_api_and_watch_live_risk(repo: Path, store_env) -> None:
    env = _env(store_env, ABSTAIN_AUDIT_RATE="1.0")
    with server_process(repo, env=env) as (url, _):
        rid = _predict(url, 8)
        body = _wait_recorded(url, rid)
        assert httpx.get(f"{url}/v1/review/queue?kind=audit").status_code == 401
        queue = httpx.get(f"{url}/v1/review/queue?kind=audit", headers=REV).json()["items"]
        assert {(i["request_id"], i["index"]) for i in queue} == {(rid, k) for k in range(8)}
        assert queue[0]["top_k"][0]["label"] in ("ant", "bee", "cat", "dog")
        accepted = [s for s in body["samples"] if not s["reject"]]
        for s in body["samples"]:
            r = httpx.post(f"{url}/v1/feedback", headers=REV, json={
                "request_id": rid, "index": s["index"], "label": s["label"], "annotator": "me"})
            assert r.status_code == 201
        risk = httpx.get(f"{url}/v1/monitor/risk?model=clf&version=1", headers=REV).json()
        (epoch,) = risk["epochs"]
        assert epoch["labels"] == len(accepted) and epoch["errors"] == 0
        assert epoch["pending_audits"] == 0 and epoch["status"] == "insufficient"
        deadline = time.monotonic() + 15                # the gauges refresh every 5 s
        while time.monotonic() < deadline:
            text = httpx.get(f"{url}/metrics").text
            if f'abstain_live_risk_labels{{calibration="{epoch["calibration_sha256"][:12]}",' \
               f'model="clf",version="1"}} {float(len(accepted))}' in text:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("abstain_live_risk_labels did not reach the metrics")
        assert "abstain_live_risk_upper" in text and 'abstain_records_dropped_total{reason="queue_full"} 0.0' in text


def test_two_servers_sharing_postgresql_see_one_queue(repo: Path, pg_cluster) -> None:
    env = _env({"ABSTAIN_DATABASE_URL": fresh_database(pg_cluster)}, ABSTAIN_AUDIT_RATE="1.0")
    with server_process(repo, env=env) as (a, _), server_process(repo, env=env) as (b, _):
        ra, rb = _predict(a, 3, seed=1), _predict(b, 3, seed=2)
        _wait_recorded(a, rb)
        _wait_recorded(b, ra)
        qa = httpx.get(f"{a}/v1/review/queue?kind=audit", headers=REV).json()["items"]
        qb = httpx.get(f"{b}/v1/review/queue?kind=audit", headers=REV).json()["items"]
        assert qa == qb and {i["request_id"] for i in qa} == {ra, rb}
        r = httpx.post(f"{b}/v1/feedback", headers=REV, json={"request_id": ra, "label": "ant"})
        assert r.status_code == 201
        again = httpx.post(f"{a}/v1/feedback", headers=REV, json={"request_id": ra, "label": "bee"})
        assert again.status_code == 409
        assert httpx.get(f"{a}/v1/requests/{ra}", headers=REV).json()["samples"][0]["human_label"] == "ant"
        assert len(httpx.get(f"{a}/v1/review/queue?kind=audit", headers=REV).json()["items"]) == 5


def test_recalibration_from_feedback_is_hot_reloaded_as_a_new_epoch(tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = tmp_path / "models"
    vdir = make_version(repo, "clf", 1, seed=1)
    state = tmp_path / "state"
    env = _env({"ABSTAIN_STATE_DIR": str(state)}, ABSTAIN_AUDIT_RATE="1.0",
               ABSTAIN_POLL_INTERVAL_S="0.5")
    with server_process(repo, env=env) as (url, _):
        rids = [_predict(url, 50, seed=s) for s in range(4)]
        for rid in rids:
            for s in _wait_recorded(url, rid)["samples"]:   # reviewers confirm every prediction
                r = httpx.post(f"{url}/v1/feedback", headers=REV,
                               json={"request_id": rid, "index": s["index"], "label": s["label"]})
                assert r.status_code == 201
        (before,) = httpx.get(f"{url}/v1/monitor/risk", headers=REV).json()["epochs"]
        res = subprocess.run([sys.executable, "-m", "serve.cli.main", "calibrate", str(vdir),
                              "--from-feedback", str(state), "--write"], capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 20
        while True:                                      # the poll reloads the new calibration
            rid = _predict(url, 4, seed=99)
            sha = _wait_recorded(url, rid)["samples"][0]["calibration_sha256"]
            if sha != before["calibration_sha256"]:
                break
            assert time.monotonic() < deadline, "the new calibration was not hot-reloaded"
            time.sleep(0.5)
        epochs = httpx.get(f"{url}/v1/monitor/risk?model=clf", headers=REV).json()["epochs"]
        assert {e["calibration_sha256"] for e in epochs} == {before["calibration_sha256"], sha}
        assert next(e for e in epochs if e["calibration_sha256"] == sha)["labels"] == 0
        assert {e["calibration_sha256"]: e["current"] for e in epochs} == {
            before["calibration_sha256"]: False, sha: True}
        assert before["current"] is True


def test_reviewers_see_the_probabilities_clients_get(tmp_path: Path) -> None:
    """With probabilities at their own temperature (calibration.json's probability_temperature),
    the review queue's top-k are the client's ``probabilities``, not softmax at the score's T."""
    import dataclasses

    from serve.calibration.artifact import load_calibration, save_calibration

    vdir = make_version(tmp_path / "models", "clf", 1, seed=1)
    cal = load_calibration(vdir)
    save_calibration(dataclasses.replace(cal, probability_temperature=0.4 * cal.temperature), vdir)
    env = _env({"ABSTAIN_STATE_DIR": str(tmp_path / "state")}, ABSTAIN_AUDIT_RATE="1.0",
               ABSTAIN_REVIEWER_KEY="rev")
    x = np.random.default_rng(3).normal(1.0, 2.0, (6, 8)).round(4).tolist()
    with server_process(tmp_path / "models", env=env) as (url, _):
        r = httpx.post(f"{url}/v1/models/clf/predict", json={"instances": x, "top_k": 3},
                       headers=KEY, timeout=10)
        r.raise_for_status()
        body = r.json()
        _wait_recorded(url, body["id"])
        queue = httpx.get(f"{url}/v1/review/queue?kind=audit",
                          headers={"Authorization": "Bearer rev"}).json()["items"]
    assert len(queue) == 6
    for item in queue:
        served = body["predictions"][item["index"]]["probabilities"]       # class name → p
        reviewed = {t["label"]: t["probability"] for t in item["top_k"]}
        assert list(reviewed) == list(served)
        assert all(abs(reviewed[k] - served[k]) <= 5e-7 for k in served), (reviewed, served)
    top = [p["probabilities"][p["class_name"]] for p in body["predictions"]]
    scores = [p["score"] for p in body["predictions"]]
    assert cal.score == "msp" and min(abs(a - b) for a, b in zip(top, scores, strict=True)) > 1e-3
