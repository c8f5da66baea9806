"""Decision store, recorder and review API against real SQLite and a real PostgreSQL server.

Every test runs twice: on a SQLite store in a temp dir and on a fresh database of a throw-away
PostgreSQL cluster this module starts (tests/loop_support.py).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from loop_support import submit_batch
from prometheus_client import CollectorRegistry, generate_latest

from serve.feedback.access import ReviewAccess
from serve.feedback.api import create_router
from serve.feedback.gauges import LoopMetrics
from serve.feedback.recorder import Recorder
from serve.feedback.store import Store, StoreError


def _recorder(location: str, **kw) -> Recorder:
    kw.setdefault("flush_interval_s", 0.02)
    return Recorder(Store(location), metrics=LoopMetrics(CollectorRegistry()), seed=0, **kw)


def _client(location: str, access: ReviewAccess | None = None) -> TestClient:
    app = FastAPI()
    app.include_router(create_router(Store(location), access or ReviewAccess(open=True)))
    return TestClient(app)


def test_records_round_trip_and_survive_reopening(location: str) -> None:
    rec = _recorder(location, audit_rate=0.5, store_inputs=True).start()
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    rejects = np.array([True, False] * 5)
    ids = submit_batch(rec, 10, rejects=rejects, inputs=x)
    assert rec.flush(10)
    rec.close()
    store = Store(location)                                 # a restart: a new connection
    rows = [store.request(i)[0] for i in ids]
    assert [r["reject"] for r in rows] == rejects.tolist()
    for i, r in enumerate(rows):                     # top-k and inputs only for review items
        if r["reject"] or r["audit"]:
            assert r["input"] == x[i].tolist() and len(r["topk"]) == 3
        else:
            assert r["input"] is None and r["topk"] is None
    assert any(not (r["reject"] or r["audit"]) for r in rows)
    audited = np.array([r["audit"] for r in rows])
    assert all(r["review"] == ("pending" if (r["reject"] or r["audit"]) else "none") for r in rows)
    assert len(store.queue("deferred", 100)) == 5
    assert len(store.queue("audit", 100)) == audited.sum()
    store.close()


def test_inputs_are_not_kept_without_store_inputs(location: str) -> None:
    rec = _recorder(location).start()
    ids = submit_batch(rec, 3, inputs=np.ones((3, 4), np.float32), rejects=np.ones(3, bool))
    rec.close()
    assert Store(location).request(ids[0])[0]["input"] is None


def test_feedback_idempotent_conflict_unknown_and_bad_label(location: str) -> None:
    rec = _recorder(location).start()
    ids = submit_batch(rec, 4, rejects=np.ones(4, bool), audit=np.zeros(4, bool))
    rec.close()
    c = _client(location)
    fb = {"request_id": ids[0], "index": 0, "label": "bee", "annotator": "ann"}
    first = c.post("/v1/feedback", json=fb)
    assert first.status_code == 201 and first.json()["label"] == 1
    assert c.post("/v1/feedback", json=fb).status_code == 200
    assert c.post("/v1/feedback", json={**fb, "label": 1}).status_code == 200  # index == name
    conflict = c.post("/v1/feedback", json={**fb, "label": "cat"})
    assert conflict.status_code == 409 and "different label" in conflict.json()["error"]
    assert c.post("/v1/feedback", json={**fb, "request_id": "nope"}).status_code == 404
    assert c.post("/v1/feedback", json={**fb, "index": 3}).status_code == 404
    bad = c.post("/v1/feedback", json={**fb, "request_id": ids[1], "label": "cow"})
    assert bad.status_code == 422 and "ant" in bad.json()["error"]
    assert c.post("/v1/feedback", json={**fb, "request_id": ids[1], "label": 7}).status_code == 422
    detail = c.get(f"/v1/requests/{ids[0]}").json()["samples"][0]
    assert detail["human_label"] == "bee" and detail["annotator"] == "ann"
    assert detail["review"] == "labelled"
    queue = c.get("/v1/review/queue?kind=deferred").json()["items"]
    assert [i["request_id"] for i in queue] == ids[1:]      # oldest first, labelled one gone
    assert c.get("/v1/requests/none").status_code == 404


def test_review_items_expire_and_are_counted(location: str) -> None:
    rec = _recorder(location, review_ttl_s=0.05, maintenance_s=0.05).start()
    submit_batch(rec, 5, rejects=np.ones(5, bool))
    assert rec.flush(10)
    deadline = time.monotonic() + 10
    while rec.metrics.expired._value.get() < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rec.metrics.expired._value.get() == 5
    assert rec.store.queue("deferred", 10) == []
    rec.close()


def test_the_review_api_takes_the_reviewer_or_admin_key_never_the_api_key(location: str) -> None:
    c = _client(location, ReviewAccess(reviewer="r", admin="d", api="a"))
    assert c.get("/v1/review/queue").status_code == 401
    assert c.get("/v1/review/queue", headers={"Authorization": "Bearer x"}).status_code == 401
    client = c.get("/v1/review/queue", headers={"Authorization": "Bearer a"})
    assert client.status_code == 403 and "inference only" in client.json()["error"]
    for key in ("r", "d"):
        assert c.get("/v1/review/queue", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    off = _client(location, ReviewAccess(api="a")).get("/v1/review/queue",
                                                       headers={"Authorization": "Bearer a"})
    assert off.status_code == 404 and "--reviewer-key-file" in off.json()["error"]


def test_monitor_risk_counts_labelled_audited_accepted_samples_only(location: str) -> None:
    rec = _recorder(location).start()
    n = 60
    audit = np.zeros(n, bool)
    audit[:40] = True
    rejects = np.zeros(n, bool)
    rejects[30:50] = True          # 30 audited accepted, 10 audited deferred, 10 deferred only
    ids = submit_batch(rec, n, rejects=rejects, audit=audit, target_risk=0.02)
    rec.close()
    c = _client(location)
    store = Store(location)
    for i in [*range(20), *range(30, 45)]:
        pred = store.request(ids[i])[0]["label"]
        wrong = i in (0, 31)
        c.post("/v1/feedback", json={"request_id": ids[i], "label": (pred + 1) % 4 if wrong else pred})
    body = c.get("/v1/monitor/risk?model=clf").json()
    (epoch,) = body["epochs"]
    assert "audited ACCEPTED samples only" in body["note"]
    assert epoch["current"] is None                     # no server repository to say which
    assert (epoch["labels"], epoch["errors"], epoch["pending_audits"]) == (20, 1, 10)
    assert epoch["expired_audits"] == 0 and epoch["status_basis"] == "labelled"
    assert epoch["labels_to_ok"] is None and epoch["labels_to_alarm"] > 0   # 1/20 > r* = 0.02
    assert epoch["status"] == "insufficient" and epoch["target_risk"] == 0.02
    assert 0 < epoch["lower"] < 0.05 < epoch["upper"] < epoch["upper_pessimistic"]
    assert c.get("/v1/monitor/risk?model=other").json()["epochs"] == []


def test_overflow_drops_and_counts_and_submit_never_blocks(location: str) -> None:
    reg = CollectorRegistry()
    rec = Recorder(Store(location), capacity=100, metrics=LoopMetrics(reg))   # not started: full
    submit_batch(rec, 60, prefix="a")
    submit_batch(rec, 60, prefix="b")                       # does not fit: dropped whole
    assert rec.dropped == 60
    assert b'abstain_records_dropped_total{reason="queue_full"} 60.0' in generate_latest(reg)
    rec.start()
    assert rec.flush(10)
    rec.close()
    assert Store(location).count() == 60


class SlowStore(Store):
    def insert_records(self, rows):
        time.sleep(0.5)
        super().insert_records(rows)


class DownStore(Store):
    def insert_records(self, rows):
        raise OSError("connection refused")


def test_a_slow_or_down_store_never_slows_submit(location: str) -> None:
    for cls in (SlowStore, DownStore):
        rec = Recorder(cls(location), flush_interval_s=0.01, metrics=LoopMetrics(CollectorRegistry()))
        rec.start()
        t0 = time.perf_counter()
        for b in range(50):
            submit_batch(rec, 32, prefix=f"{cls.__name__}{b}-")
        assert time.perf_counter() - t0 < 0.5                # 50 batches, incl. building them
        rec.close(timeout=2)
        if cls is DownStore:
            assert rec.dropped == 50 * 32 and rec.written == 0
    assert Store(location).count() > 0


def test_unwritable_state_dir_is_a_clear_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="state directory"):
        Store(blocker / "state")
