"""The decision store's tables: columns, schema, indexes, the migration of older stores, and how a
stored row reads back.

Inputs (``--store-inputs``) are kept as raw bytes in their own dtype and shape (``input_blob``,
``input_dtype``, ``input_shape``); stores written before keep their JSON ``input`` column and read
the same (:func:`decode`). An older store gains the new columns and indexes when it is opened
(:func:`migrate`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

COLUMNS = ("request_id", "idx", "client_id", "ts", "model", "version", "calibration_sha256",
           "label", "score", "reject", "audit", "topk", "input_blob", "input_dtype", "input_shape",
           "review", "expires", "stage")
# Added after the first release: (name, SQL type; {blob} is BLOB or BYTEA). migrate adds them.
# ``stage``: the cascade stage that answered (or, deferred, the last one); NULL for a model.
ADDED_COLUMNS = (("client_id", "TEXT"), ("input_blob", "{blob}"), ("input_dtype", "TEXT"),
                 ("input_shape", "TEXT"), ("stage", "INTEGER"))

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS records (
        request_id TEXT NOT NULL, idx INTEGER NOT NULL, ts DOUBLE PRECISION NOT NULL,
        model TEXT NOT NULL, version TEXT NOT NULL, calibration_sha256 TEXT NOT NULL,
        label INTEGER NOT NULL, score DOUBLE PRECISION NOT NULL, reject INTEGER NOT NULL,
        audit INTEGER NOT NULL, topk TEXT, input TEXT,
        review TEXT NOT NULL, expires DOUBLE PRECISION,
        PRIMARY KEY (request_id, idx))""",
]
INDEXES = [
    # Partial indexes: rows nobody reviews (most traffic) only maintain the primary key and ts.
    "CREATE INDEX IF NOT EXISTS records_pending ON records (ts) WHERE review = 'pending'",
    "CREATE INDEX IF NOT EXISTS records_audited ON records (model, version, calibration_sha256) "
    "WHERE audit = 1",
    "CREATE INDEX IF NOT EXISTS records_client ON records (client_id) WHERE client_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS records_ts ON records (ts)",            # the retention sweep
    """CREATE TABLE IF NOT EXISTS feedback (
        request_id TEXT NOT NULL, idx INTEGER NOT NULL, label INTEGER NOT NULL,
        source TEXT NOT NULL, annotator TEXT, ts DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (request_id, idx))""",
    """CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
]


def create_tables(cur: Any, postgres: bool) -> None:
    """Create what is missing: the tables, the columns an older store lacks, the indexes."""
    for stmt in SCHEMA:
        cur.execute(stmt)
    migrate(cur, postgres)
    for stmt in INDEXES:
        cur.execute(stmt)


def migrate(cur: Any, postgres: bool) -> None:
    """Add the columns a store made by an older release lacks (nothing is rewritten)."""
    if postgres:
        cur.execute("SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'records' AND table_schema = current_schema()")
        have = {r[0] for r in cur.fetchall()}
    else:
        cur.execute("PRAGMA table_info(records)")
        have = {r[1] for r in cur.fetchall()}
    blob = "BYTEA" if postgres else "BLOB"
    for name, kind in ADDED_COLUMNS:
        if name not in have:
            exists = " IF NOT EXISTS" if postgres else ""   # a replica may race us
            cur.execute(f"ALTER TABLE records ADD COLUMN{exists} {name} "
                        f"{kind.format(blob=blob)}")


def decode(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as callers see it: JSON parsed, the input array rebuilt, flags as bools."""
    for key in ("topk", "input"):
        if isinstance(row.get(key), str):
            row[key] = json.loads(row[key])
    blob = row.pop("input_blob", None)
    dtype, shape = row.pop("input_dtype", None), row.pop("input_shape", None)
    if blob is not None and dtype:
        dims = tuple(int(d) for d in shape.split(",") if d) if shape else (-1,)
        row["input"] = np.frombuffer(bytes(blob), dtype=np.dtype(dtype)).reshape(dims).tolist()
    for key in ("reject", "audit"):
        if key in row:
            row[key] = bool(row[key])
    return row
