"""A model version's series going live and leaving: the half of the monitor that hot reload calls.

:class:`ModelSeries` is the mixin of :class:`serve.monitoring.Monitor` that sets a version's
calibration gauges, its confidence-score histogram (buckets from its calibration), its drift test
and its shift monitor when it loads, and removes them when it is unloaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from prometheus_client import Histogram

from serve import __version__
from serve.calibration.artifact import Calibration
from serve.monitoring.drift import DriftDetector
from serve.monitoring.shift import ShiftMonitor
from serve.monitoring.tally import FLUSH_S

MV = ("model", "version")
INFO_KEYS = ("provider", "model_sha256", "calibration_sha256", "score", "method", "abstain_version")


def score_buckets(calibration: Calibration) -> tuple[float, ...]:
    """Confidence-score histogram bounds: the certification quantiles plus the threshold."""
    bounds = {float(q) for q in calibration.score_quantiles if math.isfinite(q)}
    if calibration.threshold is not None:
        bounds.add(float(calibration.threshold))
    return tuple(sorted(bounds)) or (0.0,)


@dataclass
class _ModelState:
    calibration_sha256: str
    score_hist: Histogram                  # per version: its buckets come from its calibration
    score_bounds: np.ndarray               # (B + 1,) upper bounds incl. +Inf
    drift: DriftDetector
    shift: ShiftMonitor | None            # None: the calibration records no certification split


class ModelSeries:
    """Mixin of :class:`~serve.monitoring.Monitor`: ``model_loaded`` and ``model_unloaded``."""

    def model_loaded(self, model: str, version: str, provider: str,
                     calibration: Calibration, model_sha256: str) -> None:
        """A model version went live (at start or by hot reload)."""
        key = (model, version)
        self._children.clear()                 # metric objects may be replaced below
        cal_sha = calibration.sha256
        bounds = score_buckets(calibration)
        with self._lock:
            old = self._models.get(key)
            if old is not None and old.calibration_sha256 == cal_sha:
                state = old
            else:
                hist = (old.score_hist if old is not None and tuple(old.score_bounds[:-1]) == bounds
                        else Histogram("abstain_confidence_score", "Confidence score.", MV,
                                       buckets=bounds, registry=None))
                # Several workers flush at every event-loop tick: there the shift statistic is
                # evaluated at most once per FLUSH_S (its counts are kept at every flush).
                shift = (ShiftMonitor(calibration.coverage, calibration.n_cert, self.shift_alpha,
                                      self.shift_horizon,
                                      min_interval_s=FLUSH_S if self.multiprocess else 0.0)
                         if calibration.n_cert >= 1 else None)
                state = _ModelState(cal_sha, hist, np.array([*bounds, math.inf]),
                                    DriftDetector(calibration.coverage, self.drift_window,
                                                  self.drift_alpha, self.drift_every), shift)
                self._models[key] = state
                self._scores.hists[key] = hist
            state.score_hist.labels(model, version)    # expose empty buckets from the start
        self.threshold.labels(model, version).set(
            math.inf if calibration.threshold is None else calibration.threshold)
        self.target_risk.labels(model, version).set(calibration.target_risk)
        self.certified_coverage.labels(model, version).set(calibration.coverage)
        self.window_coverage.labels(model, version).set(math.nan)
        self.window_samples.labels(model, version).set(0)
        self.drift_p.labels(model, version).set(math.nan)
        self.drift_flag.labels(model, version).set(0)
        self.shift_log_e.labels(model, version).set(math.nan)
        self.shift_log_threshold.labels(model, version).set(
            state.shift.log_threshold if state.shift is not None else math.nan)
        self.shift_flag.labels(model, version).set(int(state.shift is not None
                                                        and bool(state.shift.detected[0])))
        info = {"provider": provider, "model_sha256": model_sha256, "calibration_sha256": cal_sha,
                "score": calibration.score, "method": calibration.method,
                "abstain_version": __version__}
        if self.multiprocess:
            self.info.labels(model, version, *(info[k] for k in INFO_KEYS)).set(1)
        else:
            self.info.labels(model, version).info(info)
        for dec in ("accepted", "deferred"):
            self.predictions.labels(model, version, dec)

    def model_unloaded(self, model: str, version: str) -> None:
        """A model version was removed from the repository.

        Its gauges and score histogram disappear (counters stay, as Prometheus expects). In
        multiprocess mode prometheus-client cannot delete samples from the shared files: the
        version's gauges stay until the workers restart; only the drift state is dropped.
        """
        key = (model, version)
        self._children.clear()                 # removed label sets must not be served from cache
        with self._lock:
            self._models.pop(key, None)
            self._scores.hists.pop(key, None)
        if self.multiprocess:
            return
        for g in (self.threshold, self.target_risk, self.certified_coverage, self.window_coverage,
                  self.window_samples, self.drift_p, self.drift_flag, self.shift_log_e,
                  self.shift_log_threshold, self.shift_flag, self.queue, self.info):
            g.remove(model, version)
