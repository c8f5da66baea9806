"""Applying what the hot path queued: the server's metrics are updated per flush, not per request.

:class:`Tally` is the half of :class:`serve.monitoring.Monitor` that turns the queued requests,
batches and decisions into Prometheus updates — grouped by label set, histogram buckets added with
counts (``np.bincount``), one update per series per flush however many requests it covers.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict, deque
from collections.abc import Sequence

import numpy as np

from serve.monitoring.prometheus import observe_many

log = logging.getLogger(__name__)
# At most 1.5× apart from 2 ms to 1 s and 5 ms apart from 20 to 40 ms, where a full default queue
# drains: a quantile interpolated inside a bucket is then close enough to compare with a queue's
# drain time (the overload benchmark does).
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03,
                   0.035, 0.04, 0.05, 0.06, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0,
                   10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
FLUSH_S = 0.05                          # one process flushes this often (and before every scrape)
_BATCH_BOUNDS = np.array([*BATCH_BUCKETS, math.inf])


class Tally:
    """Mixin of :class:`~serve.monitoring.Monitor`: ``flush`` and what it applies."""

    def _kick(self) -> None:
        """Multiprocess mode: flush at the end of this event-loop tick, because a sibling worker
        may render the shared files at any moment (one process flushes on its own render)."""
        if not self.multiprocess or self._flush_soon:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._flush_soon = True
        loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._flush_soon = False
        self.flush()

    # --- applying what the hot path queued ----------------------------------------------------
    def flush(self) -> None:
        """Apply every queued request, batch and decision to the Prometheus metrics."""
        with self._lock:
            self._flush_requests()
            self._flush_batches()
            decisions = _drain(self._pending_decisions)
        grouped: dict[tuple[str, str], list[tuple]] = defaultdict(list)
        for d in decisions:
            grouped[(d[0], d[1])].append(d)
        for (model, version), ds in grouped.items():
            labels, scores, reject = (_cat([d[i] for d in ds]) for i in (2, 4, 5))
            self._apply_decisions(model, version, labels, ds[-1][3], scores, reject)
        for key, depth in list(self._depths.items()):
            self._c(self.queue, *key).set(depth)
        self._depths.clear()
        if self._inflight_n != self._inflight_shown:
            self.inflight.inc(self._inflight_n - self._inflight_shown)
            self._inflight_shown = self._inflight_n
        self.cascades.flush()

    def _flush_requests(self) -> None:
        latencies: dict[tuple, list[float]] = defaultdict(list)
        counts: dict[tuple, int] = defaultdict(int)
        for endpoint, method, status, latency, model, version in _drain(self._pending_requests):
            counts[(endpoint, method, str(int(status)), model, version)] += 1
            latencies[(endpoint, str(int(status)), model, version)].append(latency)
        for key, n in counts.items():
            self._c(self.requests, *key).inc(n)
        for key, xs in latencies.items():
            observe_many(self._c(self.request_duration, *key), self._latency_bounds, np.array(xs))

    def _flush_batches(self) -> None:
        sizes: dict[tuple, list[float]] = defaultdict(list)
        waits: dict[tuple, list[float]] = defaultdict(list)
        runs: dict[tuple, list[float]] = defaultdict(list)
        for model, version, size, queue_wait_s, inference_s in _drain(self._pending_batches):
            sizes[(model, version)].append(size)
            waits[(model, version)].extend(queue_wait_s)
            runs[(model, version)].append(inference_s)
        for key in sizes:
            observe_many(self._c(self.batch_size, *key), _BATCH_BOUNDS, np.array(sizes[key]))
            observe_many(self._c(self.queue_wait, *key), self._latency_bounds, np.array(waits[key]))
            observe_many(self._c(self.inference, *key), self._latency_bounds, np.array(runs[key]))

    def _apply_decisions(self, model: str, version: str, labels: np.ndarray,
                         class_names: Sequence[str], scores: np.ndarray, reject: np.ndarray) -> None:
        reject = np.asarray(reject, dtype=bool).ravel()        # (n,)
        labels = np.asarray(labels, dtype=np.int64).ravel()    # (n,)
        n = reject.size
        if n == 0:
            return
        deferred = int(reject.sum())
        if n - deferred:
            self._c(self.predictions, model, version, "accepted").inc(n - deferred)
        if deferred:
            self._c(self.predictions, model, version, "deferred").inc(deferred)
        counts = np.bincount(labels, minlength=len(class_names))   # (K,)
        for k in np.flatnonzero(counts):
            name = class_names[k] if k < len(class_names) else str(k)
            self._c(self.predicted_class, model, version, name).inc(int(counts[k]))
        with self._lock:
            state = self._models.get((model, version))
            if state is None:
                return
            observe_many(state.score_hist.labels(model, version), state.score_bounds, scores)
            st = state.drift.update(~reject)
            sh = state.shift.update(n - deferred, n) if state.shift is not None else None
        self._c(self.window_coverage, model, version).set(st.window_coverage)
        self._c(self.window_samples, model, version).set(st.n)
        self._c(self.drift_p, model, version).set(st.p_value)
        self._c(self.drift_flag, model, version).set(int(st.detected))
        if sh is not None:
            self._c(self.shift_log_e, model, version).set(sh.log_e)
            self._c(self.shift_flag, model, version).set(int(sh.detected))
            if sh.changed:
                log.warning("label-free shift on %s/%s: %s than certified (live coverage %.4f over "
                            "%d predictions vs certified %.4f); e-detector log %.2f >= %.2f, a false "
                            "alarm within %d predictions has probability <= %g", model, version,
                            sh.direction, sh.live_coverage, sh.seen, state.drift.coverage,
                            sh.log_e, sh.log_threshold, self.shift_horizon, self.shift_alpha)
        if st.changed and st.detected:
            log.warning("deferral-rate drift on %s/%s: window coverage %.4f over the last %d vs "
                        "certified %.4f (binomial p = %.3g < alpha = %g)", model, version,
                        st.window_coverage, st.n, state.drift.coverage, st.p_value, self.drift_alpha)
        elif st.changed:
            log.info("deferral-rate drift on %s/%s cleared: window coverage %.4f vs certified %.4f "
                     "(p = %.3g)", model, version, st.window_coverage, state.drift.coverage, st.p_value)


def _cat(arrays: list) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate([np.asarray(a).ravel() for a in arrays])


def _drain(q: deque) -> list:
    out = []
    while True:
        try:
            out.append(q.popleft())
        except IndexError:
            return out
