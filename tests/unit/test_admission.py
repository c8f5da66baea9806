"""The admit stage: queue room reserved from Content-Length, handed over at submit, released."""

from __future__ import annotations

import asyncio

import pytest

from serve.server.dataplane.admit import Admission
from serve.server.dataplane.batch import Batcher, Overloaded
from serve.server.dataplane.head import Head


def test_admitted_requests_hold_queue_room_so_later_ones_are_refused_from_headers():
    async def main():
        b = Batcher(lambda x: {"y": x}, max_batch_size=8, max_queue_size=8)
        a = Admission(api_key=None, max_body_bytes=1 << 20, max_inflight=100, max_body_buffer=1 << 30,
                      request_timeout_s=30.0)
        a.learn(b, "v2", 1000, 4)                     # 250 bytes per sample seen so far
        head = Head(content_length=1250)              # ≈ 1250 / (1.25 · 250) = 4 samples
        first = a.admit(head, b, "v2")
        second = a.admit(head, b, "v2")
        held = b.queue_depth
        with pytest.raises(Overloaded, match="samples queued"):
            a.admit(head, b, "v2")                    # 8 of 8 reserved: refused, body unread
        first.hand_over()                             # its own samples are about to be queued
        handed = b.queue_depth
        a.release(first)
        a.release(second)                             # ended without submitting: room returns
        await b.close()
        return held, handed, b.queue_depth, a.inflight, a.buffered

    assert asyncio.run(main()) == (8, 4, 0, 0, 0)


def test_a_request_without_content_length_reserves_no_samples():
    async def main():
        b = Batcher(lambda x: {"y": x}, max_batch_size=8, max_queue_size=8)
        a = Admission(api_key=None, max_body_bytes=1 << 20, max_inflight=100, max_body_buffer=1 << 30,
                      request_timeout_s=30.0)
        t = a.admit(Head(content_length=None), b, "v2")
        depth = b.queue_depth
        a.release(t)
        await b.close()
        return depth, t.body_bytes

    assert asyncio.run(main()) == (0, 1 << 20)
