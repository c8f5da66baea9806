"""The cyclic garbage collector, kept off the request path.

CPython's full (generation-2) collection scans every tracked object. In a server that is ~140k
objects of modules, sessions and routes that live as long as the process, and the collection is
triggered by allocation, i.e. by load: measured on the 2-core CI machine at 16× offered load, full
collections of 40–75 ms ran several times a second, and every answer in flight — a refusal
included — waited for them (the refused-answer p99 of issue 16). So the server:

* freezes what start-up made (``gc.freeze``): a full collection scans only what requests made;
* turns automatic full collections off (generation-2 threshold out of reach; generations 0 and 1,
  which see only young objects, stay automatic);
* runs the full collection itself (:meth:`Collector.tick`, from the per-tick bookkeeping task):
  when no request is in flight, at most every ``idle_s``, and at the latest every ``max_s`` even
  under load, so cyclic garbage (a few objects per refused request) stays bounded;
* after an idle collection, hands the C allocator's free pages back to the system
  (glibc ``malloc_trim``): a burst of 512 connections with 50 KB bodies otherwise left the
  process ~15% larger for good (the overload benchmark's RSS check).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)
NEVER = 1 << 30                       # a generation-2 threshold no count reaches


def _malloc_trim() -> Callable[[], object] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):              # not glibc (musl, macOS): nothing to trim
        return None
    return lambda: trim(0)


class Collector:
    """Full collections on the server's schedule (see the module docstring)."""

    def __init__(self, busy: Callable[[], bool], idle_s: float = 2.0, max_s: float = 60.0) -> None:
        self.busy, self.idle_s, self.max_s = busy, idle_s, max_s
        self._trim = _malloc_trim()
        self._dirty = False                # requests ran since the last idle collection
        self._saved: tuple[int, int, int] | None = None
        self._last = time.monotonic()
        self.collections = 0

    def start(self) -> None:
        """After start-up: collect once, freeze the survivors, take over full collections."""
        gc.collect()
        gc.freeze()
        self._saved = gc.get_threshold()
        gc.set_threshold(self._saved[0], self._saved[1], NEVER)
        self._last = time.monotonic()

    def tick(self) -> None:
        """Run a full collection if one is due: idle, ``idle_s`` since the last and requests ran
        since (then the allocator is trimmed too), or ``max_s`` since the last, busy or not."""
        busy = self.busy()
        self._dirty = self._dirty or busy
        since = time.monotonic() - self._last
        idle_due = since >= self.idle_s and not busy and self._dirty
        if since >= self.max_s or idle_due:
            t0 = time.perf_counter()
            found = gc.collect()
            if idle_due and self._trim is not None:
                self._trim()
                self._dirty = False
            self._last = time.monotonic()
            self.collections += 1
            log.debug("full collection: %d unreachable objects in %.1f ms", found,
                      (time.perf_counter() - t0) * 1e3)

    def stop(self) -> None:
        """Give the process its collector back (tests run several servers in one process)."""
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            gc.unfreeze()
            self._saved = None
