"""The adaptive batcher on a real (numpy) workload: coalescing, slicing, back-pressure, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serve.server.dataplane.batch import Batcher, DeadlineExceeded, Overloaded


def _infer_factory(delay: float = 0.0, gate: threading.Event | None = None):
    calls: list[int] = []

    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        if gate is not None:
            gate.wait(5)
        time.sleep(delay)
        calls.append(len(x))
        return {"double": x * 2, "row_sum": x.sum(axis=1)}

    return infer, calls


def run(coro):
    return asyncio.run(coro)


async def _held(max_queue_size: int):
    """A batcher (batches of 2) whose first batch of 2 runs in the thread, held on a gate:
    (gate, the calls' batch sizes, batcher, the first batch's future)."""
    gate = threading.Event()
    infer, calls = _infer_factory(gate=gate)
    b = Batcher(infer, max_batch_size=2, max_queue_size=max_queue_size)
    first = b.submit(np.zeros((2, 1), np.float32), time.monotonic() + 5)
    await asyncio.sleep(0.05)                   # the worker took it and blocks on the gate
    return gate, calls, b, first


def test_single_request_is_dispatched_at_once_and_sliced_back():
    async def main():
        infer, calls = _infer_factory()
        b = Batcher(infer, max_batch_size=8, max_queue_size=100)
        t0 = time.perf_counter()
        out = await b.result(np.arange(6, dtype=np.float32).reshape(2, 3), time.monotonic() + 5)
        took = time.perf_counter() - t0
        await b.close()
        return out, calls, took

    out, calls, took = run(main())
    np.testing.assert_array_equal(out["double"], np.arange(6).reshape(2, 3) * 2)
    np.testing.assert_array_equal(out["row_sum"], [3, 12])
    assert calls == [2] and took < 1.0


def test_concurrent_requests_coalesce_without_crossing():
    async def main():
        gate = threading.Event()
        infer, calls = _infer_factory(gate=gate)
        b = Batcher(infer, max_batch_size=10, max_queue_size=100)
        xs = [np.full((1 + i % 3, 2), i, np.float32) for i in range(12)]
        futs = [b.submit(x, time.monotonic() + 5) for x in xs]   # queued while nothing has run
        gate.set()
        outs = await asyncio.gather(*futs)
        await b.close()
        return xs, outs, calls, b.stats

    xs, outs, calls, stats = run(main())
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(out["double"], x * 2)
    assert sum(calls) == sum(len(x) for x in xs) and max(calls) <= 10
    assert len(calls) < len(xs) and stats.runs == len(calls) and stats.requests == 12
    assert stats.mean_batch_size == pytest.approx(sum(calls) / len(calls))


def test_full_queue_raises_overloaded_and_deadline_expires_in_queue():
    async def main():
        gate, _, b, first = await _held(max_queue_size=4)
        short = b.submit(np.zeros((2, 1), np.float32), time.monotonic() + 0.01)
        keep = b.submit(np.zeros((2, 1), np.float32), time.monotonic() + 5)
        with pytest.raises(Overloaded, match="queued"):
            b.submit(np.zeros((1, 1), np.float32), time.monotonic() + 5)
        await asyncio.sleep(0.05)
        gate.set()
        await first
        with pytest.raises(DeadlineExceeded, match="deadline"):
            await short
        await keep
        await b.close()
        return b.stats

    stats = run(main())
    assert stats.rejected_full == 1 and stats.expired == 1 and stats.samples == 4


def test_result_times_out_while_running_and_oversized_requests_are_chunked():
    async def main():
        infer, calls = _infer_factory(delay=0.3)
        b = Batcher(infer, max_batch_size=4, max_queue_size=100)
        with pytest.raises(DeadlineExceeded):
            await b.result(np.zeros((1, 2), np.float32), time.monotonic() + 0.05)
        out = await b.result(np.ones((10, 2), np.float32), time.monotonic() + 10)
        await b.close()
        return out, calls

    out, calls = run(main())
    assert out["double"].shape == (10, 2) and calls[-3:] == [4, 4, 2]


def test_close_drains_what_is_queued():
    async def main():
        infer, _ = _infer_factory(delay=0.01)
        b = Batcher(infer, max_batch_size=1, max_queue_size=100)
        futs = [b.submit(np.full((1, 1), i, np.float32), time.monotonic() + 5) for i in range(5)]
        await b.close()
        return [f.result()["double"][0, 0] for f in futs]

    assert run(main()) == [0, 2, 4, 6, 8]


def test_cheap_runs_go_inline_when_idle_but_simultaneous_arrivals_still_batch():
    async def main():
        infer, calls = _infer_factory()
        b = Batcher(infer, max_batch_size=64, max_queue_size=1000, inline_s=10.0)
        x = np.ones((1, 2), np.float32)
        await b.result(x, time.monotonic() + 5)   # first run: cost unknown → queued, measured
        queued_runs = b.stats.runs
        for _ in range(3):                         # idle and cheap now: run in the caller
            out = await b.result(x, time.monotonic() + 5)
            np.testing.assert_array_equal(out["double"], x * 2)
        inline_runs = b.stats.runs - queued_runs
        calls.clear()
        xs = [np.full((1, 2), i, np.float32) for i in range(16)]
        outs = await asyncio.gather(*(b.result(xi, time.monotonic() + 5) for xi in xs))
        await b.close()
        return inline_runs, list(calls), xs, outs

    inline_runs, calls, xs, outs = run(main())
    assert inline_runs == 3
    # Sixteen requests that arrive in the same loop turn are coalesced, not run one by one.
    assert sum(calls) == 16 and len(calls) < 16 and max(calls) > 1
    for xi, out in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(out["double"], xi * 2)


def test_a_request_alone_runs_inline_on_the_alone_session_and_batches_on_the_other():
    async def main():
        infer, batched = _infer_factory()
        alone_calls: list[int] = []

        def infer_alone(x: np.ndarray) -> dict[str, np.ndarray]:
            alone_calls.append(len(x))
            return {"double": x * 2, "row_sum": x.sum(axis=1)}

        b = Batcher(infer, max_batch_size=64, max_queue_size=1000, inline_s=10.0,
                    infer_alone=infer_alone)
        x = np.ones((1, 2), np.float32)
        await b.result(x, time.monotonic() + 5, alone=True)     # cost unknown: queued
        first = (list(batched), list(alone_calls))
        out = await b.result(x, time.monotonic() + 5, alone=True)
        second = (list(batched), list(alone_calls))
        await b.result(x, time.monotonic() + 5, alone=False)
        await b.close()
        return first, second, (list(batched), list(alone_calls)), out

    first, second, third, out = run(main())
    assert first == ([1], []) and second == ([1], [1]) and third == ([1, 1], [1])
    np.testing.assert_array_equal(out["double"], np.full((1, 2), 2.0))


def test_a_full_batch_goes_to_the_thread_while_one_runs_a_partial_one_waits_to_grow():
    async def main():
        gate, calls, b, first = await _held(max_queue_size=10)
        part = b.submit(np.ones((1, 1), np.float32), time.monotonic() + 5)
        await asyncio.sleep(0.05)
        waiting = (b._running, b.queue_depth)        # partial: left in the queue to grow
        full = b.submit(np.ones((1, 1), np.float32), time.monotonic() + 5)
        await asyncio.sleep(0.05)
        handed = (b._running, b.queue_depth)         # full: handed to the thread at once, but
        gate.set()                                   # counted as queued until it starts
        outs = [await f for f in (first, part, full)]
        await b.close()
        return waiting, handed, list(calls), outs, b.queue_depth

    waiting, handed, calls, outs, depth = run(main())
    assert waiting == (1, 1) and handed == (2, 2) and calls == [2, 2] and depth == 0
    assert [o["double"].tolist() for o in outs] == [[[0.0], [0.0]], [[2.0]], [[2.0]]]


def test_reserved_room_counts_as_queued_until_handed_over():
    async def main():
        infer, _ = _infer_factory()
        b = Batcher(infer, max_batch_size=4, max_queue_size=4)
        b.reserve(3)                                   # an admitted request, body being read
        full = (b.queue_depth, b.has_room(2), b.has_room(1))
        b.unreserve(3)                                 # handed over to its own samples
        out = await b.result(np.ones((3, 1), np.float32), time.monotonic() + 5)
        await b.close()
        return full, b.queue_depth, out

    full, depth, out = run(main())
    assert full == (3, False, True) and depth == 0 and out["double"].shape == (3, 1)


def test_a_batch_taken_for_the_thread_runs_there_and_stops_counting_as_queued(monkeypatch):
    """The inline-or-thread decision is made once, when the batch is taken: a cost estimate that
    drops before the batch starts (another run finished fast) must not strand its handed count."""
    async def main():
        gate = threading.Event()

        def infer(x: np.ndarray) -> dict[str, np.ndarray]:
            if threading.current_thread() is not threading.main_thread():
                gate.wait(5)
            return {"double": x * 2}

        b = Batcher(infer, max_batch_size=2, max_queue_size=10)
        seen: list[int] = []

        def inline(n: int, factor: float = 1.0) -> bool:   # cheap from the second look at n=2 on
            seen.append(n)
            return n == 2 and seen.count(2) > 1

        monkeypatch.setattr(b, "_inline", inline)
        first = b.submit(np.zeros((1, 1), np.float32), time.monotonic() + 5)
        await asyncio.sleep(0.05)                    # in the thread, blocked on the gate
        second = b.submit(np.ones((2, 1), np.float32), time.monotonic() + 5)
        await asyncio.sleep(0.05)                    # full: handed to the thread, still queued
        handed = b.queue_depth
        gate.set()
        await first
        out = await second
        await b.close()
        return handed, b.queue_depth, out, seen.count(2)

    handed, depth, out, looks = run(main())
    assert handed == 2 and depth == 0 and looks == 1 and out["double"].tolist() == [[2.0], [2.0]]
