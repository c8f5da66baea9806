"""The decision record store: one row per served sample, plus human labels and review state.

Embedded default: SQLite in WAL mode at ``<state-dir>/decisions.sqlite3`` (readers never block
the writer; a committed batch survives ``kill -9``). A ``postgresql://`` URL selects PostgreSQL
(psycopg 3, extra ``loop``) so several server replicas share one store and one review queue.

Every connection is per thread: the recorder's flusher thread writes, API calls read and label
from worker threads (never from the event loop). SQL is written once with ``?`` placeholders.

Keys are the server's: ``request_id`` is the random id the server gave the request (its
``X-Request-Id``); the id a client sent is kept in ``client_id`` (indexed, searchable), never a
key, so no client can claim, collide with or guess another's record. Inputs (``--store-inputs``)
are kept as raw bytes in their own dtype and shape; the tables, their migration and how a row
reads back are in ``store_schema.py``, connections and transactions in ``store_connection.py``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Literal

from serve.feedback.store_connection import StoreError, Tx, connect
from serve.feedback.store_schema import COLUMNS, create_tables, decode

FILENAME = "decisions.sqlite3"
Kind = Literal["deferred", "audit"]


class Store:
    """Decision records and feedback in SQLite (a directory) or PostgreSQL (a URL)."""

    def __init__(self, location: str | Path, create: bool = True) -> None:
        """Open (``create``: or create) the store at ``location``.

        Raises:
            StoreError: it cannot be opened; or, with ``create=False``, a SQLite store does not
                exist there (a mistyped path must not leave an empty database behind).
        """
        loc = str(location)
        self.postgres = loc.startswith(("postgresql://", "postgres://"))
        if self.postgres:
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise StoreError("a postgresql:// store needs psycopg: pip install 'abstain[loop]'") from None
            self.url = loc
        else:
            path = Path(loc)
            if path.suffix not in (".sqlite3", ".sqlite", ".db"):
                path = path / FILENAME
            if not create and not path.is_file():
                raise StoreError(f"no decision store at {str(path)!r}: pass the --state-dir the "
                                 "server ran with (its decisions.sqlite3) or a postgresql:// URL")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"cannot create the state directory {str(path.parent)!r}: {err}. "
                                 "Pass a writable --state-dir") from None
            self.url = str(path)
        self._local = threading.local()
        self._conns: list[Any] = []
        self._lock = threading.Lock()
        with self._tx(write=True) as cur:
            create_tables(cur, self.postgres)

    def __repr__(self) -> str:
        where = self.url.split("@")[-1] if self.postgres else self.url
        return f"Store({'postgresql' if self.postgres else 'sqlite'}: {where})"

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> Any:
        return connect(self.url, self.postgres, repr(self))

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._lock:
                self._conns.append(conn)
        return conn

    def _tx(self, write: bool = False) -> Tx:
        return Tx(self, write)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def close(self) -> None:
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(Exception):
                    conn.close()
            self._conns.clear()
        self._local = threading.local()

    # -- writes --------------------------------------------------------------------------------

    def insert_records(self, rows: list[tuple]) -> int:
        """Insert rows in :data:`COLUMNS` order; returns how many were new.

        A (request_id, idx) already stored is kept and the new row skipped: keys are random
        server ids, so a skip is a bug, and the recorder counts it (``reason="conflict"``).
        """
        if not rows:
            return 0
        sql = self._sql(f"INSERT INTO records ({', '.join(COLUMNS)}) VALUES "
                        f"({', '.join('?' * len(COLUMNS))}) ON CONFLICT DO NOTHING")
        with self._tx(write=True) as cur:
            cur.executemany(sql, rows)
            return len(rows) if cur.rowcount < 0 else int(cur.rowcount)

    def expire(self, now: float | None = None) -> int:
        """Mark pending review items past their expiry as ``expired``; return how many."""
        now = time.time() if now is None else now
        with self._tx(write=True) as cur:
            cur.execute(self._sql("UPDATE records SET review = 'expired' "
                                  "WHERE review = 'pending' AND expires IS NOT NULL AND expires < ?"),
                        (now,))
            return max(cur.rowcount, 0)

    def add_feedback(self, request_id: str, idx: int, label: int, source: str,
                     annotator: str | None, now: float | None = None) -> str:
        """Store a human label: ``created``, ``same`` (idempotent repeat) or ``conflict``.

        Raises:
            KeyError: no such record.
        """
        now = time.time() if now is None else now
        with self._tx(write=True) as cur:
            cur.execute(self._sql("SELECT 1 FROM records WHERE request_id = ? AND idx = ?"),
                        (request_id, idx))
            if cur.fetchone() is None:
                raise KeyError((request_id, idx))
            cur.execute(self._sql("INSERT INTO feedback (request_id, idx, label, source, annotator, ts) "
                                  "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"),
                        (request_id, idx, int(label), source, annotator, now))
            if cur.rowcount == 1:
                cur.execute(self._sql("UPDATE records SET review = 'labelled' "
                                      "WHERE request_id = ? AND idx = ?"), (request_id, idx))
                return "created"
            cur.execute(self._sql("SELECT label FROM feedback WHERE request_id = ? AND idx = ?"),
                        (request_id, idx))
            return "same" if int(cur.fetchone()[0]) == int(label) else "conflict"

    def set_value(self, key: str, value: str) -> None:
        with self._tx(write=True) as cur:
            cur.execute(self._sql("INSERT INTO kv (key, value) VALUES (?, ?) "
                                  "ON CONFLICT (key) DO UPDATE SET value = excluded.value"), (key, value))

    def values(self, prefix: str) -> dict[str, str]:
        """Every ``kv`` entry whose key starts with ``prefix``."""
        with self._tx() as cur:
            cur.execute(self._sql("SELECT key, value FROM kv WHERE key LIKE ?"), (prefix + "%",))
            return {k: v for k, v in cur.fetchall() if k.startswith(prefix)}

    def get_value(self, key: str) -> str | None:
        with self._tx() as cur:
            cur.execute(self._sql("SELECT value FROM kv WHERE key = ?"), (key,))
            row = cur.fetchone()
            return None if row is None else row[0]

    # -- reads ---------------------------------------------------------------------------------

    def _rows(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self._tx() as cur:
            cur.execute(self._sql(sql), args)
            names = [d[0] for d in cur.description]
            return [decode(dict(zip(names, row, strict=True))) for row in cur.fetchall()]

    def record(self, request_id: str, idx: int) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM records WHERE request_id = ? AND idx = ?", (request_id, idx))
        return rows[0] if rows else None

    def by_client_id(self, client_id: str, limit: int = 100) -> list[str]:
        """The server ids of the requests a client sent with its own id ``client_id``, oldest
        first (a client id need not be unique)."""
        with self._tx() as cur:
            cur.execute(self._sql("SELECT request_id, MIN(ts) FROM records WHERE client_id = ? "
                                  "GROUP BY request_id ORDER BY MIN(ts), request_id LIMIT ?"),
                        (client_id, int(limit)))
            return [r[0] for r in cur.fetchall()]

    def request(self, request_id: str) -> list[dict[str, Any]]:
        """Every sample of one request with its human label (or None), by index."""
        return self._rows(
            "SELECT r.*, f.label AS human_label, f.source AS feedback_source, "
            "f.annotator AS annotator, f.ts AS feedback_ts FROM records r LEFT JOIN feedback f "
            "ON f.request_id = r.request_id AND f.idx = r.idx WHERE r.request_id = ? ORDER BY r.idx",
            (request_id,))

    def queue(self, kind: Kind, limit: int = 50, model: str | None = None) -> list[dict[str, Any]]:
        """Pending review items, oldest first: ``deferred`` (rejected) or ``audit`` samples."""
        cond = "reject = 1" if kind == "deferred" else "audit = 1"
        args: tuple = ()
        if model:
            cond += " AND model = ?"
            args = (model,)
        return self._rows(f"SELECT * FROM records WHERE review = 'pending' AND {cond} "
                          "ORDER BY ts, request_id, idx LIMIT ?", (*args, int(limit)))

    def count(self, where: str = "1 = 1", args: tuple = ()) -> int:
        with self._tx() as cur:
            cur.execute(self._sql(f"SELECT COUNT(*) FROM records WHERE {where}"), args)
            return int(cur.fetchone()[0])

    def epochs(self) -> list[tuple[str, str, str]]:
        """Every (model, version, calibration_sha256) that served traffic (registered by the
        recorder in ``kv``) or has audited records, sorted."""
        with self._tx() as cur:
            cur.execute("SELECT DISTINCT model, version, calibration_sha256 FROM records WHERE audit = 1")
            found = {tuple(r) for r in cur.fetchall()}
            cur.execute("SELECT key FROM kv WHERE key LIKE 'epoch:%'")
            for (key,) in cur.fetchall():
                parts = key[len("epoch:"):].rsplit("/", 2)
                if len(parts) == 3:
                    found.add(tuple(parts))
            return sorted(found)

    def audit_states(self, model: str, version: str, calibration_sha256: str
                     ) -> tuple[int, int, int, int]:
        """(labels, errors, pending, expired) over audited ACCEPTED samples of one epoch.

        ``pending`` audits still wait within their review time-to-live; ``expired`` ones outlived
        it unlabelled: they stay counted as missing (a label given later still counts).
        """
        rows = self._audit_states("", (model, version, calibration_sha256))
        return rows[0][1:] if rows else (0, 0, 0, 0)

    def audit_states_by_stage(self, model: str, version: str, calibration_sha256: str
                              ) -> dict[int, tuple[int, int, int, int]]:
        """:meth:`audit_states` per cascade ``stage`` (the stage that accepted the sample); empty
        for a model's epoch, whose rows have no stage."""
        rows = self._audit_states("r.stage", (model, version, calibration_sha256))
        return {int(st): tuple(counts) for st, *counts in rows}

    def _audit_states(self, group: str, args: tuple) -> list[tuple]:
        """(group value, labels, errors, pending, expired) per ``group`` (a column, or "" for one
        row over the whole epoch)."""
        key = group or "NULL"
        where = f" AND {group} IS NOT NULL GROUP BY {group} ORDER BY {group}" if group else ""
        with self._tx() as cur:
            cur.execute(self._sql(
                f"SELECT {key}, COUNT(f.label), "
                "COALESCE(SUM(CASE WHEN f.label <> r.label THEN 1 ELSE 0 END), 0), "
                "COALESCE(SUM(CASE WHEN f.label IS NULL AND r.review = 'pending' THEN 1 ELSE 0 END), 0), "
                "COALESCE(SUM(CASE WHEN f.label IS NULL AND r.review <> 'pending' THEN 1 ELSE 0 END), 0) "
                "FROM records r LEFT JOIN feedback f ON f.request_id = r.request_id AND f.idx = r.idx "
                "WHERE r.audit = 1 AND r.reject = 0 AND r.model = ? AND r.version = ? "
                f"AND r.calibration_sha256 = ?{where}"), args)
            return [(g, *(int(x) for x in rest)) for g, *rest in cur.fetchall()]

    def audits(self, model: str, version: str, epochs: list[str], since: float | None = None,
               until: float | None = None) -> list[dict[str, Any]]:
        """Every AUDITED sample (accepted or not; labelled, pending or expired) of the given
        calibration epochs drawn in ``[since, until)``, oldest first, with ``human_label`` (None
        while unlabelled): the whole uniform sample of a recertification window."""
        if not epochs:
            return []
        cond = f"r.calibration_sha256 IN ({', '.join('?' * len(epochs))})"
        args: tuple = (model, version, *epochs)
        if since is not None:
            cond, args = cond + " AND r.ts >= ?", (*args, float(since))
        if until is not None:
            cond, args = cond + " AND r.ts < ?", (*args, float(until))
        return self._rows(
            "SELECT r.request_id, r.idx, r.ts, r.calibration_sha256, r.label, r.score, r.reject, "
            "r.review, f.label AS human_label FROM records r LEFT JOIN feedback f "
            "ON f.request_id = r.request_id AND f.idx = r.idx "
            f"WHERE r.audit = 1 AND r.model = ? AND r.version = ? AND {cond} "
            "ORDER BY r.ts, r.request_id, r.idx", args)

    def audit_outcomes(self, model: str, version: str, calibration_sha256: str) -> list[int]:
        """Labelled audits of ACCEPTED samples of one epoch in the order their labels arrived:
        1 = wrong, 0 = right (the risk-change detector's stream)."""
        with self._tx() as cur:
            cur.execute(self._sql(
                "SELECT CASE WHEN f.label <> r.label THEN 1 ELSE 0 END FROM records r "
                "JOIN feedback f ON f.request_id = r.request_id AND f.idx = r.idx "
                "WHERE r.audit = 1 AND r.reject = 0 AND r.model = ? AND r.version = ? "
                "AND r.calibration_sha256 = ? ORDER BY f.ts, r.ts, r.request_id, r.idx"),
                (model, version, calibration_sha256))
            return [int(row[0]) for row in cur.fetchall()]

