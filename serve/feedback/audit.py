"""Audit draws: each sample is audited with probability q, independently of everything else.

The draw happens before the decision is looked at and uses nothing but a random generator, so
audited samples are a uniform sample of all traffic, and audited *accepted* samples a uniform
sample of accepted traffic (METHODS §7). The flag is recorded, never returned to the client.
"""

from __future__ import annotations

import numpy as np


class Auditor:
    """Bernoulli(q) audit flags for whole batches (one vectorised draw per batch)."""

    def __init__(self, rate: float, seed: int | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"audit rate must be in [0, 1], got {rate}")
        self.rate = float(rate)
        self._rng = np.random.default_rng(seed)

    def draw(self, n: int) -> np.ndarray:
        """Audit flags for ``n`` samples (bool array). Call before the decision is computed."""
        if self.rate <= 0.0:
            return np.zeros(n, dtype=bool)
        if self.rate >= 1.0:
            return np.ones(n, dtype=bool)
        return self._rng.random(n) < self.rate
