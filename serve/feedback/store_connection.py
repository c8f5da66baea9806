"""The decision store's connections and transactions, below :class:`~serve.feedback.store.Store`.

Every connection is per thread (the store keeps one per thread and hands it to :class:`Tx`):
SQLite in WAL mode, so readers never block the writer, or PostgreSQL through psycopg 3.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from serve.errors import AbstainError

log = logging.getLogger(__name__)


class StoreError(AbstainError):
    """The decision store cannot be opened or used."""


def connect(url: str, postgres: bool, name: str) -> Any:
    """A new connection to the store at ``url`` (``name``: how errors call it).

    Raises:
        StoreError: it cannot be reached or opened.
    """
    if postgres:
        import psycopg
        try:
            return psycopg.connect(url, connect_timeout=5)
        except psycopg.Error as err:
            raise StoreError(f"cannot connect to PostgreSQL at {name}: "
                             f"{str(err).strip().splitlines()[0]}. Check --database-url "
                             "(postgresql://user:password@host:port/database)") from None
    try:
        conn = sqlite3.connect(url, timeout=30, check_same_thread=False,
                               isolation_level=None)
    except sqlite3.Error as err:
        raise StoreError(f"cannot open the SQLite store {url!r}: {err}") from None
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class Tx:
    """One transaction on this thread's connection; a broken PostgreSQL connection is replaced.

    ``store`` is the :class:`~serve.feedback.store.Store` (its ``postgres`` flag, ``_conn()`` and
    per-thread ``_local``).
    """

    def __init__(self, store: Any, write: bool) -> None:
        self.store, self.write = store, write

    def __enter__(self) -> Any:
        conn = self.store._conn()
        if self.store.postgres and conn.closed:
            self.store._local.conn = None
            conn = self.store._conn()
        self.conn = conn
        if not self.store.postgres:
            conn.execute("BEGIN IMMEDIATE" if self.write else "BEGIN")
        self.cur = conn.cursor()
        return self.cur

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                try:
                    self.conn.commit() if self.store.postgres else self.conn.execute("COMMIT")
                except Exception:
                    self._rollback()
                    raise
            else:
                self._rollback()
        finally:
            self.cur.close()

    def _rollback(self) -> None:
        """Roll back; a failure here never hides the error that made us roll back.

        SQLite ends the transaction itself on some errors (a full disk), and a ROLLBACK then
        fails with "cannot rollback"; a broken PostgreSQL connection cannot roll back either.
        """
        try:
            if self.store.postgres:
                if not self.conn.closed:
                    self.conn.rollback()
            elif self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except Exception as err:  # noqa: BLE001
            log.debug("rollback failed: %s", err)
