"""Prometheus metrics and deferral-rate drift for one server process.

INTERFACE CONTRACT — the server (serve/server/app.py and friends) calls exactly these methods. All
metric names are prefixed ``abstain_``; model-scoped series carry ``model`` and ``version``.

Two modes:

* single process (default): one :class:`~prometheus_client.CollectorRegistry` per Monitor, so tests
  can hold several side by side;
* multiprocess (``abstain serve --workers N``): the parent calls :func:`setup_multiprocess` before
  forking; each worker's Monitor writes to the shared directory and :meth:`Monitor.render` aggregates
  every worker's files with a ``MultiProcessCollector`` at scrape time. Gauges aggregate by their
  meaning (in-flight and queue depth: sum over live workers; threshold and friends: most recent);
  the drift gauges are per worker and carry a ``pid`` label, because each worker sees only its own
  share of the traffic.

The hot path only appends: :meth:`Monitor.request_finished`, :meth:`Monitor.batch` and
:meth:`Monitor.decisions` queue their numbers, and :meth:`Monitor.flush` applies everything
queued at once — per batch of batches, with counts (``np.bincount``), never one Prometheus call per
sample or per request. One process flushes every ``FLUSH_S`` and before every scrape, so what
``/metrics`` shows is exact at the moment it is rendered; with several workers each flushes at the
end of every event-loop tick that queued something, since any sibling may answer a scrape.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from serve.monitoring.cascade_metrics import CascadeMetrics
from serve.monitoring.cascade_metrics import Hook as CascadeHook
from serve.monitoring.drift import DriftDetector
from serve.monitoring.model_series import INFO_KEYS, MV, ModelSeries, _ModelState
from serve.monitoring.prometheus import (  # noqa: F401  (re-exported)
    MULTIPROC_ENV,
    ScoreHistograms,
    setup_multiprocess,
    use_multiprocess_values,
)
from serve.monitoring.shift import ShiftMonitor
from serve.monitoring.tally import BATCH_BUCKETS, LATENCY_BUCKETS, Tally

log = logging.getLogger(__name__)
disable_created_metrics()   # no `*_created` series: they double the exposition and nothing here reads them

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class Monitor(ModelSeries, Tally):
    """Owns the Prometheus metrics of one server process (multiprocess-aware).

    Args:
        drift_window: N, the number of most recent decisions the drift test looks at.
        drift_alpha: flag drift when the binomial p-value falls below this.
        drift_every: re-test at most once per this many new samples (default N // 10).
        shift_alpha: probability of any false shift alarm within ``shift_horizon`` stationary
            predictions (the anytime-valid monitor of ``shift.py``).
        shift_horizon: the number of predictions ``shift_alpha`` covers.
        multiprocess: write to ``PROMETHEUS_MULTIPROC_DIR`` and aggregate on scrape; None = on
            iff that variable is set (see :func:`setup_multiprocess`).
    """

    def __init__(self, drift_window: int = 1000, drift_alpha: float = 0.001,
                 drift_every: int | None = None, multiprocess: bool | None = None,
                 shift_alpha: float = 0.01, shift_horizon: int = 1_000_000) -> None:
        self.drift_window = drift_window
        self.shift_alpha, self.shift_horizon = shift_alpha, shift_horizon
        ShiftMonitor(0.5, 1, shift_alpha, shift_horizon)              # validate the settings now
        self.drift_alpha = drift_alpha
        self.drift_every = drift_every
        DriftDetector(0.5, drift_window, drift_alpha, drift_every)   # validate the settings now
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV)) if multiprocess is None else multiprocess
        if self.multiprocess:
            if not os.environ.get(MULTIPROC_ENV):
                raise ValueError(f"multiprocess monitoring needs {MULTIPROC_ENV}: "
                                 "call serve.monitoring.setup_multiprocess(dir) first")
            use_multiprocess_values()
        self.registry = CollectorRegistry()
        reg = None if self.multiprocess else self.registry
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], _ModelState] = {}
        self._inflight_n = 0
        self._inflight_shown = 0
        # Queued hot-path numbers (deque append/popleft are atomic: no lock on the hot path).
        self._pending_requests: deque[tuple] = deque()
        self._pending_batches: deque[tuple] = deque()
        self._pending_decisions: deque[tuple] = deque()
        self._depths: dict[tuple[str, str], int] = {}
        self._flush_soon = False
        # Labelled children cached per (metric, labels): prometheus-client's labels() validates
        # and locks on every call, and the hot path asks for ~14 children per request.
        self._children: dict[tuple, object] = {}

        def gauge(name: str, doc: str, labels: Sequence[str], mode: str) -> Gauge:
            return Gauge(name, doc, labels, registry=reg, multiprocess_mode=mode)

        self.requests = Counter("abstain_requests", "HTTP requests by endpoint, method and status code.",
                                ("endpoint", "method", "code", *MV), registry=reg)
        self.errors = Counter("abstain_errors", "Failed requests by reason.", ("reason", *MV), registry=reg)
        self.shed_total = Counter("abstain_requests_shed", "Requests shed: 503 queue full, 504 deadline.",
                                  ("code", *MV), registry=reg)
        self.predictions = Counter("abstain_predictions", "Predictions by decision (accepted/deferred).",
                                   (*MV, "decision"), registry=reg)
        self.predicted_class = Counter("abstain_predicted_class", "Predictions by predicted class.",
                                       (*MV, "class_name"), registry=reg)
        self.request_duration = Histogram("abstain_request_duration_seconds",
                                          "End-to-end HTTP request latency by status code.",
                                          ("endpoint", "code", *MV),
                                          buckets=LATENCY_BUCKETS, registry=reg)
        self.queue_wait = Histogram("abstain_queue_wait_seconds", "Time a request waited for its batch.",
                                    MV, buckets=LATENCY_BUCKETS, registry=reg)
        self.inference = Histogram("abstain_inference_duration_seconds",
                                   "Duration of one coalesced session run.", MV,
                                   buckets=LATENCY_BUCKETS, registry=reg)
        self.batch_size = Histogram("abstain_batch_size", "Samples per coalesced session run.", MV,
                                    buckets=BATCH_BUCKETS, registry=reg)
        self._latency_bounds = np.array([*LATENCY_BUCKETS, math.inf])
        self.inflight = gauge("abstain_inflight_requests", "Inference requests in progress.", (), "livesum")
        self.queue = gauge("abstain_queue_depth", "Samples waiting for the model.", MV, "livesum")
        self.threshold = gauge("abstain_threshold", "Deployed score threshold (+Inf: defer all).",
                               MV, "livemostrecent")
        self.target_risk = gauge("abstain_target_risk", "Certified target selective risk.", MV,
                                 "livemostrecent")
        self.certified_coverage = gauge("abstain_certified_coverage",
                                        "Coverage measured on the certification split.", MV,
                                        "livemostrecent")
        self.window_coverage = gauge("abstain_window_coverage",
                                     "Acceptance rate over the drift window.", MV, "liveall")
        self.window_samples = gauge("abstain_window_samples", "Samples in the drift window.", MV,
                                    "liveall")
        self.drift_p = gauge("abstain_drift_p_value", "Binomial p-value: window vs certified coverage.",
                             MV, "liveall")
        self.drift_flag = gauge("abstain_drift_detected", "1 if the drift p-value is below alpha.", MV,
                                "liveall")
        self.shift_log_e = gauge("abstain_shift_log_e", "Label-free shift monitor: log of its "
                                 "e-detector (live vs certified acceptance).", MV, "liveall")
        self.shift_log_threshold = gauge("abstain_shift_log_threshold", "log of the e-detector's "
                                         "alarm level: 2 (1 + horizon/1000) / shift alpha.", MV, "liveall")
        self.shift_flag = gauge("abstain_shift_detected", "1 once the shift monitor alarmed in this "
                                "calibration (anytime-valid: P(any false alarm) <= shift alpha).",
                                MV, "liveall")
        if self.multiprocess:   # Info is not supported there; the same series as a 0/1 gauge.
            self.info = gauge("abstain_model_info", "Loaded model versions.", (*MV, *INFO_KEYS), "livemax")
        else:
            self.info = Info("abstain_model", "Loaded model versions.", MV, registry=reg)
        self.cascades = CascadeMetrics(reg)
        self._scores = ScoreHistograms()
        if not self.multiprocess:
            self.registry.register(self._scores)

    def _c(self, metric, *labels: str):
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- per request (called by middleware / handlers) -------------------------------------
    def request_started(self) -> None:
        """An inference request entered (in-flight gauge +1 at the next flush)."""
        self._inflight_n += 1

    def request_finished(self, endpoint: str, method: str, status: int, latency_s: float,
                         model: str = "", version: str = "", inference: bool | None = None) -> None:
        """Any HTTP request ended (in-flight −1 for inference ones; counters, latency).

        ``inference`` says whether :meth:`request_started` was called for this request; when
        None it is taken to be so iff ``model`` is set. The gauge never goes below zero.
        """
        self._pending_requests.append((endpoint, method, status, latency_s, model, version))
        self._kick()
        if inference is None:
            inference = bool(model)
        if inference and self._inflight_n > 0:
            self._inflight_n -= 1

    def error(self, reason: str, model: str = "", version: str = "") -> None:
        """A request failed; ``reason`` is a short machine name (bad_shape, nan, queue_full …)."""
        self.errors.labels(reason, model, version).inc()

    def shed(self, model: str, version: str, status: int) -> None:
        """A request was shed: 503 (queue full) or 504 (deadline missed)."""
        self.shed_total.labels(str(int(status)), model, version).inc()

    # --- per batch (called by the batcher after one session run) ----------------------------
    def queue_depth(self, model: str, version: str, depth: int) -> None:
        """Current number of samples waiting for the model."""
        self._depths[(model, version)] = depth

    def batch(self, model: str, version: str, batch_size: int, queue_wait_s: Sequence[float],
              inference_s: float) -> None:
        """One coalesced session run: its size, each request's queue wait, the run's duration."""
        self._pending_batches.append((model, version, batch_size, queue_wait_s, inference_s))
        self._kick()

    def decisions(self, model: str, version: str, labels: np.ndarray, class_names: Sequence[str],
                  scores: np.ndarray, reject: np.ndarray) -> None:
        """Per-sample outcomes of one batch: accepted/deferred counts, predicted class, scores."""
        self._pending_decisions.append((model, version, labels, class_names, scores, reject))
        self._kick()

    def cascade_hook(self, model: str, version: str, calibration: Any = None) -> CascadeHook:
        """Per-stage series of one cascade, and with its ``calibration`` (a CascadeCalibration)
        the per-stage drift test at this monitor's window and α (cascade_metrics.py)."""
        if calibration is None:
            hook = self.cascades.hook(model, version)
        else:
            hook = self.cascades.hook(model, version, calibration.stage_rows, calibration.n_cert,
                                      (self.drift_window, self.drift_alpha, self.drift_every))
        if not self.multiprocess:
            return hook

        def queue_and_kick(stage: int, accepted: np.ndarray, seconds: list[float]) -> None:
            hook(stage, accepted, seconds)
            self._kick()

        return queue_and_kick

    # --- exposition ---------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The /metrics body and its content type (Prometheus text format 0.0.4)."""
        self.flush()
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE
        return generate_latest(self.registry), CONTENT_TYPE

    def close(self) -> None:
        """This worker is exiting: drop its live gauges from the shared files (multiprocess)."""
        self.flush()
        if self.multiprocess:
            mark_process_dead(os.getpid())


