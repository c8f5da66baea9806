"""What a failed store write means, and how often to say so (the recorder's thread).

An outage (the store unreachable, locked, full or failing) is retried later: the rows are not at
fault. Any other error is the rows' own (the store refused their values) and they are isolated.
Log lines about either are rate-limited: a failing store must not flood the log.
"""

from __future__ import annotations

import sqlite3
import time


def is_outage(err: BaseException) -> bool:
    """The store is unreachable, locked, full or failing: retry later (not the rows' fault)."""
    if isinstance(err, (OSError, TimeoutError, sqlite3.OperationalError)):
        return True
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(err, (psycopg.OperationalError, psycopg.InterfaceError))


class Every:
    """Rate limit for log lines: ``due()`` is true at most once per ``interval_s``."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s, self.next = interval_s, 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + self.interval_s
        return True


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
