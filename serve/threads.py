"""``--intra-op-threads auto``: measure one intra-op thread against all cores, keep the faster.

A large model needs every core; for a tiny one a second onnxruntime thread can only steal CPU
from the HTTP loop. Which is faster depends on the model and the machine, so it is measured per
model version at load: each candidate session runs the warm-up batch sizes for a few
milliseconds, back to back.

That hot loop is biased towards one thread: it does not see what serving adds between runs —
the event loop, the hand-off to the inference thread, idle gaps between requests. onnxruntime's
worker threads spin for a while after each run, which keeps their cores awake, and on a virtual
machine an idle core costs ~100 µs to wake (measured on the 2-core CI-class VM, docs/benchmarks.md:
the shipped model runs 1.3× faster per call with one thread in the hot loop, yet over HTTP all
cores served c=1 in 0.34 ms instead of 0.44–0.53 ms and c=32 at 7.8k instead of 6.1k req/s).
So one thread is kept only when it is clearly faster — by ``ONE_THREAD_MARGIN`` at every warm-up
size — and onnxruntime's default (all cores, what Triton's ORT backend uses too) otherwise.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import numpy as np

from serve.runtime import OnnxModel

log = logging.getLogger(__name__)
BUDGET_S = 0.05                      # per candidate and batch size
ONE_THREAD_MARGIN = 1.5              # one thread must be this much faster at every size


def _seconds_per_run(model: OnnxModel, batch: int) -> float:
    x = np.zeros((batch, *model.input_shape), model.input_dtype)
    model.run(x)
    runs, t0 = 0, time.perf_counter()
    best = float("inf")
    while runs < 3 or (time.perf_counter() - t0 < BUDGET_S and runs < 200):
        t = time.perf_counter()
        model.run(x)
        best = min(best, time.perf_counter() - t)
        runs += 1
    return best


def candidates() -> list[int]:
    """1 and onnxruntime's default (0 = one per core), or just 1 on a one-core machine."""
    return [1, 0] if (os.cpu_count() or 1) > 1 else [1]


def pick_threads(make: Callable[[int], OnnxModel], setting: int | str,
                 batch_sizes: tuple[int, ...] = (1, 64)) -> tuple[OnnxModel, str]:
    """The session to serve and a note for the start-up table.

    Args:
        make: builds a session with that many intra-op threads (from the same model bytes).
        setting: ``"auto"``, or a thread count used as is (0 = onnxruntime's default).
    """
    if setting != "auto":
        n = int(setting)
        return make(n), ("default" if n == 0 else str(n))
    first = make(candidates()[0])
    if first.provider != "CPUExecutionProvider" or len(candidates()) == 1:
        return first, f"{candidates()[0]} (auto, {first.provider})"
    models = {1: first, 0: make(0)}
    times = {n: [_seconds_per_run(m, b) for b in batch_sizes] for n, m in models.items()}
    one_wins = all(t1 * ONE_THREAD_MARGIN <= t0 for t1, t0 in zip(times[1], times[0], strict=True))
    chosen = 1 if one_wins else 0
    desc = ", ".join(f"{'1' if n == 1 else 'all'}: " + "/".join(f"{t * 1e6:.0f}µs" for t in ts)
                     for n, ts in times.items())
    log.info("intra-op threads for %s: %s (batch %s → %s; one thread needs %g× at every size)",
             first.path, "1" if chosen == 1 else "all cores", "/".join(map(str, batch_sizes)),
             desc, ONE_THREAD_MARGIN)
    return models[chosen], f"{'1' if chosen == 1 else 'all'} (auto)"
