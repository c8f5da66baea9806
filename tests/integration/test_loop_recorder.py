"""The recorder never stalls (issue 28, High 2), against real SQLite and a real PostgreSQL.

A row the store refuses is set aside and counted while the rest of its chunk is written; an
outage is retried with a backoff that traffic does not cut short, logged once; a key already
stored is counted as a conflict; retention deletes what nothing needs and keeps the audited and
labelled rows of the calibrations still served (and their lineage).
"""

from __future__ import annotations

import logging
import time

import numpy as np
from loop_support import submit_batch
from prometheus_client import CollectorRegistry, generate_latest

from serve.feedback.gauges import LoopMetrics
from serve.feedback.recorder import Recorder
from serve.feedback.store import Store


def _recorder(store: Store, **kw) -> Recorder:
    kw.setdefault("flush_interval_s", 0.02)
    return Recorder(store, metrics=LoopMetrics(CollectorRegistry()), seed=0, **kw)


def _dropped(rec: Recorder, reason: str) -> float:
    return rec.metrics.dropped.labels(reason)._value.get()


def _submit(rec: Recorder, ids: list[str], seed: int = 0) -> None:
    n = len(ids)
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4), n)
    rec.submit("clf", "1", "c" * 64, ids, np.zeros(n, np.int64), probs.argmax(1), probs.max(1),
               np.zeros(n, bool), np.zeros(n, bool), probs, class_names=list("abcd"))


def test_a_row_the_store_refuses_is_set_aside_and_the_rest_written(location, caplog) -> None:
    """NUL (PostgreSQL) or a lone surrogate (both) in one key used to fail every later write."""
    caplog.set_level(logging.WARNING)
    rec = _recorder(Store(location)).start()
    for b in range(3):
        ids = [f"b{b}-{i}" for i in range(100)]
        ids[17 + b] = "evil\x00\ud800"
        _submit(rec, ids, seed=b)
    assert rec.flush(30)
    assert rec.written == 297 and rec.store.count() == 297
    assert _dropped(rec, "rejected") == 3 and rec.dropped == 3
    refused = [r for r in caplog.records if "refused a record" in r.getMessage()]
    assert len(refused) == 1                               # once per interval, not per row
    _submit(rec, ["after"])                                # and it keeps writing
    assert rec.flush(10) and rec.store.count() == 298
    rec.close()


def test_a_key_already_stored_is_counted_as_a_conflict(location) -> None:
    rec = _recorder(Store(location)).start()
    _submit(rec, ["a", "b", "c"])
    assert rec.flush(10)
    _submit(rec, ["a", "b", "d"])
    assert rec.flush(10)
    assert rec.written == 4 == rec.store.count() and _dropped(rec, "conflict") == 2
    text = generate_latest(rec.metrics.registry).decode()
    assert 'abstain_records_dropped_total{reason="conflict"} 2.0' in text
    assert "abstain_records_written_total 4.0" in text
    rec.close()


class FlakyStore(Store):
    """Down (connection refused) for its first ``down`` writes, then up; counts the tries."""

    down = 3

    def insert_records(self, rows):
        self.tries = getattr(self, "tries", 0) + 1
        self.times = [*getattr(self, "times", []), time.monotonic()]
        if self.tries <= self.down:
            raise OSError("connection refused")
        return super().insert_records(rows)


def test_an_outage_backs_off_under_load_and_loses_nothing(location, caplog) -> None:
    """The backoff used to be cut short by every full chunk (536 WARNINGs in a 16 s outage)."""
    caplog.set_level(logging.WARNING)
    store = FlakyStore(location)
    rec = _recorder(store, chunk_rows=50).start()
    t0, k = time.monotonic(), 0
    while time.monotonic() - t0 < 2.5:                     # load: every batch wakes the flusher
        submit_batch(rec, 60, prefix=f"L{k}-")
        k += 1
        time.sleep(0.005)
    assert store.tries <= 3, store.times                   # tries at ~0, 0.5, 1.5 s
    assert rec.flush(15)
    assert store.count() == 60 * k and rec.dropped == 0 and rec.written == 60 * k
    gaps = np.diff(store.times[:4])
    assert (gaps[:3] >= [0.45, 0.95, 1.95]).all(), gaps     # 0.5, 1, 2 s
    outage = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outage) == 1 and any("is back" in r.getMessage() for r in caplog.records)
    rec.close()


