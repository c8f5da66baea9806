"""A cascade's batcher: stage 1 on every sample, each later stage on the deferrals only.

Every request enters through stage 1's batcher as a request of that model (its admission, its
queue, its batches). What follows a stage's run is done per **batch**, not per request: right
after a stage's batcher resolved one run's futures it calls the cascade (``on_resolved``, in the
same event-loop tick), which sweeps every finished one — one decision under the cascade's rule of that stage for all their rows, one
submission of all their deferrals to the next stage's batcher (shared with that model's own
traffic), one update of the counters, the per-stage series and drift tests, and the decision
store. A request's task waits once, for its whole answer: no task wakes between stages. A request
alone (nothing else in flight) goes stage by stage in its own task, so that an idle stage can run
it inline (``Batcher.result(alone=True)``).

A stage's error (queue full, deadline, a failed run) fails the requests whose samples it held:
answering with fewer stages would serve an accepted set that was never certified.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve.errors import AbstainError

log = logging.getLogger(__name__)

# on_pass(stage (1-based), whether each sample that reached the stage was accepted there, each
# request's seconds in the stage (queue and run)): once per batch of a stage.
PassHook = Callable[[int, np.ndarray, list[float]], None]
# on_record(the requests' tags, their sizes, their outputs with "stage" and "input", rows in tag
# order): the decision store, once per batch.
RecordHook = Callable[[list[Any], list[int], dict[str, np.ndarray]], None]
# The tag of a cascade's call to a stage's batcher (compared by identity): the record stage keeps
# such samples out of the decision store, which records them once, as the cascade's decisions.
STAGE_CALL = ("", "cascade stage")
OUTPUTS = ("logits", "label", "score", "reject")


class CascadeDeadline(AbstainError):
    """The request's deadline passed before its last stage answered (HTTP 504)."""

    status = 504
    reason = "deadline"


@dataclass
class CascadeStats:
    """Counters for ``/v2/models/{cascade}/stats``: requests, and per stage reached/answered."""

    requests: int = 0
    samples: int = 0
    reached: Counter = field(default_factory=Counter)     # stage → samples that reached it
    answered: Counter = field(default_factory=Counter)    # stage → samples it accepted
    deferred: int = 0                                     # samples sent to people

    def as_dict(self) -> dict:
        return {"requests": self.requests, "samples": self.samples, "deferred": self.deferred,
                "stages": {str(k): {"reached": self.reached[k], "answered": self.answered[k]}
                           for k in sorted(self.reached)}}


