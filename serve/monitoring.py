"""Prometheus metrics and deferral-rate drift (issue 6 fills the bodies; the server calls these).

INTERFACE CONTRACT — the server (serve/app.py and friends) calls exactly these methods; the
monitoring work implements them. Until then they are no-ops. All names are prefixed `abstain_`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serve.calibration.artifact import Calibration


class Monitor:
    """Owns the Prometheus registry of one server process (multiprocess-aware)."""

    def __init__(self, drift_window: int = 1000, drift_alpha: float = 0.001) -> None:
        self.drift_window = drift_window
        self.drift_alpha = drift_alpha

    # --- model lifecycle -------------------------------------------------------------------
    def model_loaded(self, model: str, version: str, provider: str,
                     calibration: Calibration, model_sha256: str) -> None:
        """A model version went live (at start or by hot reload)."""

    def model_unloaded(self, model: str, version: str) -> None:
        """A model version was removed from the repository."""

    # --- per request (called by middleware / handlers) -------------------------------------
    def request_started(self) -> None:
        """An inference request entered (in-flight gauge +1)."""

    def request_finished(self, endpoint: str, method: str, status: int, latency_s: float,
                         model: str = "", version: str = "") -> None:
        """Any HTTP request ended (in-flight gauge −1 for inference ones; counters, latency)."""

    def error(self, reason: str, model: str = "", version: str = "") -> None:
        """A request failed; ``reason`` is a short machine name (bad_shape, nan, queue_full …)."""

    def shed(self, model: str, version: str, status: int) -> None:
        """A request was shed: 503 (queue full) or 504 (deadline missed)."""

    # --- per batch (called by the batcher after one session run) ----------------------------
    def queue_depth(self, model: str, version: str, depth: int) -> None:
        """Current number of samples waiting for the model."""

    def batch(self, model: str, version: str, batch_size: int, queue_wait_s: Sequence[float],
              inference_s: float) -> None:
        """One coalesced session run: its size, each request's queue wait, the run's duration."""

    def decisions(self, model: str, version: str, labels: np.ndarray, class_names: Sequence[str],
                  scores: np.ndarray, reject: np.ndarray) -> None:
        """Per-sample outcomes of one batch: accepted/deferred counts, predicted class, scores."""

    # --- exposition ---------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The /metrics body and its content type."""
        return b"", "text/plain; version=0.0.4; charset=utf-8"
