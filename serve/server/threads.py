"""``--intra-op-threads auto``: which onnxruntime sessions serve a model version.

A request runs in one of two situations (serve/server/dataplane/batch.py):

* **alone** — nothing else in flight, run at once on the event loop. The machine is otherwise
  idle, so spare cores cost nothing, and onnxruntime's worker threads (which spin for a while
  after each run) keep their cores awake between requests; on a virtual machine an idle core
  costs ~100 µs to wake. Measured on the 2-core CI-class VM with the shipped model: c=1 p50
  0.26 ms with all cores vs 0.44–0.53 ms with one thread, although one thread is 1.3× faster per
  run back to back. So a request alone runs on an all-cores session.
* **batched** — the machine is busy with HTTP, and a tiny model's extra threads only steal CPU
  from the loop (the shipped model, 64-sample requests at 1× load: 614 requests/s with one thread,
  457 with all cores); a large model needs every core. Which is faster depends on the model and
  the machine, so it is measured per version at load: each candidate runs the warm-up batch sizes
  for a few milliseconds, and the lower time per sample (summed over the sizes, each relative to
  the best) wins.

When all cores win the batches too, one session serves both. The start-up table's ``threads``
column says what was chosen.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serve.server.runtime import OnnxModel

log = logging.getLogger(__name__)
BUDGET_S = 0.05                      # per candidate and batch size


@dataclass(frozen=True)
class Sessions:
    """The session for batched runs, the one for a request alone (often the same), a note."""

    batch: OnnxModel
    alone: OnnxModel
    note: str


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
                 batch_sizes: tuple[int, ...] = (1, 64)) -> Sessions:
    """The sessions to serve (see the module docstring).

    Args:
        make: builds a session with that many intra-op threads (from the same model bytes).
        setting: ``"auto"``, or a thread count used as is for both (0 = onnxruntime's default).
    """
    if setting != "auto":
        n = int(setting)
        one = make(n)
        return Sessions(one, one, "default" if n == 0 else str(n))
    first = make(candidates()[0])
    if first.provider != "CPUExecutionProvider" or len(candidates()) == 1:
        return Sessions(first, first, f"{candidates()[0]} (auto, {first.provider})")
    models = {1: first, 0: make(0)}
    times = {n: [_seconds_per_run(m, b) for b in batch_sizes] for n, m in models.items()}
    best = [min(times[n][i] for n in times) for i in range(len(batch_sizes))]
    cost = {n: sum(t / b for t, b in zip(ts, best, strict=True)) for n, ts in times.items()}
    chosen = min(cost, key=lambda n: (cost[n], n != 1))
    desc = ", ".join(f"{'1' if n == 1 else 'all'}: " + "/".join(f"{t * 1e6:.0f}µs" for t in ts)
                     for n, ts in times.items())
    log.info("intra-op threads for %s: batches on %s, a request alone on all cores (batch %s → %s)",
             first.path, "1" if chosen == 1 else "all cores", "/".join(map(str, batch_sizes)), desc)
    if chosen == 0:
        return Sessions(models[0], models[0], "all (auto)")
    return Sessions(models[1], models[0], "1, alone: all (auto)")
