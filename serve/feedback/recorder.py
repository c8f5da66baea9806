"""Decision recording off the request path: a bounded queue flushed in batches by one thread.

The request path calls :meth:`Recorder.submit` once per batch with the batch's columns. It takes a
lock for a few microseconds, appends a reference, and returns: no conversion, no I/O, no
exception. A flusher thread turns the columns into rows (``serve/feedback/rows.py``) and writes
them in one transaction per chunk, so a slow or unreachable database never slows or fails a
prediction and never blocks the event loop.

Every record is written or counted in ``abstain_records_dropped_total{reason}``:

* ``queue_full``: the queue held ``capacity`` samples (the store is down or too slow);
* ``rejected``: the store refused the row itself (bad data): a chunk that fails for any other
  reason than an outage is split in halves until the bad rows are isolated; the rest are written;
* ``conflict``: the row's key was already stored (keys are random server ids: a bug);
* ``shutdown``: still queued when :meth:`Recorder.close` (SIGTERM) gave up on a down store.

How the flusher thread writes, backs off through an outage and isolates refused rows is in
``serve/feedback/flusher.py``.

The same thread expires stale review items, refreshes the live-risk gauges every
``maintenance_s`` seconds, and, with ``retention_s``, deletes old rows (``retention.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from serve.feedback import retention
from serve.feedback.audit import Auditor
from serve.feedback.failures import Every, first_line
from serve.feedback.flusher import Flusher
from serve.feedback.gauges import LoopMetrics
from serve.feedback.risk import LiveRisk, live_risk
from serve.feedback.rows import Batch
from serve.feedback.store import Store

log = logging.getLogger(__name__)
EPOCH_PREFIX = "epoch:"


def epoch_key(model: str, version: str, calibration_sha256: str) -> str:
    return f"{EPOCH_PREFIX}{model}/{version}/{calibration_sha256}"


class Recorder(Flusher):
    """Bounded, batched, background writer of decision records into a :class:`Store`."""

    def __init__(self, store: Store, *, audit_rate: float = 0.01, store_inputs: bool = False,
                 review_ttl_s: float = 7 * 86400.0, live_delta: float = 0.05,
                 capacity: int = 100_000, flush_interval_s: float = 0.5, chunk_rows: int = 5000,
                 maintenance_s: float = 5.0, metrics: LoopMetrics | None = None,
                 seed: int | None = None, retention_s: float | None = None,
                 retention_max_rows: int | None = None,
                 max_backoff_s: float = 10.0, log_every_s: float = 30.0) -> None:
        self.store = store
        self.auditor = Auditor(audit_rate, seed)
        self.store_inputs = store_inputs
        self.review_ttl_s = review_ttl_s
        self.live_delta = live_delta
        self.capacity = capacity
        self.flush_interval_s = flush_interval_s
        self.chunk_rows = chunk_rows
        self.maintenance_s = maintenance_s
        self.retention_s = retention_s
        self.retention_max_rows = retention_max_rows
        self.max_backoff_s = max_backoff_s
        self.metrics = metrics or LoopMetrics()
        self._items: deque[Batch] = deque()
        self._retry: list[tuple] = []
        self._pending = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._epochs: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._outage_log, self._reject_log = Every(log_every_s), Every(log_every_s)
        self._failures = 0
        self._next_sweep = time.monotonic() + self.sweep_every_s
        self.written = 0
        self.dropped = 0
        self.swept = 0
        # Set by the server: the (model, version, calibration) epochs it serves now (the others'
        # gauges are retired), and what to do with the served epochs' live risk (guard.py).
        self.served: Callable[[], Collection[tuple[str, str, str]]] | None = None
        self.on_risk: Callable[[list[LiveRisk]], None] | None = None

    # -- request path --------------------------------------------------------------------------

    def audit(self, n: int) -> np.ndarray:
        """Audit flags for a batch of ``n``; draw them BEFORE the decision is looked at."""
        return self.auditor.draw(n)

    def submit(self, model: str, version: str | int, calibration_sha256: str,
               request_ids: Sequence[str], indices: np.ndarray | None, labels: np.ndarray,
               scores: np.ndarray, rejects: np.ndarray, audit: np.ndarray,
               probabilities: np.ndarray | None = None, inputs: np.ndarray | None = None, *,
               class_names: Sequence[str] | None = None, target_risk: float | None = None,
               sizes: Sequence[int] | None = None, logits: np.ndarray | None = None,
               temperature: float | np.ndarray = 1.0,
               client_ids: Sequence[str | None] | None = None,
               lineage: Sequence[str] | None = None, stages: np.ndarray | None = None) -> None:
        """Queue one batch of decisions (columns of equal length ``n``). Never blocks or raises.

        Args:
            request_ids: the server's request id of each sample (samples of one request share it).
            indices: each sample's index inside its request.
            labels, scores, rejects: the decision columns (predicted class index, score, reject).
            audit: flags from :meth:`audit`.
            probabilities: (n, K) class probabilities; the top-3 are stored for reviewers.
            inputs: the decoded (n, ...) model inputs; stored only with ``store_inputs``.
            class_names, target_risk, lineage: the model's classes, the calibration's r* and the
                calibrations it descends from, kept once per (model, version, calibration) so the
                review API can check labels and the risk, and retention keeps what it needs.
            sizes: per-REQUEST form (the data plane's record stage): ``request_ids`` (and
                ``client_ids``) hold one id per request, ``sizes`` its sample count, ``indices``
                may be None; the flusher expands them, so the request path does no per-sample work.
            logits, temperature: instead of ``probabilities``: the flusher computes
                softmax(logits / T) for review items only (T: one, or one per sample).
            client_ids: the id each request's client sent (cleaned), or None.
            stages: a cascade's answering stage per sample (1-based; stored in ``stage``).
        The arrays are kept by reference until flushed: do not mutate them afterwards.
        """
        try:
            n = int(sum(sizes)) if sizes is not None else len(request_ids)
            with self._cond:
                if self._stop or self._pending + n > self.capacity:
                    self._drop(n, "queue_full")
                    return
                self._pending += n
                self._items.append(Batch(
                    time.time(), model, str(version), calibration_sha256, request_ids, client_ids,
                    indices, labels, scores, rejects, audit, probabilities,
                    inputs if self.store_inputs else None, class_names, target_risk, lineage,
                    sizes, logits, temperature, stages))
                if self._pending >= self.chunk_rows:
                    self._cond.notify()
        except Exception:  # noqa: BLE001 - recording must never fail a prediction
            log.exception("decision recording failed for one batch; it is dropped")
            with contextlib.suppress(Exception):     # not even countable: the log line says it
                self._drop(int(sum(sizes)) if sizes is not None else len(request_ids), "rejected")

    def _drop(self, n: int, reason: str) -> None:
        self.dropped += n
        self.metrics.dropped.labels(reason).inc(n)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Recorder:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="abstain-recorder", daemon=True)
            self._thread.start()
        return self

    def flush(self, timeout: float = 10.0) -> bool:
        """Wake the flusher and wait until everything queued so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if self._pending == 0:
                    return True
                self._cond.notify()
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued (bounded by ``timeout``), stop the thread, close the store."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cond:
            lost = self._pending
            self._pending = 0
            self._items.clear()
            self._retry = []
        if lost:
            self._drop(lost, "shutdown")
            log.warning("%d decision records could not be written before shutdown", lost)
        self.store.close()

    # -- flusher thread: epochs, maintenance, retention (writes: flusher.py) ------------------

    def _register(self, item: Batch) -> None:
        if item.epoch in self._epochs:
            return
        info = {"class_names": list(item.class_names) if item.class_names is not None else None,
                "target_risk": item.target_risk, "lineage": list(item.lineage or ())}
        if self._save_epoch(item.epoch, info):
            self._epochs[item.epoch] = info             # else: tried again with the next batch

    def _save_epoch(self, key: tuple[str, str, str], info: dict[str, Any]) -> bool:
        try:
            self.store.set_value(epoch_key(*key), json.dumps({**info, "seen": time.time()}))
            return True
        except Exception as err:  # noqa: BLE001
            if self._outage_log.due():
                log.warning("could not register %s in the decision store: %s", key,
                            first_line(err))
            return False

    def maintain(self) -> None:
        """Expire stale review items, refresh the live-risk gauges, sweep (flusher thread)."""
        try:
            expired = self.store.expire()
            if expired:
                self.metrics.expired.inc(expired)
            served = self.served() if self.served is not None else None
            risks = []
            for model, version, sha in self.store.epochs():
                if served is not None and (model, version, sha) not in served:
                    self.metrics.retire(model, version, sha)
                    continue
                info = epoch_info(self.store, model, version, sha)
                n, k, pending, expired = self.store.audit_states(model, version, sha)
                risks.append(live_risk(model, version, sha, info.get("target_risk"), k, n,
                                       pending, self.live_delta, expired=expired))
                self.metrics.set_risk(risks[-1])
            if self.on_risk is not None:
                self.on_risk(risks)
            if time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + self.sweep_every_s
                self.sweep()
        except Exception as err:  # noqa: BLE001
            log.warning("decision store maintenance failed: %s", first_line(err))

    @property
    def sweep_every_s(self) -> float:
        """A tenth of the retention, within [maintenance_s, 1 hour]; a minute for a row cap
        alone; never without retention."""
        if self.retention_s is None:
            return 60.0 if self.retention_max_rows is not None else float("inf")
        return min(max(self.retention_s / 10, self.maintenance_s), 3600.0)

    def sweep(self, now: float | None = None) -> int:
        """Retention (``serve/feedback/retention.py``): mark the epochs served here as seen,
        delete rows older than ``retention_s`` that nothing needs, then the oldest rows nobody
        reviews beyond ``retention_max_rows``; returns how many."""
        now = time.time() if now is None else now
        for key, info in list(self._epochs.items()):
            self._save_epoch(key, info)
        deleted = 0
        if self.retention_s is not None:
            cutoff = now - self.retention_s
            deleted += retention.sweep(self.store, cutoff, retention.kept_calibrations(
                self.store, cutoff, EPOCH_PREFIX))
        if self.retention_max_rows is not None:
            deleted += retention.cap(self.store, self.retention_max_rows)
        self.swept += deleted
        if deleted:
            self.metrics.deleted.inc(deleted)
            log.info("retention: deleted %d decision records", deleted)
        return deleted


def epoch_info(store: Store, model: str, version: str, sha: str) -> dict[str, Any]:
    raw = store.get_value(epoch_key(model, version, sha))
    return json.loads(raw) if raw else {}
