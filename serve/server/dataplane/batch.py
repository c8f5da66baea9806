"""Adaptive batching: coalesce concurrent requests into one session run, with no fixed wait.

One :class:`Batcher` per loaded model version. Requests enqueue their samples and await a future.
A worker task takes everything queued (up to ``max_batch_size`` samples) the moment the previous
run finishes — or, when a full batch is already waiting, hands it to the inference thread at
once, so the thread never idles until the event loop comes round — and slices each request's
rows back to its own future. Under load, batches grow by themselves while the runtime is busy.

Runs measured below ``inline_s`` (per batch-size bucket) run on the event loop (a thread hop costs
more); a request alone at an idle batcher runs at once in its task, on ``infer_alone``.

Back-pressure: the queue is bounded in *samples* (lower under sustained overload:
dataplane/queue_limit.py; the counting: dataplane/batch_accounting.py); a full queue raises
:class:`Overloaded` (503).
A request whose deadline passes before its batch starts is dropped (:class:`DeadlineExceeded`,
504); one already running is abandoned by its caller and its rows discarded.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from serve.server.dataplane.batch_accounting import PIPELINE, BatchAccounting, BatchHook
from serve.server.dataplane.batch_queue import (
    DeadlineExceeded,
    Item,
    Overloaded,
    Tag,
    Unloading,
)

log = logging.getLogger(__name__)
ALONE_FACTOR = 5

# infer: x (n, *input_shape) → named arrays, each with leading axis n.
InferFn = Callable[[np.ndarray], dict[str, np.ndarray]]


class Batcher(BatchAccounting):
    """Queue + worker for one model version. Create and use it inside a running event loop."""

    def __init__(self, infer: InferFn, max_batch_size: int, max_queue_size: int,
                 on_batch: BatchHook | None = None,
                 on_queue_depth: Callable[[int], None] | None = None, name: str = "",
                 inline_s: float = 0.0002, infer_alone: InferFn | None = None,
                 overload_target_s: float = 0.0) -> None:
        super().__init__(max_batch_size, max_queue_size, on_batch, name, inline_s,
                         overload_target_s)
        self.infer = infer
        self.infer_alone = infer_alone or infer           # a request that runs alone, inline
        self.on_queue_depth = on_queue_depth
        self._queue: deque[Item] = deque()
        self._running = 0                                 # batches taken and not finished
        self._wake, self._closing = asyncio.Event(), False
        # Called after each run's futures are resolved, in the same event-loop tick (a cascade
        # decides a whole batch of its requests at once: serve/server/cascade_batch.py).
        self.on_resolved: list[Callable[[], None]] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{name}")
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{name}")


    def submit(self, x: np.ndarray, deadline: float, tag: Tag = "") -> asyncio.Future:
        """Enqueue ``x (n, *shape)`` synchronously; the future resolves to its sliced outputs.

        Raises:
            Overloaded: the queue already holds ``max_queue_size`` samples, or the batcher closed.
        """
        n = int(x.shape[0])
        if self._closing and self._worker.done():
            raise Unloading(f"model {self.name} is being unloaded; retry")
        if not self.has_room(n):
            err = Overloaded(f"{self.refused()}; retry after a moment or add capacity")
            err.headers = {"Retry-After": str(max(1, math.ceil(self.drain_s())))}
            raise err
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(Item(x, fut, deadline, tag))
        self._queued += n
        self.stats.requests += 1
        self._wake.set()
        if self.on_queue_depth:
            self.on_queue_depth(self._queued)
        return fut

    def _take(self) -> list[Item]:
        """Pop queued items up to max_batch_size samples (at least one item); drop expired ones."""
        items: list[Item] = []
        total = 0
        now = time.monotonic()
        while self._queue:
            head = self._queue[0]
            if head.future.done() or head.deadline <= now:
                self._queue.popleft()
                self._queued -= head.n
                if head.deadline <= now:
                    self._expire(head)
                continue
            if items and total + head.n > self.max_batch_size:
                break
            items.append(self._queue.popleft())
            self._queued, total = self._queued - head.n, total + head.n
        return items

    def _run(self, x: np.ndarray, infer: InferFn | None = None
             ) -> tuple[dict[str, np.ndarray], float]:
        infer = infer or self.infer
        t0 = time.perf_counter()
        if len(x) <= self.max_batch_size:
            out = infer(x)
        else:  # one oversized request: run it in max_batch_size chunks
            parts = [infer(x[i:i + self.max_batch_size])
                     for i in range(0, len(x), self.max_batch_size)]
            out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return out, time.perf_counter() - t0

    def _ready(self) -> bool:
        """Whether to take a batch now. While one runs in the thread, a second is taken only when
        it is already full: the thread starts it the moment the first ends, without waiting for
        the event loop to come round to this task (under load it has hundreds of callbacks to run
        first, and the thread idled meanwhile); a partial batch waits, so it can still grow."""
        if not self._queue:
            return False
        return self._running == 0 or (self._running < PIPELINE
                                      and self._queued >= self.max_batch_size)

    async def _loop(self) -> None:
        while True:
            if not self._ready():
                if self._closing and not self._queue and self._running == 0:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            items = self._take()
            if self.on_queue_depth:
                self.on_queue_depth(self._queued)
            if not items:
                continue
            n = sum(it.n for it in items)
            inline = self._inline(n)                    # decided once: _run_items follows it
            handed = [0 if inline or not self._running else n]  # waits for the thread: queued
            self._running += 1
            if handed[0]:
                self._handed.append(handed)
            run = self._run_items(items, inline, handed)
            if inline:
                await run                               # on the loop: nothing to overlap with
            else:
                asyncio.get_running_loop().create_task(run)

    def _started(self, handed: list[int]) -> None:
        """A handed batch ended: forget its count (the thread zeroed it when it started)."""
        handed[0] = 0
        self._handed = [h for h in self._handed if h is not handed]


    async def _run_items(self, items: list[Item], inline: bool, handed: list[int]) -> None:
        """One coalesced session run for ``items``; each future gets its own rows."""
        x = items[0].x if len(items) == 1 else np.concatenate([it.x for it in items])
        waits = [time.perf_counter() - it.enqueued for it in items]
        latest = max(it.deadline for it in items)
        try:
            if inline:
                out, inference_s, started = self._run_by(x, latest)
            else:
                loop = asyncio.get_running_loop()
                out, inference_s, started = await loop.run_in_executor(
                    self._executor, self._run_by, x, latest, handed)
        except Exception as err:  # a runtime failure fails this batch, not the server
            log.exception("inference failed for model %s (batch of %d)", self.name, len(x))
            for it in items:
                if not it.future.done():
                    it.future.set_exception(err)
            return
        finally:
            self._started(handed)
            self._running -= 1
            self._wake.set()
        offset = 0
        for it in items:              # a pipelined batch may have waited for the thread
            if it.deadline <= started:
                self._expire(it)
            elif not it.future.done():
                it.future.set_result({k: v[offset:offset + it.n] for k, v in out.items()})
            offset += it.n
        for resolved in self.on_resolved:
            try:
                resolved()
            except Exception:
                log.exception("on_resolved hook of model %s failed (ignored)", self.name)
        if out:
            self._record([it.tag for it in items], [it.n for it in items], waits, inference_s,
                         {**out, "input": x})               # the record stage may keep inputs

    def _run_by(self, x: np.ndarray, deadline: float, handed: list[int] | None = None
                ) -> tuple[dict, float, float]:
        """:meth:`_run` unless ``deadline`` has passed: (outputs or {}, seconds, start time).
        ``handed``: the count of a batch that admission counts as queued until it starts; the
        thread zeroes it (one store, atomic under the GIL) rather than wake the event loop for
        it — every wake-up of the loop's thread can take the core this thread runs on."""
        started = time.monotonic()
        if handed is not None:
            handed[0] = 0
        return (*self._run(x), started) if started < deadline else ({}, 0.0, started)

    def _expire(self, it: Item) -> None:
        if not it.future.cancelled():
            self.stats.expired += 1       # also when result()'s timer already failed it
        if not it.future.done():
            it.future.set_exception(DeadlineExceeded(
                f"deadline passed after {time.perf_counter() - it.enqueued:.3f}s in the queue; "
                "raise X-Deadline-Ms / ABSTAIN_REQUEST_TIMEOUT_S or add capacity"))


    async def close(self) -> None:
        """Finish everything queued, then stop the worker and its thread."""
        self._closing = True
        self._wake.set()
        try:
            await self._worker
        finally:
            self._executor.shutdown(wait=False)

    def _idle_and_cheap(self, x: np.ndarray) -> bool:
        """Nothing queued or running, and runs of this size cost less than a few thread hops
        (alone, the loop has nothing else to do meanwhile: ``ALONE_FACTOR`` × ``inline_s``)."""
        return not (self._queue or self._running or self._closing
                    or len(x) > self.max_batch_size) and self._inline(len(x), ALONE_FACTOR)

    def _run_inline(self, x: np.ndarray, tag: Tag) -> dict[str, np.ndarray]:
        self.stats.requests += 1
        try:
            out, inference_s = self._run(x, self.infer_alone)
        except Exception:
            log.exception("inference failed for model %s (batch of %d)", self.name, len(x))
            raise
        self._record([tag], [len(x)], [0.0], inference_s, {**out, "input": x})
        return out

    async def result(self, x: np.ndarray, deadline: float, alone: bool = False,
                     tag: Tag = "") -> dict[str, np.ndarray]:
        """Submit and wait, honouring the deadline even while the batch is running. ``alone``: no
        other request is in flight (the caller's count); then an idle batcher runs a cheap request
        at once in the caller — the queue and the worker's wake-up would only add latency."""
        if alone and self._idle_and_cheap(x):
            return self._run_inline(x, tag)
        fut = self.submit(x, deadline, tag)
        timeout = max(deadline - time.monotonic(), 0.0)

        def expire() -> None:          # the batch may still run; its rows for us are dropped
            if not fut.done():
                fut.set_exception(DeadlineExceeded(
                    f"no result within the deadline ({timeout:.3f}s); raise X-Deadline-Ms / "
                    "ABSTAIN_REQUEST_TIMEOUT_S or add capacity"))

        timer = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            return await fut
        finally:
            timer.cancel()
