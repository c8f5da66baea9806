"""Paired evidence between two losses, with the same burden of proof in both directions.

A comparison of A and B on one number (a metric of one score) has two sources of noise: the
training seed (each seed trains a new model) and the test sample (one fixed test set shared by
every run, so its noise does not average out over seeds). Each is tested on its own, at the
one-sided level ``ALPHA``:

* **seeds**: a paired t-test on the per-seed differences ``d_s = A_s − B_s`` (S − 1 df);
* **test samples**: a paired bootstrap: the same ``B`` resamples of the test indices are applied
  to every run, so ``D_b = mean_s (A_s^b − B_s^b)`` is the seed-mean difference on resample b;
  the bound is ``mean ± z_{1−ALPHA}·sqrt(var_b(D_b) + sd_seeds²/S)`` (normal approximation; the
  seed term adds the variance a fixed test set's bootstrap cannot see).

A **clear** difference needs both one-sided bounds beyond 0 (either test alone fails at a rate
≤ ALPHA under the null, so their conjunction does too). **Equivalence** within a margin M needs
both two-sided (1 − 2·ALPHA) intervals inside (−M, M) (TOST: wrongly declared with probability
≤ ALPHA when |true difference| ≥ M). **Not higher** (non-inferiority) needs both upper bounds
below M. Anything else is *unclear*. With one seed the t-test is unavailable and nothing is clear;
without bootstrap replicates (constructed runs in tests) only the seed test is used, and the
Evidence says so. ``tests/unit/test_study_evidence.py`` checks these rates by simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
RULE = (f"a difference is *clear* when a paired one-sided t-test over seeds and a paired bootstrap "
        f"over test samples (the same resamples for every run) both reject 0 at level {ALPHA}; "
        f"*equivalent* within a margin when both {1 - 2 * ALPHA:.0%} intervals lie inside ± the "
        f"margin (TOST); *not higher* when both upper bounds lie below the margin; otherwise "
        f"*unclear*. Each wrong 'clear' or 'equivalent' call has probability ≤ {ALPHA}")


@dataclass(frozen=True)
class Evidence:
    """Paired A − B over seeds (and over bootstrap resamples of the test set when given)."""

    mean: float
    lo: float            # the weaker (lower) of the two one-sided (1 − ALPHA) lower bounds
    hi: float            # the weaker (higher) of the two one-sided (1 − ALPHA) upper bounds
    n: int
    bootstrap: bool

    @property
    def sign(self) -> int:
        """+1 clearly higher, −1 clearly lower, 0 unclear."""
        return 1 if self.lo > 0 else -1 if self.hi < 0 else 0

    def equivalent(self, margin: float) -> bool:
        return bool(-margin < self.lo and self.hi < margin)

    def not_higher(self, margin: float) -> bool:
        return bool(self.hi < margin)

    def not_lower(self, margin: float) -> bool:
        return bool(self.lo > -margin)

    def fmt(self, scale: float = 1.0, digits: int = 4) -> str:
        if not np.isfinite(self.lo):
            return f"{self.mean * scale:+.{digits}f} (1 seed: no interval)"
        return (f"{self.mean * scale:+.{digits}f} [{self.lo * scale:+.{digits}f}, "
                f"{self.hi * scale:+.{digits}f}]")


def compare(d_seeds: np.ndarray, d_boot: np.ndarray | None = None, alpha: float = ALPHA) -> Evidence:
    """Evidence on A − B from per-seed differences (S,) and bootstrap differences (B, S) or None."""
    d = np.asarray(d_seeds, dtype=np.float64)
    mean = float(d.mean()) if d.size else float("nan")
    if d.size < 2:
        return Evidence(mean, -np.inf, np.inf, int(d.size), d_boot is not None)
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(1 - alpha, d.size - 1)) * sd / np.sqrt(d.size)
    lows, highs = [mean - half], [mean + half]
    if d_boot is not None:
        db = np.asarray(d_boot, dtype=np.float64).mean(axis=1)           # (B,) seed-mean differences
        # Test-sample variance of the seed mean plus the seed variance it cannot see.
        se = float(np.sqrt(db.var(ddof=1) + sd * sd / d.size))
        z = float(stats.norm.ppf(1 - alpha))
        lows.append(mean - z * se)
        highs.append(mean + z * se)
    return Evidence(mean, min(lows), max(highs), int(d.size), d_boot is not None)
