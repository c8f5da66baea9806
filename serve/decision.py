"""Logits → decisions for a batch, vectorised: the one place the deployed rule is applied.

`abstain evaluate`, `abstain package` and the server all apply a :class:`DecisionRule`, with the
score function and threshold that `abstain calibrate` certified, so what is evaluated is exactly
what is served. The rule needs only a :class:`RuleSpec` (a calibration artifact,
:class:`serve.calibration.artifact.Calibration`, is one), so this module sits below calibration.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from serve.scores import Score, as_logits, softmax


class Decisions(NamedTuple):
    """Per-sample decisions for a batch of n (a tuple: one is built per batch on the hot path).

    Attributes:
        label: (n,) int64 predicted class (argmax of the logits).
        score: (n,) float64 confidence score (higher = more confident).
        reject: (n,) bool, True = deferred to the fallback.
        probabilities: (n, K) float64 softmax at the calibration's probability temperature, or
            None if not asked for.
    """

    label: np.ndarray
    score: np.ndarray
    reject: np.ndarray
    probabilities: np.ndarray | None = None


class RuleSpec(Protocol):
    """What a decision rule needs from a calibration: its score, threshold and the temperature
    of the reported probabilities (the score carries its own)."""

    @property
    def threshold(self) -> float | None: ...    # None: nothing certified, defer everything

    @property
    def probs_temperature(self) -> float: ...

    def score_fn(self) -> Score: ...


class DecisionRule:
    """A calibration's score, threshold and probability temperature, prepared once and applied
    per batch. The score (with its own temperature) decides; the probabilities only report."""

    def __init__(self, calibration: RuleSpec) -> None:
        self.calibration = calibration              # as given: the probe check reads the rest
        self.score: Score = calibration.score_fn()
        self.threshold = calibration.threshold
        self.probs_temperature = calibration.probs_temperature
        # Set by the server's risk guard (serve/feedback/guard.py, --on-risk-alarm defer) while
        # this calibration's live risk alarms: every sample is deferred. A new calibration is a
        # new rule, so loading one clears it.
        self.force_defer = False

    def __call__(self, logits: np.ndarray, probabilities: bool = False) -> Decisions:
        z = as_logits(logits)                       # (n, K) float64, finite
        s = self.score.of_logits(z)                 # (n,)
        if self.threshold is None or self.force_defer:
            reject = np.ones_like(s, dtype=bool)
        else:
            reject = s < self.threshold
        probs = softmax(z / self.probs_temperature) if probabilities else None
        return Decisions(label=z.argmax(axis=1), score=s, reject=reject, probabilities=probs)


    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The softmax ``(n, K)`` float64 at the probability temperature, row by row (so the rows
        of a batch get exactly what they would get alone); computed only for requests that ask."""
        return softmax(as_logits(logits) / self.probs_temperature)
