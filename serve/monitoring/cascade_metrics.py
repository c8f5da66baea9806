"""Prometheus series per cascade stage: samples answered and deferred, time spent in the stage.

``abstain_cascade_stage_samples_total{model, version, stage, outcome}`` counts, per stage, the
samples it accepted (``answered``) and passed on (``deferred``: to the next stage, or from the
last stage to people); ``abstain_cascade_stage_duration_seconds{model, version, stage}`` is the
time a request spent in each stage it reached (its queue wait and run on the stage's batcher).
``model``/``version`` name the cascade; each stage model's own series stay its own.

The hook only queues what a stage's batch did; :meth:`CascadeMetrics.flush` (called by
``Monitor.flush``) applies it, one update per series and stage however many batches it covers.

The deferral-drift test per stage (``drift.py``'s binomial window test): among the samples that
*reach* stage k, the share it accepts is tested against the share the cascade's certification
measured there (``accepted / reached`` in ``cascade_calibration.json``'s ``stage_rows``), in
``abstain_cascade_stage_{window_coverage,drift_p_value,drift_detected}{model, version, stage}``.
A stage model's own drift test sees its own traffic and the cascade's deferrals mixed; this one
sees exactly the routing the certificate was made for.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serve.monitoring.drift import DriftDetector
from serve.monitoring.prometheus import observe_many
from serve.monitoring.tally import LATENCY_BUCKETS

log = logging.getLogger(__name__)
MVS = ("model", "version", "stage")

# on_pass(stage, whether each sample reaching it was accepted there, each request's seconds in it):
# once per batch of the stage (serve/server/cascade_batch.py)
Hook = Callable[[int, np.ndarray, list[float]], None]
BOUNDS = np.array([*LATENCY_BUCKETS, math.inf])


class CascadeMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.samples = Counter("abstain_cascade_stage_samples",
                               "Cascade samples per stage: answered there or deferred onward.",
                               ("model", "version", "stage", "outcome"), registry=registry)
        self.duration = Histogram("abstain_cascade_stage_duration_seconds",
                                  "Time a cascade request spent in each stage it reached.",
                                  MVS, buckets=LATENCY_BUCKETS, registry=registry)

        def gauge(name: str, doc: str) -> Gauge:          # per worker under --workers (pid)
            return Gauge(name, doc, MVS, registry=registry, multiprocess_mode="liveall")

        self.window_coverage = gauge("abstain_cascade_stage_window_coverage",
                                     "Share of the samples reaching a cascade stage that it "
                                     "accepted, over the drift window.")
        self.drift_p = gauge("abstain_cascade_stage_drift_p_value",
                             "Binomial p-value: a stage's window acceptance vs its certified one.")
        self.drift_flag = gauge("abstain_cascade_stage_drift_detected",
                                "1 if the stage's drift p-value is below alpha.")
        self._pending: deque = deque()                # what the hooks queued since the last flush

    def hook(self, model: str, version: str, stage_rows: list[dict[str, Any]] | None = None,
             n_cert: int = 0, drift: tuple[int, float, int | None] | None = None) -> Hook:
        """The cascade batcher's per-batch hook. It only queues; :meth:`flush` applies (the
        server's monitor flushes every ``FLUSH_S`` and before every scrape).

        Args:
            stage_rows, n_cert: the cascade calibration's per-stage rows and certification size:
                with ``drift`` = (window, alpha, every), each stage that certification samples
                reached gets a drift test against its certified acceptance share.
        """
        children: dict[int, tuple] = {}
        detectors: dict[int, DriftDetector] = {}
        if drift is not None and stage_rows and n_cert > 0:
            for row in stage_rows:
                reached = round(float(row["reach_share"]) * n_cert)
                if reached > 0:
                    k = int(row["stage"])
                    detectors[k] = DriftDetector(min(1.0, int(row["accepted"]) / reached), *drift)
                    self.window_coverage.labels(model, version, str(k)).set(float("nan"))
                    self.drift_p.labels(model, version, str(k)).set(float("nan"))
                    self.drift_flag.labels(model, version, str(k)).set(0)
        gauges: dict[int, tuple] = {}

        def test(stage: int, accepted: np.ndarray) -> None:
            det = detectors[stage]
            st = det.update(accepted)
            g = gauges.get(stage)
            if g is None:
                s = str(stage)
                g = gauges[stage] = (self.window_coverage.labels(model, version, s),
                                     self.drift_p.labels(model, version, s),
                                     self.drift_flag.labels(model, version, s))
            g[0].set(st.window_coverage)
            g[1].set(st.p_value)
            g[2].set(int(st.detected))
            if st.changed and st.detected:
                log.warning("cascade %s/%s stage %d: acceptance among the samples reaching it is "
                            "%.4f over the last %d, certified %.4f (binomial p = %.2g): the "
                            "inputs reaching this stage have shifted", model, version, stage,
                            st.window_coverage, st.n, det.coverage, st.p_value)

        def of(stage: int) -> tuple:
            c = children.get(stage)
            if c is None:
                s = str(stage)
                c = children[stage] = (self.samples.labels(model, version, s, "answered"),
                                       self.samples.labels(model, version, s, "deferred"),
                                       self.duration.labels(model, version, s))
            return c

        def apply(stage: int, accepted: np.ndarray, seconds: np.ndarray) -> None:
            ans, dfr, dur = of(stage)
            a = int(np.count_nonzero(accepted))
            if a:
                ans.inc(a)
            if len(accepted) - a:
                dfr.inc(len(accepted) - a)
            observe_many(dur, BOUNDS, seconds)
            if stage in detectors and len(accepted):
                test(stage, accepted)

        pending = self._pending

        def on_pass(stage: int, accepted: np.ndarray, seconds: list[float]) -> None:
            pending.append((apply, stage, accepted, seconds))

        return on_pass

    def flush(self) -> None:
        """Apply every queued pass: per cascade and stage, one update of each series and one
        drift test over the samples in arrival order (``Monitor.flush``)."""
        grouped: dict[tuple, tuple[list, list]] = {}
        while True:
            try:
                apply, stage, accepted, seconds = self._pending.popleft()
            except IndexError:
                break
            acc, sec = grouped.setdefault((apply, stage), ([], []))
            acc.append(accepted)
            sec.extend(seconds)
        for (apply, stage), (acc, sec) in grouped.items():
            try:
                apply(stage, acc[0] if len(acc) == 1 else np.concatenate(acc), np.array(sec))
            except Exception:
                log.exception("cascade metrics update failed (ignored)")
