"""Reproducible, stratified split of the calibration data into a tuning and a certification part.

The tuning part picks the score and the temperature; the certification part certifies the
threshold. They must be disjoint, or the guarantee is void (METHODS.md §4, data roles).
"""

from __future__ import annotations

import numpy as np

from serve.errors import AbstainError


class SplitError(AbstainError, ValueError):
    """A tuning fraction or label array that cannot be split."""


def stratified_split(labels: np.ndarray, tune_fraction: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..n-1`` into disjoint (tune, cert) parts, stratified by ``labels``.

    Each class contributes ``round(tune_fraction · n_class)`` samples to the tuning part (at least
    one to each side when the class has ≥ 2 samples), so both parts keep the class mix. The
    result depends only on ``labels``, ``tune_fraction`` and ``seed``.

    Args:
        labels: (n,) integer class labels (true labels, so the strata do not depend on the model).
        tune_fraction: share of each class that goes to the tuning part, in (0, 1).
        seed: seed of the permutation.

    Returns:
        (tune_idx, cert_idx): sorted int64 index arrays, disjoint, together covering 0..n-1.
    """
    if not (isinstance(tune_fraction, (int, float)) and 0.0 < tune_fraction < 1.0):
        raise SplitError(f"--tune-fraction must be strictly between 0 and 1; got {tune_fraction!r}")
    y = np.asarray(labels)
    if y.ndim != 1 or y.size < 2:
        raise SplitError(f"need a 1-D label array with at least 2 samples; got shape {y.shape}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(y.size)                 # (n,) random order, then grouped by class
    grouped = order[np.argsort(y[order], kind="stable")]
    classes, counts = np.unique(y, return_counts=True)
    take = np.rint(counts * tune_fraction).astype(np.int64)
    two = counts >= 2
    take[two] = np.clip(take[two], 1, counts[two] - 1)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    # Position of each grouped sample within its class; the first `take` of each class are tuning.
    rank = np.arange(y.size) - np.repeat(starts, counts)
    is_tune = rank < np.repeat(take, counts)
    tune_idx = np.sort(grouped[is_tune])
    cert_idx = np.sort(grouped[~is_tune])
    if tune_idx.size == 0 or cert_idx.size == 0:
        raise SplitError(f"tune fraction {tune_fraction} of {y.size} samples leaves one part empty; "
                         "use more calibration data or a fraction nearer 0.5")
    return tune_idx.astype(np.int64), cert_idx.astype(np.int64)
