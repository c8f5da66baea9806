"""Record: what happens after every session run, once per batch — never once per sample.

The batcher calls the hook built here after each run with the batch's request ids, sizes, queue
waits, run time and outputs. It queues the numbers for Prometheus and the drift test
(``serve/monitoring/monitor.py`` applies them per flush) and hands the decisions to any further sinks
(e.g. the decision store of the human-review loop), less the samples a cascade sent to this
stage (the cascade records them itself: :meth:`Record.cascade_hook`). A failing sink is logged,
never raised: a prediction never fails because its bookkeeping did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from serve.monitoring.monitor import Monitor
from serve.server.cascade_batch import STAGE_CALL, RecordHook
from serve.server.dataplane.batch_accounting import BatchHook
from serve.server.dataplane.batch_queue import Tag
from serve.server.model_version import ModelVersion

log = logging.getLogger(__name__)

# sink(model version, tags (server id, client id) per request, rows per request, outputs of the
# whole batch)
Sink = Callable[[ModelVersion, list[Tag], list[int], dict[str, np.ndarray]], None]


class Record:
    """The record stage of one server process."""

    def __init__(self, monitor: Monitor, sinks: list[Sink] | None = None) -> None:
        self.monitor = monitor
        self.sinks: list[Sink] = list(sinks or ())

    def hook(self, mv: ModelVersion) -> BatchHook:
        """The batcher's ``on_batch`` for one model version."""
        name, ver, classes, monitor = mv.name, str(mv.version), mv.class_names, self.monitor

        def on_batch(tags: list[Tag], sizes: list[int], waits: list[float], inference_s: float,
                     out: dict[str, np.ndarray]) -> None:
            monitor.batch(name, ver, sum(sizes), waits, inference_s)
            monitor.decisions(name, ver, out["label"], classes, out["score"], out["reject"])
            if not self.sinks:
                return
            if any(t is STAGE_CALL for t in tags):
                tags, sizes, out = _without_stage_calls(tags, sizes, out)
                if not tags:
                    return
            self._to_sinks(mv, tags, sizes, out)

        return on_batch

    def cascade_hook(self, cv: Any) -> RecordHook | None:
        """A cascade's ``on_record(tags, sizes, outputs)``: its decisions (with ``stage``) to the
        sinks, once per batch of requests its last stages finished; None without sinks.
        Prometheus has the cascade's own series (``Monitor.cascade_hook``); each stage model's
        batches are recorded by its own hook."""
        if not self.sinks:
            return None

        def on_record(tags: list[Tag], sizes: list[int], out: dict[str, np.ndarray]) -> None:
            self._to_sinks(cv, tags, sizes, out)

        return on_record

    def _to_sinks(self, version: Any, tags: list[Tag], sizes: list[int],
                  out: dict[str, np.ndarray]) -> None:
        """Every sink gets the batch; a failing sink is logged, never raised (served already)."""
        for sink in self.sinks:
            try:
                sink(version, tags, sizes, out)
            except Exception:
                log.exception("record sink %r failed (the predictions were served)", sink)


def _without_stage_calls(tags: list[Tag], sizes: list[int], out: dict[str, np.ndarray]
                         ) -> tuple[list[Tag], list[int], dict[str, np.ndarray]]:
    """The batch without the requests a cascade made of this stage: the store records those
    samples once, as the cascade's decisions (with their stage), not again as the stage's."""
    keep = [t is not STAGE_CALL for t in tags]
    rows = np.repeat(np.array(keep), sizes)
    n = len(rows)
    return ([t for t, k in zip(tags, keep, strict=True) if k],
            [s for s, k in zip(sizes, keep, strict=True) if k],
            {key: v[rows] if isinstance(v, np.ndarray) and len(v) == n else v
             for key, v in out.items()})
