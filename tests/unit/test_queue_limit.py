"""The queue limit under sustained overload (serve/server/dataplane/queue_limit.py) and in the batcher."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from serve.server.dataplane.batch import Batcher, Overloaded
from serve.server.dataplane.queue_limit import QueueLimit


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _limit(clock: Clock, target_s: float = 0.005) -> QueueLimit:
    q = QueueLimit(2048, 128, target_s, standing_s=0.1, quiet_s=1.0, clock=clock)
    q.rate(60_000.0)                            # 5 ms of work = 300 samples
    return q


def test_the_limit_drops_only_after_the_queue_stood_full_while_refusing_and_comes_back():
    clock = Clock()
    q = _limit(clock)
    assert q.low == 300 and q(100) == 2048
    assert q(2000) == 2048                     # full: standing from here (last seen low at t=100)
    clock.t += 0.05
    q.refused()                                # full for 50 ms only: a burst, not overload
    assert not q.overloaded and q(2040) == 2048
    clock.t += 0.06
    q.refused()                                # full for 110 ms and refusing: sustained
    assert q.overloaded and q(2040) == 300
    clock.t += 0.9
    q.refused()                                # refusals keep it low …
    clock.t += 0.99
    assert q(250) == 300
    clock.t += 0.02                            # … until none for quiet_s
    assert q(250) == 2048 and not q.overloaded


def test_a_queue_that_drains_between_bursts_keeps_its_whole_size():
    clock = Clock()
    q = _limit(clock)
    for _ in range(20):                        # bursts every 60 ms overflow it, then it drains
        assert q(2040) == 2048
        q.refused()
        clock.t += 0.03
        assert q(0) == 2048
        clock.t += 0.03
    assert not q.overloaded


@pytest.mark.parametrize("target_s,rate,low", [(0.0, 60_000.0, None), (0.005, 100.0, 128),
                                               (1.0, 60_000.0, 2048)])
def test_off_at_zero_and_the_low_limit_clamped(target_s, rate, low):
    clock = Clock()
    q = QueueLimit(2048, 128, target_s, clock=clock)
    q.rate(rate)
    if low is not None:
        assert q.low == low
    q(2048)
    clock.t += 5
    q.refused()
    # off, or a low limit no lower than the queue: the queue keeps its size
    assert q.overloaded is (low == 128) and q(2048) == (128 if low == 128 else 2048)


def test_batcher_refuses_beyond_the_lowered_limit_and_says_so():
    async def main():
        b = Batcher(lambda x: {"y": x * 2}, 4, 64, name="m/1", overload_target_s=0.001)
        b.limit.rate(1000.0)                   # 1 ms of work = 1 sample → clamped to 2 batches = 8
        assert b.limit.low == 8
        for _ in range(16):                    # 64 samples queued (nothing runs until we await)
            b.submit(np.ones((4, 1), np.float32), time.monotonic() + 10)
        b.limit._below_at -= 1.0               # the queue has stood full for a second
        with pytest.raises(Overloaded) as first:
            b.submit(np.ones((4, 1), np.float32), time.monotonic() + 10)
        assert b.limit.overloaded and "lowered under sustained overload" in str(first.value)
        await asyncio.sleep(0.05)              # drains (its runs measured a much higher rate)
        assert b.queue_depth == 0 and b.has_room(4) and b.has_room(8)
        b.limit.rate(1000.0)
        b.submit(np.ones((4, 1), np.float32), time.monotonic() + 10)
        assert not b.has_room(8)               # 4 + 8 > the lowered 8 (the whole 64 would take it)
        await asyncio.sleep(0.05)
        b.limit._refused_at -= 2.0             # no refusal for 2 s: an empty queue's check restores
        assert b.queue_depth == 0 and b.has_room(4) and not b.limit.overloaded
        await b.close()

    asyncio.run(main())
