"""How many samples a model's queue may hold right now: its size, or less under sustained overload.

The queue's size (``max_queue_size``) is there to absorb bursts. Under *sustained* overload —
the queue stayed full for ``standing_s`` and requests are being refused — a full queue absorbs
nothing: every admitted request waits the full queue's drain time, and the runtime is no busier
than with a short queue, because refused clients keep coming. So the limit drops to what
``target_s`` of work needs (at least ``min_samples``: a batch running and one waiting), until no
request has been refused for ``quiet_s`` (longer than the entry time: refused clients come back
in waves, one shed hold later, and the limit must not flap between them). The idea is CoDel's (Nichols & Jacobson, 2012: keep
the good queue that absorbs bursts, drop the standing one); the trigger here is a refusal,
because shedding happens at admission, before a request is read.

Served requests then wait about ``target_s`` instead of the whole queue's drain time, while the
runtime stays busy (goodput measured in docs/benchmarks.md, overload). A burst that overflows the
queue once does not trigger it: the queue drains between bursts. It is opt-in
(``--overload-queue-ms``; ``target_s = 0`` is off): a fixed pool of clients that retry at once and
just fills the queue is mostly refused once it triggers, and its retries keep the limit low.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class QueueLimit:
    """The queue's limit in samples, lowered while the queue stands full and refuses requests.

    Args:
        size: ``max_queue_size`` (samples).
        min_samples: the lowest limit (two batches: one running, one waiting).
        target_s: seconds of work to keep queued under sustained overload; 0 = off.
        standing_s: how long the queue must stand full (and refuse) before the limit drops.
        quiet_s: how long without a refusal before the whole queue is restored.
        name: the model, for the log.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, size: int, min_samples: int, target_s: float, standing_s: float = 0.1,
                 quiet_s: float = 1.0, name: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size, self.min_samples, self.target_s = size, min_samples, target_s
        self.standing_s, self.quiet_s, self.name, self.clock = standing_s, quiet_s, name, clock
        self.low = size                     # the limit under sustained overload
        self.overloaded = False
        self._below_at = clock()   # last time the queue held at most `low` samples
        self._refused_at = float("-inf")

    def rate(self, samples_per_s: float) -> None:
        """The runtime's measured throughput: sets the overload limit to ``target_s`` of work."""
        self.low = min(self.size, max(self.min_samples, int(samples_per_s * self.target_s)))

    @property
    def current(self) -> int:
        """The limit as it stands (no bookkeeping: for messages)."""
        return self.low if self.overloaded else self.size

    def __call__(self, depth: int) -> int:
        """The limit for a queue now holding ``depth`` samples."""
        now = self.clock()
        if depth <= self.low:
            self._below_at = now
        if self.overloaded and now - self._refused_at >= self.quiet_s:
            self.overloaded = False
            log.info("model %s: no request refused for %.1f s; queue limit back to %d samples",
                     self.name, self.quiet_s, self.size)
        return self.current

    def refused(self) -> None:
        """A request was refused for want of room: enter overload if the queue has stood full."""
        now = self.clock()
        self._refused_at = now
        if (not self.overloaded and self.target_s > 0 and self.low < self.size
                and now - self._below_at >= self.standing_s):
            self.overloaded = True
            log.info("model %s: sustained overload (queue full for %.1f s while refusing); queue "
                     "limit %d samples (%.0f ms of work) until no request is refused for %.1f s",
                     self.name, now - self._below_at, self.low, self.target_s * 1e3,
                     self.quiet_s)
