"""Counting a cascade's outcomes for every threshold vector of a grid at once.

For K stages with G thresholds each, the accepted samples, errors and samples reaching each
stage of all Gᴷ vectors, from rank histograms and cumulative sums: O(n + Gᴷ). Used by
:mod:`serve.calibration.cascade` on the tuning split (to plan) and the certification split (to
test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from serve.calibration.certify import CertifyError

MAX_STAGES = 3


@dataclass(frozen=True)
class Counts:
    """Outcome counts of threshold vectors (leading axes: one per vector)."""

    accepted: np.ndarray         # (..., K) accepted by stage k
    errors: np.ndarray           # (..., K) errors among them
    reach: np.ndarray            # (..., K) samples that reach stage k (reach[..., 0] = n)
    n: int

    @property
    def total_accepted(self) -> np.ndarray:
        return self.accepted.sum(axis=-1)

    @property
    def total_errors(self) -> np.ndarray:
        return self.errors.sum(axis=-1)

    @property
    def human(self) -> np.ndarray:
        return self.n - self.total_accepted


def check_arrays(scores: np.ndarray, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    e = np.asarray(errors, dtype=bool)
    if s.ndim != 2 or s.shape != e.shape or not 2 <= s.shape[1] <= MAX_STAGES:
        raise CertifyError(f"a cascade needs scores and errors of shape (n, K) with 2 ≤ K ≤ "
                           f"{MAX_STAGES} stages; got {s.shape} and {e.shape}")
    if not np.isfinite(s).all():
        raise CertifyError("cascade scores must be finite")
    return s, e


ACCEPT_ALL = -float(np.finfo(np.float64).max)    # below every finite score, and valid JSON


def stage_grid(scores: np.ndarray, points: int) -> np.ndarray:
    """Ascending: ``ACCEPT_ALL``, thresholds at evenly spaced coverages of ``scores``, then +∞
    (accept none).

    ``ACCEPT_ALL`` keeps "accept every sample" on the grid when the lowest tuning score is high
    (a confident model at its fitted temperature scores every tuning sample 1.0): without it the
    most permissive point would defer every certification sample scored below that.
    """
    cov = np.linspace(0.0, 1.0, points - 1)
    t = np.quantile(scores, 1.0 - cov, method="inverted_cdf") if scores.size else np.zeros(0)
    return np.concatenate(([ACCEPT_ALL], np.unique(t), [np.inf]))


def grid_counts(scores: np.ndarray, errors: np.ndarray, grids: tuple[np.ndarray, ...]) -> Counts:
    """Counts for every vector of the grid: arrays of shape ``(G₁, …, G_K, K)``."""
    s, e = check_arrays(scores, errors)
    accepted, errs, reach = grid_sums(s, e.astype(np.float64), grids)
    return Counts(np.rint(accepted).astype(np.int64), np.rint(errs).astype(np.int64),
                  np.rint(reach).astype(np.int64), len(s))


def grid_sums(s: np.ndarray, w: np.ndarray, grids: tuple[np.ndarray, ...]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accepted, summed ``w`` (errors or expected errors) and reach per vector, as floats.

    Stage k accepts at grid index j iff its score's rank r (thresholds ≤ score) exceeds j, so
    each count is a histogram of the ranks of stages ≤ k, cumulated along the deferring stages'
    axes and suffix-summed along stage k's: O(n + Gᴷ), no n × Gᴷ product.
    """
    n, k_stages = s.shape
    ranks = [np.searchsorted(g, s[:, k], side="right") for k, g in enumerate(grids)]
    shape = tuple(len(g) for g in grids)
    accepted = np.zeros((*shape, k_stages))
    sums = np.zeros((*shape, k_stages))
    reach = np.zeros((*shape, k_stages))
    reach[..., 0] = n
    for k in range(k_stages):
        dims = tuple(len(grids[m]) + 1 for m in range(k + 1))
        flat = np.ravel_multi_index(ranks[:k + 1], dims)
        cut = tuple(slice(0, len(grids[m])) for m in range(k + 1))
        spread = (...,) + (None,) * (k_stages - k - 1)
        for out, weights in ((accepted, None), (sums, w[:, k])):
            h = np.bincount(flat, weights=weights, minlength=math.prod(dims)).reshape(dims)
            for m in range(k):
                h = np.cumsum(h, axis=m)                       # stage m deferred: r_m ≤ j_m
            h = h.sum(axis=k, keepdims=True) - np.cumsum(h, axis=k)   # stage k accepts: r_k > j_k
            out[..., k] = h[cut][spread]
        if k:
            h = np.bincount(np.ravel_multi_index(ranks[:k], dims[:k]),
                            minlength=math.prod(dims[:k])).reshape(dims[:k]).astype(np.float64)
            for m in range(k):
                h = np.cumsum(h, axis=m)
            reach[..., k] = h[cut[:k]][(...,) + (None,) * (k_stages - k)]
    return accepted, sums, reach
