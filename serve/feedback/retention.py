"""Retention (``--retention-days``): which old records nothing needs, and deleting them.

Deleted once older than the retention: rows nobody reviews (accepted and not audited) and review
items that expired unlabelled. Audited or labelled rows (and their labels) are deleted only when
their calibration is outside the lineage of every calibration served — by any replica sharing
the store — within the retention window: each recorder marks the (model, version, calibration)
epochs it serves as ``seen`` in the store's ``kv`` at every sweep, with their lineage (the
calibrations a ``--from-feedback`` recalibration descends from, which it certifies on). Pending
review items are never deleted. A row cap (``--retention-max-rows``) bounds the rows nobody
reviews whatever their age: the oldest beyond it go. The recorder's thread runs :func:`sweep`.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from serve.feedback.store import Store


def kept_calibrations(store: Store, cutoff: float, prefix: str) -> set[str]:
    """The calibration sha256s whose audited and labelled rows stay: every calibration seen
    (``kv`` entries under ``prefix``, ``…/<sha256>``) at or after ``cutoff``, and its lineage."""
    keep: set[str] = set()
    for key, raw in store.values(prefix).items():
        info = json.loads(raw)
        if info.get("seen", 0.0) >= cutoff:
            keep.add(key.rsplit("/", 1)[-1])
            keep.update(info.get("lineage") or ())
    return keep


PLAIN = "audit = 0 AND review IN ('none', 'expired')"      # rows nobody reviews (any more)


def cap(store: Store, max_rows: int, batch: int = 10_000) -> int:
    """Delete the oldest rows nobody reviews beyond ``max_rows`` of them; returns how many."""
    with store._tx() as cur:
        cur.execute(f"SELECT COUNT(*) FROM records WHERE {PLAIN}")
        excess = int(cur.fetchone()[0]) - max_rows
    rowid, total = _rowid(store), 0
    while excess > 0:
        with store._tx(write=True) as cur:
            cur.execute(store._sql(f"DELETE FROM records WHERE {rowid} IN (SELECT {rowid} FROM "
                                   f"records WHERE {PLAIN} ORDER BY ts LIMIT ?)"),
                        (min(excess, batch),))
            n = max(cur.rowcount, 0)
        if n == 0:
            break
        total, excess = total + n, excess - n
    return total


def _rowid(store: Store) -> str:
    return "ctid" if store.postgres else "rowid"


def sweep(store: Store, before: float, keep: Collection[str], batch: int = 10_000) -> int:
    """Delete the rows recorded before ``before`` that nothing needs (module doc); returns how
    many. Plain rows go in transactions of ≤ ``batch`` rows, so the recorder's writes wait at
    most one of them."""
    rowid = _rowid(store)
    total = 0
    while True:
        with store._tx(write=True) as cur:
            cur.execute(store._sql(f"DELETE FROM records WHERE {rowid} IN (SELECT {rowid} "
                                   f"FROM records WHERE ts < ? AND {PLAIN} LIMIT ?)"),
                        (before, batch))
            n = max(cur.rowcount, 0)
        total += n
        if n < batch:
            break
    kept = list(keep)
    cond = "r.ts < ? AND (r.audit = 1 OR r.review = 'labelled') AND r.review <> 'pending'"
    if kept:
        cond += f" AND r.calibration_sha256 NOT IN ({', '.join('?' * len(kept))})"
    with store._tx(write=True) as cur:
        cur.execute(store._sql("DELETE FROM feedback WHERE EXISTS (SELECT 1 FROM records r "
                               "WHERE r.request_id = feedback.request_id AND "
                               f"r.idx = feedback.idx AND {cond})"), (before, *kept))
        cur.execute(store._sql(f"DELETE FROM records WHERE {rowid} IN (SELECT r.{rowid} "
                               f"FROM records r WHERE {cond})"), (before, *kept))
        total += max(cur.rowcount, 0)
    return total
