"""What a :class:`~serve.server.dataplane.batch.Batcher` counts and measures, apart from its worker.

The queue depth that admission checks (queued, handed to the thread, reserved for bodies still
being read) against the adaptive limit (dataplane/queue_limit.py); the measured run cost per
batch-size bucket and the throughput, which decide inline runs and ``Retry-After``; and the
bookkeeping after each session run (counters, the monitoring hook).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from serve.server.dataplane.batch_queue import Tag, bucket
from serve.server.dataplane.queue_limit import QueueLimit
from serve.server.dataplane.stats import BatchStats

log = logging.getLogger(__name__)
PIPELINE = 2                            # batches handed to the thread at once (see Batcher._ready)

# on_batch(tags, sizes, queue waits, run seconds, outputs): one call per session run; tags and
# sizes name each request of the batch in row order (the record stage needs both).
BatchHook = Callable[[list[Tag], list[int], list[float], float, dict[str, np.ndarray]], None]


class BatchAccounting:
    """Queue depth, admission, run cost and per-run bookkeeping of one batcher."""

    def __init__(self, max_batch_size: int, max_queue_size: int, on_batch: BatchHook | None,
                 name: str, inline_s: float, overload_target_s: float) -> None:
        self.max_batch_size, self.max_queue_size = max_batch_size, max_queue_size
        self.on_batch, self.name = on_batch, name
        self.stats, self.inline_s = BatchStats(), inline_s
        self.limit = QueueLimit(max_queue_size, PIPELINE * max_batch_size, overload_target_s,
                                name=name)
        self._cost: dict[int, float] = {}                 # batch-size bucket → EWMA run seconds
        self._rate = 0.0                                  # EWMA samples per second while busy
        self._queued = 0                                  # samples waiting
        self._handed: list[list[int]] = []                # … handed to the thread, not started
        self._reserved = 0                                # … admitted, body not yet decoded

    @property
    def queue_depth(self) -> int:
        return self._queued + sum(h[0] for h in self._handed) + self._reserved

    def reserve(self, n: int) -> None:
        """Room for ``n`` samples of an admitted request still being read (dataplane/admit.py)."""
        self._reserved += n

    def unreserve(self, n: int) -> None:
        self._reserved -= n

    def has_room(self, n: int) -> bool:
        """Whether ``n`` more samples fit (an empty queue always takes one request)."""
        depth = self.queue_depth
        limit = self.limit(depth)                 # (always: it also notes the queue ran low)
        return depth == 0 or depth + n <= limit

    def refused(self) -> str:
        """Count a refusal for want of room; returns what the queue holds, for the message."""
        self.stats.rejected_full += 1
        self.limit.refused()
        low = " (lowered under sustained overload)" if self.limit.overloaded else ""
        return (f"model {self.name} has {self.queue_depth} samples queued (limit "
                f"{self.limit.current}{low})")

    def drain_s(self) -> float:
        """Seconds the queued samples need at the measured throughput (0 when unmeasured)."""
        return self.queue_depth / self._rate if self._rate > 0 else 0.0

    def _inline(self, n: int, factor: float = 1.0) -> bool:
        """Runs of ``n`` samples measured below ``factor`` × ``inline_s`` (worth no thread hop)."""
        cost = self._cost.get(bucket(n))
        return cost is not None and cost < factor * self.inline_s

    def _record(self, tags: list[str], sizes: list[int], waits: list[float], inference_s: float,
                out: dict[str, np.ndarray]) -> None:
        """Bookkeeping after one session run: cost estimate, counters, the monitoring hook."""
        n = sum(sizes)
        b = bucket(n)
        cost = self._cost.get(b)
        # Fast down, slow up: one run slowed by a busy machine must not send every later run
        # through the thread hop (whose own cost then keeps the estimate high).
        self._cost[b] = inference_s if cost is None else min(inference_s,
                                                                  0.9 * cost + 0.1 * inference_s)
        rate = n / max(inference_s, 1e-9)
        self._rate = rate if self._rate == 0 else 0.9 * self._rate + 0.1 * rate
        self.limit.rate(self._rate)
        self.stats.runs += 1
        self.stats.samples += n
        self.stats.sizes[n] += 1
        if self.on_batch:
            try:
                self.on_batch(tags, sizes, waits, inference_s, out)
            except Exception:
                log.exception("monitoring hook failed (ignored)")
