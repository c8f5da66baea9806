"""serve/server/garbage.py: full collections on the server's schedule, the process's GC given back."""

from __future__ import annotations

import gc
import time

from serve.server.garbage import NEVER, Collector


def test_start_freezes_and_takes_over_full_collections_stop_gives_them_back():
    before = gc.get_threshold()
    c = Collector(busy=lambda: False, idle_s=0.05, max_s=10)
    c.start()
    try:
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[2] == NEVER
        assert gc.get_threshold()[:2] == before[:2]          # young generations stay automatic
    finally:
        c.stop()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_tick_collects_when_idle_after_idle_s_and_under_load_only_after_max_s():
    busy = [True]
    trims: list[int] = []
    c = Collector(busy=lambda: busy[0], idle_s=0.05, max_s=0.3)
    c._trim = lambda: trims.append(1)                        # glibc's malloc_trim, counted
    c.start()
    try:
        garbage = []
        garbage.append(garbage)                               # a reference cycle
        del garbage
        c.tick()
        assert c.collections == 0                             # nothing due yet
        time.sleep(0.1)
        c.tick()
        assert c.collections == 0                             # due when idle, but busy
        busy[0] = False
        c.tick()
        assert c.collections == 1                             # idle and idle_s passed
        busy[0] = True
        time.sleep(0.35)
        c.tick()
        assert c.collections == 2 and trims == [1]            # max_s passed: even when busy
        busy[0] = False                                       # (trimmed after idle ones only)
        time.sleep(0.1)
        c.tick()
        assert c.collections == 3 and trims == [1, 1]         # requests ran since: idle one again
        time.sleep(0.1)
        c.tick()
        assert c.collections == 3                             # idle, nothing ran since: no work
    finally:
        c.stop()