def test_retention_deletes_old_rows_nothing_needs(location) -> None:
    day = 86400.0
    rec = _recorder(Store(location), retention_s=30 * day, review_ttl_s=10 * day)
    old, cur, other = "0" * 64, "1" * 64, "2" * 64       # cur's lineage: [old]; other: none
    rng = np.random.default_rng(0)

    def batch(sha: str, prefix: str, audit: np.ndarray, reject: np.ndarray, lineage=()):
        n = len(audit)
        p = rng.dirichlet(np.ones(4), n)
        ids = [f"{prefix}{i}" for i in range(n)]
        rec.submit("clf", "1", sha, ids, np.zeros(n, np.int64), p.argmax(1), p.max(1), reject,
                   audit, p, class_names=list("abcd"), target_risk=0.1, lineage=list(lineage))
        return ids

    a = np.array([True, True, False, False, False, False])
    r = np.array([False, True, False, True, True, False])
    ids_old = batch(old, "o", a, r)
    ids_other = batch(other, "x", a, r)
    ids_cur = batch(cur, "c", a, r, lineage=[old])
    rec.start()
    assert rec.flush(10)
    store = rec.store
    for ids in (ids_old, ids_other, ids_cur):
        store.add_feedback(ids[0], 0, 1, "test", None)      # an audited label
        store.add_feedback(ids[3], 0, 1, "test", None)      # a deferred-only label
    with store._tx(write=True) as cur_:                     # 40 days ago, except cur's last row
        cur_.execute(store._sql("UPDATE records SET ts = ts - ? WHERE request_id <> ?"),
                     (40 * day, ids_cur[5]))
        cur_.execute(store._sql("UPDATE records SET review = 'expired' WHERE request_id = ?"),
                     (ids_cur[4],))
    with store._tx(write=True) as cur_:                     # `other` was last served 40 days ago
        cur_.execute(store._sql("UPDATE kv SET value = ? WHERE key = ?"),
                     ('{"seen": 0, "lineage": []}', f"epoch:clf/1/{other}"))
    rec._epochs.pop(("clf", "1", other))
    deleted = rec.sweep()
    left = {(r["request_id"]) for r in store.queue("deferred", 100) + store.queue("audit", 100)}
    kept = {rid for rid in ids_old + ids_other + ids_cur if store.request(rid)}
    # old (in cur's lineage) and cur: labelled and audited rows stay, as do pending review items
    # and the young row; accepted unaudited old rows and expired items go; other's all go but
    # its pending review items.
    assert kept == {ids_old[0], ids_old[1], ids_old[3], ids_old[4],
                    ids_cur[0], ids_cur[1], ids_cur[3], ids_cur[5],
                    ids_other[1], ids_other[4]}, kept
    assert deleted == 18 - len(kept) == rec.swept
    assert {ids_old[1], ids_old[4], ids_cur[1], ids_other[1], ids_other[4]} <= left
    with store._tx() as cur_:
        cur_.execute("SELECT COUNT(*) FROM feedback")
        assert cur_.fetchone()[0] == 4                      # other's two labels went with it
    rec.close()


OLD_SCHEMA = """CREATE TABLE records (
    request_id TEXT NOT NULL, idx INTEGER NOT NULL, ts DOUBLE PRECISION NOT NULL,
    model TEXT NOT NULL, version TEXT NOT NULL, calibration_sha256 TEXT NOT NULL,
    label INTEGER NOT NULL, score DOUBLE PRECISION NOT NULL, reject INTEGER NOT NULL,
    audit INTEGER NOT NULL, topk TEXT, input TEXT, review TEXT NOT NULL, expires DOUBLE PRECISION,
    PRIMARY KEY (request_id, idx))"""