class _Flight:
    """One request on its way through the stages: its answer, piece by piece."""

    __slots__ = ("x", "n", "tag", "future", "deadline", "pieces")

    def __init__(self, x: np.ndarray, tag: Any, future: asyncio.Future, deadline: float) -> None:
        self.x, self.n, self.tag, self.future, self.deadline = x, len(x), tag, future, deadline
        self.pieces: list[tuple[np.ndarray | None, int, tuple[np.ndarray, ...]]] = []

    def answer(self) -> dict[str, np.ndarray]:
        """Its outputs: each piece (rows — None for all —, stage, outputs) in its rows."""
        if len(self.pieces) == 1:                    # one stage answered every sample
            _, k, arrays = self.pieces[0]
            out = dict(zip(OUTPUTS, arrays, strict=True))
            out["stage"] = np.full(self.n, k + 1, np.int32)
            return out
        first = self.pieces[0][2]
        out = {name: np.empty((self.n, *a.shape[1:]), a.dtype)
               for name, a in zip(OUTPUTS, first, strict=True)}
        out["stage"] = np.empty(self.n, np.int32)
        for rows, k, arrays in self.pieces:
            for name, a in zip(OUTPUTS, arrays, strict=True):
                out[name][rows] = a
            out["stage"][rows] = k + 1
        return out

    def fail(self, err: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(err)

    def expire(self, timeout: float) -> None:
        self.fail(CascadeDeadline(
            f"no result within the deadline ({timeout:.3f}s); raise X-Deadline-Ms / "
            "ABSTAIN_REQUEST_TIMEOUT_S or add capacity"))


# A stage's samples from several requests, in order: (flight, its rows — None for all —, inputs).
Segments = list[tuple[_Flight, "np.ndarray | None", np.ndarray]]


@dataclass(eq=False)
class _Pass:
    """Samples submitted to one stage's batcher at once (one request's, or a batch's deferrals)."""

    stage: int                                 # 0-based
    future: asyncio.Future
    segments: Segments
    t0: float = field(default_factory=time.perf_counter)
    swept: bool = False


class CascadeBatcher:
    """The data plane's batcher for a cascade: admission against stage 1's queue, answers by
    stages. Closing it closes nothing: the stage batchers belong to their model versions.

    Args:
        cascade: the CascadeVersion (its ``stages``' batchers and ``rules``).
        on_pass: Prometheus series and drift tests per stage (serve/monitoring/cascade_metrics.py).
        on_record: the decision store (serve/server/dataplane/record.py), or None.
    """

    def __init__(self, cascade: Any, on_pass: PassHook | None = None,
                 on_record: RecordHook | None = None) -> None:
        self.cascade = cascade
        self.batchers = [sv.batcher for sv in cascade.stages]
        self.rules = cascade.rules
        self.first = self.batchers[0]
        self.stats = CascadeStats()
        self.on_pass = on_pass
        self.on_record = on_record
        self._open: list[list[_Pass]] = [[] for _ in self.batchers]   # per stage, not swept
        self._listeners = [(b, functools.partial(self._sweep, k))
                           for k, b in enumerate(self.batchers)]
        for b, sweep in self._listeners:
            b.on_resolved.append(sweep)

    # Admission and back-pressure: every request's samples enter through stage 1.
    @property
    def queue_depth(self) -> int:
        return self.first.queue_depth

    def has_room(self, n: int) -> bool:
        return self.first.has_room(n)

    def refused(self) -> str:
        return self.first.refused()

    def reserve(self, n: int) -> None:
        self.first.reserve(n)

    def unreserve(self, n: int) -> None:
        self.first.unreserve(n)

    def drain_s(self) -> float:
        return self.first.drain_s()

    async def result(self, x: np.ndarray, deadline: float, alone: bool = False,
                     tag: Any = "") -> dict[str, np.ndarray]:
        """The cascade's outputs for ``x`` (``logits``, ``label``, ``score``, ``reject``,
        ``stage``). Submits to stage 1 before its first ``await`` (the data plane's hot-reload
        and admission rule); raises what a stage raised (Overloaded, a deadline, a failed run)."""
        loop = asyncio.get_running_loop()
        flight = _Flight(x, tag, loop.create_future(), deadline)
        if alone:
            return await self._in_turn(flight)
        first = self.first.submit(x, deadline, STAGE_CALL)
        self._enter(0, first, [(flight, None, x)])
        timeout = max(deadline - time.monotonic(), 0.0)
        timer = loop.call_later(timeout, flight.expire, timeout)
        try:
            return await flight.future
        finally:
            timer.cancel()
            if not first.done():       # deadline or client gone while queued: stage 1 skips it
                first.cancel()

    async def _in_turn(self, flight: _Flight) -> dict[str, np.ndarray]:
        """A request alone: stage by stage in its task (each stage may run it inline)."""
        segments: Segments = [(flight, None, flight.x)]
        for k, batcher in enumerate(self.batchers):
            t0 = time.perf_counter()
            out = await batcher.result(segments[0][2], flight.deadline, True, STAGE_CALL)
            segments = self._decide(k, [(_Pass(k, flight.future, segments, t0), out)])
            if not segments:
                break
        return flight.future.result()

    def _enter(self, k: int, future: asyncio.Future, segments: Segments) -> None:
        p = _Pass(k, future, segments)
        self._open[k].append(p)
        future.add_done_callback(functools.partial(self._done, p))

    def _done(self, p: _Pass, _: asyncio.Future) -> None:
        """A future of stage ``p.stage`` resolved outside a batch (a failed run, an expired
        item) or before that batch's sweep: sweep now, unless done already."""
        if not p.swept:
            self._sweep(p.stage)

    def _sweep(self, k: int) -> None:
        """Every finished pass of stage ``k``, at once: called by stage ``k``'s batcher right
        after a batch resolved its futures (``on_resolved``, the same event-loop tick)."""
        ready: list[tuple[_Pass, dict[str, np.ndarray]]] = []
        waiting = []
        for q in self._open[k]:
            f = q.future
            if not f.done():
                waiting.append(q)
                continue
            q.swept = True
            if f.cancelled():                   # its request ended (deadline, client gone)
                continue
            err = f.exception()
            if err is not None:                 # the stage failed these samples
                for flight, _, _ in q.segments:
                    flight.fail(err)
            else:
                ready.append((q, f.result()))
        self._open[k] = waiting
        if not ready:
            return
        segments = self._decide(k, ready)
        if not segments:
            return
        xs = segments[0][2] if len(segments) == 1 else np.concatenate([s[2] for s in segments])
        try:
            future = self.batchers[k + 1].submit(xs, max(s[0].deadline for s in segments),
                                                 STAGE_CALL)
        except AbstainError as err:             # its queue is full, or it is being unloaded
            for flight, _, _ in segments:
                flight.fail(err)
            return
        self._enter(k + 1, future, segments)

    def _decide(self, k: int, ready: list[tuple[_Pass, dict[str, np.ndarray]]]) -> Segments:
        """Stage ``k``'s decisions on the rows of ``ready`` (one rule call): finish the requests
        it completes, count, and return the deferred rows, which go on to stage ``k + 1``."""
        z = ready[0][1]["logits"] if len(ready) == 1 else \
            np.concatenate([out["logits"] for _, out in ready])
        d = self.rules[k](z)
        now = time.perf_counter()
        last = k + 1 == len(self.rules)
        onward: Segments = []
        finished: list[_Flight] = []
        seconds: list[float] = []
        live: list[slice] | None = None          # rows of requests still waiting, if not all
        pos = 0
        for p, _ in ready:
            for flight, rows, x in p.segments:
                n = len(x)
                sl = slice(pos, pos + n)
                pos += n
                if flight.future.done():         # failed meanwhile (deadline, client gone)
                    if live is None:
                        live = [slice(0, sl.start)] if sl.start else []
                    continue
                if live is not None:
                    live.append(sl)
                seconds.append(now - p.t0)
                reject = d.reject[sl]
                arrays = (z[sl], d.label[sl], d.score[sl], reject)
                if last or not reject.any():
                    flight.pieces.append((rows, k, arrays))
                    finished.append(flight)
                    continue
                if reject.all():
                    onward.append((flight, rows, x))
                    continue
                keep = ~reject
                idx = np.arange(n) if rows is None else rows
                flight.pieces.append((idx[keep], k, tuple(a[keep] for a in arrays)))
                onward.append((flight, idx[reject], x[reject]))
        accepted = ~d.reject if live is None else np.concatenate([~d.reject[s] for s in live])
        self._account(k, accepted, seconds, finished)
        return onward

    def _account(self, k: int, accepted: np.ndarray, seconds: list[float],
                 finished: list[_Flight]) -> None:
        """Counters, the per-stage hook, the answers of the finished requests, the store."""
        s = self.stats
        a = int(accepted.sum())
        s.reached[k + 1] += len(accepted)
        s.answered[k + 1] += a
        if k + 1 == len(self.rules):
            s.deferred += len(accepted) - a
        if self.on_pass is not None and len(accepted):
            try:
                self.on_pass(k + 1, accepted, seconds)
            except Exception:
                log.exception("cascade monitoring hook failed (ignored)")
        if not finished:
            return
        answers = []
        for flight in finished:
            out = flight.answer()
            flight.future.set_result(out)
            answers.append(out)
            s.requests += 1
            s.samples += flight.n
        if self.on_record is not None:          # never raises (record.py)
            outs = {name: np.concatenate([o[name] for o in answers]) if len(answers) > 1
                    else answers[0][name] for name in (*OUTPUTS, "stage")}
            xs = [f.x for f in finished]
            outs["input"] = xs[0] if len(xs) == 1 else np.concatenate(xs)
            self.on_record([f.tag for f in finished], [f.n for f in finished], outs)

    async def close(self) -> None:
        """Stop sweeping the stages' batches (a request still in flight finishes through its
        futures' callbacks)."""
        for b, sweep in self._listeners:
            if sweep in b.on_resolved:
                b.on_resolved.remove(sweep)
