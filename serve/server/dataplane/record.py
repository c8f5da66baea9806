"""Record: what happens after every session run, once per batch — never once per sample.

The batcher calls the hook built here after each run with the batch's request ids, sizes, queue
waits, run time and outputs. It queues the numbers for Prometheus and the drift test
(``serve/monitoring/monitor.py`` applies them per flush) and hands the decisions to any further sinks
(e.g. the decision store of the human-review loop). A failing sink is logged, never raised: a
prediction never fails because its bookkeeping did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from serve.monitoring.monitor import Monitor
from serve.server.dataplane.batch import BatchHook
from serve.server.dataplane.batch_queue import Tag
from serve.server.repository import ModelVersion

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
            for sink in self.sinks:
                try:
                    sink(mv, tags, sizes, out)
                except Exception:
                    log.exception("record sink %r failed (the predictions were served)", sink)

        return on_batch