def test_a_store_of_the_previous_release_is_migrated_in_place(location) -> None:
    """The first release's table (no client_id, inputs as JSON text) gains the new columns; its
    rows read as before, and new rows are written beside them."""
    if location.startswith("postgresql"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            conn.execute(OLD_SCHEMA)
            conn.execute("INSERT INTO records VALUES ('old', 0, 1.0, 'clf', '1', 'c', 2, 0.5, 1, 0, "
                         "NULL, '[1.5, 2.0]', 'pending', NULL)")
    else:
        import sqlite3
        from pathlib import Path

        Path(location).mkdir(parents=True)
        with sqlite3.connect(Path(location) / "decisions.sqlite3") as conn:
            conn.execute(OLD_SCHEMA)
            conn.execute("INSERT INTO records VALUES ('old', 0, 1.0, 'clf', '1', 'c', 2, 0.5, 1, 0, "
                         "NULL, '[1.5, 2.0]', 'pending', NULL)")
    rec = _recorder(Store(location), store_inputs=True).start()
    (row,) = rec.store.request("old")
    assert row["input"] == [1.5, 2.0] and row["client_id"] is None and row["label"] == 2
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    rec.submit("clf", "1", "c", ["new"], None, np.array([1, 0]), np.array([0.4, 0.9]),
               np.array([True, True]), np.zeros(2, bool), None, x, sizes=[2],
               client_ids=["mine"], logits=np.zeros((2, 4)))
    assert rec.flush(10)
    rows = rec.store.request("new")
    assert [r["input"] for r in rows] == x.tolist() and rec.store.by_client_id("mine") == ["new"]
    rec.close()


PREVIOUS_COLUMNS = ("client_id TEXT", "input_blob {blob}", "input_dtype TEXT", "input_shape TEXT")


def test_a_store_without_stage_is_migrated_and_cascade_rows_carry_their_stage(location) -> None:
    """A store of the release before cascades were recorded (client ids, binary inputs, no
    ``stage``) gains the column on open: its rows read with stage None, and a cascade's rows are
    written beside them with their stages and counted per stage."""
    old = ("INSERT INTO records (request_id, idx, ts, model, version, calibration_sha256, label, "
           "score, reject, audit, review, client_id) VALUES ('old', 0, 1.0, 'clf', '1', 'c', 2, "
           "0.5, 0, 1, 'pending', 'theirs')")
    if location.startswith("postgresql"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            conn.execute(OLD_SCHEMA)
            for col in PREVIOUS_COLUMNS:
                conn.execute(f"ALTER TABLE records ADD COLUMN {col.format(blob='BYTEA')}")
            conn.execute(old)
    else:
        import sqlite3
        from pathlib import Path

        Path(location).mkdir(parents=True)
        with sqlite3.connect(Path(location) / "decisions.sqlite3") as conn:
            conn.execute(OLD_SCHEMA)
            for col in PREVIOUS_COLUMNS:
                conn.execute(f"ALTER TABLE records ADD COLUMN {col.format(blob='BLOB')}")
            conn.execute(old)
    rec = _recorder(Store(location)).start()
    (row,) = rec.store.request("old")
    assert row["stage"] is None and row["client_id"] == "theirs" and row["label"] == 2
    assert rec.store.audit_states_by_stage("clf", "1", "c") == {}
    stages = np.array([1, 1, 2, 2, 2])
    rec.submit("casc", "1", "s", ["new"], None, np.array([0, 1, 2, 3, 0]),
               np.full(5, 0.9), np.array([False, False, False, True, True]), np.ones(5, bool),
               sizes=[5], logits=np.zeros((5, 4)), temperature=np.array([1.0, 1.0, 2.0, 2.0, 2.0]),
               stages=stages)
    assert rec.flush(10)
    rows = rec.store.request("new")
    assert [r["stage"] for r in rows] == stages.tolist()
    assert all(len(r["topk"]) == 3 for r in rows)                  # every row is a review item
    rec.store.add_feedback("new", 0, 0, "api", None)                # stage 1: right
    rec.store.add_feedback("new", 2, 1, "api", None)                # stage 2: wrong
    assert rec.store.audit_states_by_stage("casc", "1", "s") == {1: (1, 0, 1, 0),
                                                                 2: (1, 1, 0, 0)}
    assert rec.store.audit_states("casc", "1", "s") == (2, 1, 1, 0)   # the system: both stages
    rec.close()
    reopened = Store(location)                                      # a second open: no change
    assert [r["stage"] for r in reopened.request("new")] == stages.tolist()
    reopened.close()


def test_a_full_sqlite_disk_is_logged_as_such_and_retried(tmp_path, caplog) -> None:
    """SQLite ends the transaction itself when the disk is full; the failed ROLLBACK after it
    ("cannot rollback - no transaction is active") used to be the only error logged."""

    class Full(Store):
        pages = 40

        def _connect(self):
            conn = super()._connect()
            conn.execute(f"PRAGMA max_page_count = {self.pages}")   # a full disk, on demand
            return conn

    caplog.set_level(logging.WARNING)
    store = Full(tmp_path / "state")
    rec = _recorder(store, store_inputs=True).start()
    for b in range(4):
        submit_batch(rec, 200, prefix=f"f{b}-", inputs=np.ones((200, 64), np.float32),
                     rejects=np.ones(200, bool))
    deadline = time.monotonic() + 10
    while not any("full" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "database or disk is full" in text and "cannot rollback" not in text, text
    assert rec.dropped == 0                               # kept for retry, not lost
    rec.close(timeout=1)
    assert rec.metrics.dropped.labels("shutdown")._value.get() == rec.dropped > 0


def test_a_row_cap_keeps_the_newest_rows_nobody_reviews(location) -> None:
    rec = _recorder(Store(location), retention_max_rows=20)
    ids = submit_batch(rec, 60, rejects=np.arange(60) % 6 == 0, audit=np.zeros(60, bool))
    rec.start()
    assert rec.flush(10)
    store = rec.store
    with store._tx(write=True) as cur:                      # request i recorded at ts = i
        for i, rid in enumerate(ids):
            cur.execute(store._sql("UPDATE records SET ts = ? WHERE request_id = ?"), (i, rid))
    assert rec.sweep() == 30
    left = [rid for rid in ids if store.request(rid)]
    plain = [rid for i, rid in enumerate(ids) if i % 6]
    assert left == sorted(set(ids) - set(plain[:30]), key=ids.index)   # the 10 deferred stay
    assert rec.sweep() == 0
    rec.close()
