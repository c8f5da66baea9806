"""``--intra-op-threads auto``: measure one intra-op thread against all cores, keep the faster.

A tiny model's second onnxruntime thread only steals CPU from the HTTP loop (on 2 cores the bare
server does ≈12.5k req/s with one thread and ≈6k with the default); a large model needs every
core. Which is faster depends on the model and the machine, so it is measured per model version
at load: each candidate session runs the warm-up batch sizes for a few milliseconds and the one
with the lower time per sample (summed over the sizes, each relative to the best) is kept.
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
    best = [min(times[n][i] for n in times) for i in range(len(batch_sizes))]
    cost = {n: sum(t / b for t, b in zip(ts, best, strict=True)) for n, ts in times.items()}
    chosen = min(cost, key=lambda n: (cost[n], n != 1))
    desc = ", ".join(f"{'1' if n == 1 else 'all'}: " + "/".join(f"{t * 1e6:.0f}µs" for t in ts)
                     for n, ts in times.items())
    log.info("intra-op threads for %s: %s (batch %s → %s)", first.path,
             "1" if chosen == 1 else "all cores", "/".join(map(str, batch_sizes)), desc)
    return models[chosen], f"{'1' if chosen == 1 else 'all'} (auto)"
