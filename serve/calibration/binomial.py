"""The exact binomial test and Clopper–Pearson bounds that certification rests on (METHODS.md §4).

Shared by :mod:`serve.calibration.plan` (testing a plan on the certification split),
:mod:`serve.calibration.certify` (every method) and ``abstain evaluate`` (the risk interval), so
neither of the first two imports the other for them.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def binomial_p_values(n_errors: np.ndarray, n_accepted: np.ndarray, target_risk: float) -> np.ndarray:
    """P(Binomial(n, r*) ≤ k): the exact p-value of H: SR > r* given k errors in n accepted."""
    return stats.binom.cdf(np.asarray(n_errors), np.asarray(n_accepted), target_risk)


def clopper_pearson_upper(n_errors: np.ndarray | int, n_accepted: np.ndarray | int,
                          alpha: float) -> np.ndarray:
    """Exact one-sided (1 − α) upper bound sup{b : BinomCDF(k; n, b) ≥ α}; 1 when k = n."""
    k = np.asarray(n_errors, dtype=np.float64)
    n = np.asarray(n_accepted, dtype=np.float64)
    full = k >= n
    with np.errstate(invalid="ignore", divide="ignore"):
        b = stats.beta.ppf(1.0 - alpha, k + 1.0, np.where(full, 1.0, n - k))
    return np.where(full, 1.0, b)


def clopper_pearson_interval(n_errors: int, n_accepted: int, confidence: float = 0.95
                             ) -> tuple[float, float]:
    """Exact two-sided Clopper–Pearson interval for a binomial proportion."""
    if n_accepted <= 0:
        return 0.0, 1.0
    a = (1.0 - confidence) / 2.0
    lo = 0.0 if n_errors == 0 else float(stats.beta.ppf(a, n_errors, n_accepted - n_errors + 1))
    hi = 1.0 if n_errors >= n_accepted else float(stats.beta.ppf(1 - a, n_errors + 1, n_accepted - n_errors))
    return lo, hi
