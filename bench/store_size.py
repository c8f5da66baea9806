"""Bytes per million samples in the decision store, by traffic kind and --store-inputs.

Writes ``--samples`` decisions per scenario through the real recorder into a fresh store
(SQLite in a temporary folder, or a fresh database on ``--database-url``), as the server does
(requests of 4 samples, server ids, 1% audits, top-3 probabilities of 10 classes, inputs of 40
float32 — the shipped mnist1d model), and prints the store's size per million samples::

    python bench/store_size.py                          # SQLite
    python bench/store_size.py --database-url postgresql://user@host/db   # PostgreSQL
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from serve.feedback.gauges import LoopMetrics
from serve.feedback.recorder import Recorder
from serve.feedback.store import Store

SCENARIOS = [("accepted", False), ("accepted", True), ("deferred", False), ("deferred", True)]


def _size(store: Store) -> int:
    with store._tx(write=not store.postgres) as cur:
        if store.postgres:
            cur.execute("SELECT pg_total_relation_size('records') + pg_total_relation_size('feedback')"
                        " + pg_total_relation_size('kv')")
            return int(cur.fetchone()[0])
    store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return Path(store.url).stat().st_size


def _fresh(database_url: str | None, tmp: Path, name: str) -> str:
    if database_url is None:
        return str(tmp / name)
    import psycopg

    db = "size_" + uuid.uuid4().hex[:10]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    return database_url.rsplit("/", 1)[0] + "/" + db


def measure(kind: str, inputs: bool, n: int, database_url: str | None, tmp: Path) -> float:
    rng = np.random.default_rng(0)
    loc = _fresh(database_url, tmp, f"{kind}-{inputs}")
    rec = Recorder(Store(loc), audit_rate=0.01, store_inputs=inputs, seed=0,
                   metrics=LoopMetrics(CollectorRegistry()), flush_interval_s=0.05).start()
    empty = _size(rec.store)
    batch, per_request = 256, 4
    for _ in range(n // batch):
        logits = rng.normal(0, 3, (batch, 10)).astype(np.float32)
        x = rng.normal(0, 1, (batch, 40)).astype(np.float32)
        ids = [os.urandom(16).hex() for _ in range(batch // per_request)]
        reject = np.full(batch, kind == "deferred")
        rec.submit("mnist1d-maxsup", "1", "c" * 64, ids, None, logits.argmax(1),
                   rng.random(batch), reject, rec.audit(batch), None, x,
                   sizes=[per_request] * len(ids), logits=logits, class_names=list("0123456789"),
                   target_risk=0.05)
        if rec._pending > 50_000:
            rec.flush(120)
    assert rec.flush(600)
    size = _size(rec.store) - empty
    rec.close()
    return size / (n // batch * batch) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    backend = "PostgreSQL" if args.database_url else "SQLite"
    print(f"| {backend}: traffic | --store-inputs | MB per million samples |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, inputs in SCENARIOS:
            per_m = measure(kind, inputs, args.samples, args.database_url, Path(tmp))
            print(f"| {kind} | {str(inputs).lower()} | {per_m / 1e6:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
