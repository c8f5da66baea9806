"""Neural-collapse diagnostics NC1, NC2, NC3 (METHODS.md §5; Papyan et al. 2020, Zhu et al. 2021).

Inputs are plain arrays (penultimate features, labels, classifier weights), so this module needs
neither torch nor a model: everything is float64 numpy.

Conventions:

* ``μ_G`` is the mean of all features; ``μ_k`` the mean of class k's features; ``M`` the
  ``(d, K)`` matrix of centred class means ``μ_k − μ_G``.
* ``Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ``; ``Σ_B = (1/K) Σ_k (μ_k − μ_G)(μ_k − μ_G)ᵀ``.
* NC1 = ``(1/K)·tr(Σ_W Σ_B⁺)`` (pseudo-inverse): 0 when every sample sits on its class mean.
* NC2 = ``‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F`` with ``G = MᵀM`` (class means) or ``G = WWᵀ``
  (classifier, not centred, as in Zhu et al.): 0 for a simplex equiangular tight frame
  (the target matrix has unit Frobenius norm, so both sides are scale-free).
* NC3 = ``‖Wᵀ/‖W‖_F − M/‖M‖_F‖_F``: 0 when the classifier is the class-mean frame (self-duality).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from serve.errors import AbstainError

Array = np.ndarray


class CollapseError(AbstainError, ValueError):
    """Features, labels or weights that the diagnostics cannot be computed on."""


@dataclass(frozen=True)
class Collapse:
    """The three diagnostics; lower = more collapsed.

    Attributes:
        nc1: within-class over between-class variability, ``(1/K) tr(Σ_W Σ_B⁺)``.
        nc2_means: distance of the centred class means' Gram matrix from the simplex ETF.
        nc2_weights: the same for the classifier rows (NaN when no classifier is given).
        nc3: distance between normalised ``Wᵀ`` and normalised centred means (NaN without W).
        within_class_var: ``tr(Σ_W)``, the absolute intra-class spread (scale-dependent).
    """

    nc1: float
    nc2_means: float
    nc2_weights: float
    nc3: float
    within_class_var: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _validate(features: Array, labels: Array) -> tuple[Array, Array, int]:
    h = np.asarray(features)
    y = np.asarray(labels)
    if h.ndim != 2:
        raise CollapseError(f"features must be a 2-D array (n, d); got shape {h.shape}")
    if y.ndim != 1 or y.shape[0] != h.shape[0]:
        raise CollapseError(f"labels must be 1-D with one label per feature row; got {y.shape} "
                            f"for {h.shape[0]} rows")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise CollapseError("labels must be non-negative integers (class indices)")
    h = h.astype(np.float64, copy=False)
    if not np.isfinite(h).all():
        raise CollapseError("features contain NaN or inf")
    present = np.unique(y)
    if present.size < 2:
        raise CollapseError(f"neural-collapse diagnostics need at least 2 classes; got {present.size}")
    return h, y.astype(np.int64, copy=False), int(present.size)


def class_means(features: Array, labels: Array) -> tuple[Array, Array, Array]:
    """Per-class means of the classes present, the global mean, and the classes.

    Returns:
        means ``(K, d)``, global mean ``(d,)``, class indices ``(K,)`` (sorted).
    """
    h, y, _ = _validate(features, labels)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    sums = np.zeros((classes.size, h.shape[1]), np.float64)    # (K, d)
    np.add.at(sums, inverse, h)
    return sums / counts[:, None], h.mean(axis=0), classes


def _etf_distance(gram: Array) -> float:
    k = gram.shape[0]
    norm = np.linalg.norm(gram)
    if norm == 0:
        return float("nan")
    etf = (np.eye(k) - np.ones((k, k)) / k) / np.sqrt(k - 1)   # (K, K), unit Frobenius norm
    return float(np.linalg.norm(gram / norm - etf))


def nc1(features: Array, labels: Array) -> float:
    """``(1/K)·tr(Σ_W Σ_B⁺)``; ``features (n, d)``, ``labels (n,)``."""
    h, y, _ = _validate(features, labels)
    means, mu_g, classes = class_means(h, y)
    k = classes.size
    within = h - means[np.searchsorted(classes, y)]             # (n, d)
    sigma_w = within.T @ within / h.shape[0]                    # (d, d)
    m = means - mu_g                                             # (K, d)
    sigma_b = m.T @ m / k                                        # (d, d)
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, hermitian=True)) / k)


def nc2_means(features: Array, labels: Array) -> float:
    """ETF distance of the Gram matrix of centred class means."""
    means, mu_g, _ = class_means(features, labels)
    m = means - mu_g                                             # (K, d)
    return _etf_distance(m @ m.T)


def nc2_weights(weights: Array) -> float:
    """ETF distance of the classifier's Gram matrix ``W Wᵀ``; ``weights (K, d)``."""
    w = _weights(weights)
    return _etf_distance(w @ w.T)


def nc3(features: Array, labels: Array, weights: Array) -> float:
    """``‖W/‖W‖_F − Mᵀ/‖M‖_F‖_F`` (self-duality of classifier and centred class means)."""
    means, mu_g, classes = class_means(features, labels)
    w = _weights(weights)
    if classes.max() >= w.shape[0]:
        raise CollapseError(f"label {int(classes.max())} has no classifier row (W has "
                            f"{w.shape[0]} rows)")
    w = w[classes]                                               # (K, d) rows of present classes
    m = means - mu_g                                             # (K, d)
    if w.shape[1] != m.shape[1]:
        raise CollapseError(f"classifier has {w.shape[1]} inputs but features have {m.shape[1]} "
                            "dimensions; pass the penultimate features the last layer consumes")
    wn, mn = np.linalg.norm(w), np.linalg.norm(m)
    if wn == 0 or mn == 0:
        return float("nan")
    return float(np.linalg.norm(w / wn - m / mn))


def _weights(weights: Array) -> Array:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] < 2:
        raise CollapseError(f"classifier weights must be (K, d) with K ≥ 2; got shape {w.shape}")
    if not np.isfinite(w).all():
        raise CollapseError("classifier weights contain NaN or inf")
    return w


def collapse(features: Array, labels: Array, weights: Array | None = None) -> Collapse:
    """All diagnostics at once; ``weights`` is the last linear layer's ``(K, d)`` matrix."""
    h, y, _ = _validate(features, labels)
    means, _, classes = class_means(h, y)
    within = h - means[np.searchsorted(classes, y)]
    return Collapse(
        nc1=nc1(h, y),
        nc2_means=nc2_means(h, y),
        nc2_weights=nc2_weights(weights) if weights is not None else float("nan"),
        nc3=nc3(h, y, weights) if weights is not None else float("nan"),
        within_class_var=float(np.sum(within * within) / h.shape[0]),
    )
