"""The recorder's flusher thread: it drains the queue, writes rows in chunks, backs off through an
outage and isolates the rows the store refuses.

An outage (a connection, I/O or locking error) keeps the rows and retries them after an
exponential backoff (0.5 s doubling to ``max_backoff_s``), which new traffic does not cut short.
Failures are logged once per ``log_every_s``, with counts, never once per try. The queue is
flushed at least every ``flush_interval_s`` (0.5 s), so ``kill -9`` loses what was answered in
about the last half second; a committed chunk survives it.
"""

from __future__ import annotations

import logging
import time

from serve.feedback.failures import first_line, is_outage
from serve.feedback.rows import Batch, to_rows

log = logging.getLogger(__name__)


class Flusher:
    """The write side of :class:`~serve.feedback.recorder.Recorder`, which it is mixed into.

    It uses the recorder's queue (``_cond``, ``_items``, ``_retry``, ``_pending``, ``_stop``), its
    settings (``store``, ``chunk_rows``, ``flush_interval_s``, ``max_backoff_s``,
    ``review_ttl_s``), counters and logs (``written``, ``metrics``, ``_failures``,
    ``_outage_log``, ``_reject_log``) and methods (``_drop``, ``_register``, ``maintain``).
    """

    def _run(self) -> None:
        next_maintenance = time.monotonic()
        retry_at = 0.0                                  # an outage: no write before this
        backoff = 0.0
        while True:
            with self._cond:
                while not self._stop:
                    now = time.monotonic()
                    if retry_at > now:                  # backing off: traffic does not wake us
                        self._cond.wait(retry_at - now)
                    elif not self._items and not self._retry:
                        self._cond.wait(self.flush_interval_s)
                        break
                    else:
                        break
                stopping = self._stop
                items = list(self._items)
                self._items.clear()
            rows = self._retry
            for item in items:
                rows += self._rows(item)
            self._retry = []
            if not self._write(rows):
                self._retry = rows
                backoff = min(max(backoff * 2, 0.5), self.max_backoff_s)
                retry_at = time.monotonic() + backoff
                if stopping:
                    return
                continue
            backoff = retry_at = 0.0
            if stopping:
                with self._cond:
                    if not self._items:
                        return
                continue
            if time.monotonic() >= next_maintenance:
                next_maintenance = time.monotonic() + self.maintenance_s
                self.maintain()

    def _rows(self, item: Batch) -> list[tuple]:
        try:
            self._register(item)
            return to_rows(item, self.review_ttl_s)
        except Exception as err:  # noqa: BLE001 - one bad batch must not stop the thread
            n = int(sum(item.sizes)) if item.sizes is not None else len(item.request_ids)
            self._settle(n)
            self._drop(n, "rejected")
            if self._reject_log.due():
                log.warning("a batch of %d decision records could not be converted (%s); it is "
                            "dropped and counted", n, first_line(err))
            return []

    def _write(self, rows: list[tuple]) -> bool:
        """Write ``rows`` chunk by chunk; False on an outage (``rows`` then holds the unwritten)."""
        start = 0
        try:
            while start < len(rows):
                chunk = rows[start:start + self.chunk_rows]
                self._write_isolating(chunk)
                start += len(chunk)
        except Exception as err:  # noqa: BLE001 - an outage: keep the rest, retry later
            del rows[:start]
            self._failures += 1
            if self._outage_log.due():
                log.warning("decision store unavailable (%s): %d records kept for retry (%d "
                            "failed tries so far); retrying with backoff",
                            first_line(err), len(rows), self._failures)
            return False
        if self._failures:
            log.warning("decision store is back after %d failed tries", self._failures)
            self._failures = 0
        return True

    def _write_isolating(self, chunk: list[tuple]) -> None:
        """Write ``chunk``; if the store refuses it (not an outage), halve it until the refused
        rows are alone, drop and count those, write the rest. Raises on an outage."""
        try:
            new = self.store.insert_records(chunk)
        except Exception as err:  # noqa: BLE001
            if is_outage(err):
                raise
            if len(chunk) == 1:
                self._settle(1)
                self._drop(1, "rejected")
                if self._reject_log.due():
                    log.warning("the decision store refused a record (%s); it is dropped and "
                                "counted in abstain_records_dropped_total{reason=\"rejected\"} "
                                "(logged once per %.0f s)", first_line(err),
                                self._reject_log.interval_s)
                return
            mid = len(chunk) // 2
            self._write_isolating(chunk[:mid])
            self._write_isolating(chunk[mid:])
            return
        self._settle(len(chunk))
        self.written += new
        self.metrics.written.inc(new)
        if new < len(chunk):
            self._drop(len(chunk) - new, "conflict")
            log.error("%d decision records had a key already stored (server ids are random: "
                      "a bug); they are dropped and counted", len(chunk) - new)

    def _settle(self, n: int) -> None:
        with self._cond:
            self._pending -= n
