"""NC1–NC3 on synthetic features whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from training.collapse import CollapseError, collapse, nc1, nc2_means, nc2_weights, nc3


def _etf(k: int, d: int, seed: int = 0) -> np.ndarray:
    """A simplex ETF of K unit vectors in R^d (d ≥ K−1), randomly rotated: (K, d)."""
    rng = np.random.default_rng(seed)
    m = np.sqrt(k / (k - 1)) * (np.eye(k) - np.ones((k, k)) / k)  # (K, K) centred ETF, rows ⊥ 1
    basis = np.linalg.svd(m)[2][: k - 1]                           # (K−1, K) orthonormal span
    coords = m @ basis.T                                           # (K, K−1)
    rot, _ = np.linalg.qr(rng.normal(size=(d, k - 1)))             # (d, K−1) orthonormal columns
    return coords @ rot.T


def _collapsed(k: int = 5, d: int = 12, per_class: int = 30):
    means = 3.0 * _etf(k, d)
    y = np.repeat(np.arange(k), per_class)
    return means[y], y, means


def test_perfect_etf_collapse_is_zero_everywhere() -> None:
    h, y, means = _collapsed()
    c = collapse(h, y, weights=0.7 * means)   # W ∝ class means: self-dual
    assert c.nc1 == pytest.approx(0.0, abs=1e-12)
    assert c.nc2_means == pytest.approx(0.0, abs=1e-10)
    assert c.nc2_weights == pytest.approx(0.0, abs=1e-10)
    assert c.nc3 == pytest.approx(0.0, abs=1e-10)
    assert c.within_class_var == pytest.approx(0.0, abs=1e-12)


def test_shifted_features_still_collapsed() -> None:
    h, y, means = _collapsed()
    shift = np.linspace(-5, 5, h.shape[1])
    assert nc2_means(h + shift, y) == pytest.approx(0.0, abs=1e-10)
    assert nc3(h + shift, y, means) == pytest.approx(0.0, abs=1e-10)


def test_nc1_matches_closed_form_for_isotropic_noise() -> None:
    # Means on an ETF (rank K−1), isotropic noise σ²I confined to the means' span:
    # Σ_B = (|μ|²/(K−1))·P, Σ_W ≈ σ²·P  ⇒  NC1 ≈ σ²(K−1)²/(K·|μ|²).
    k, d, n_per, sigma, radius = 4, 3, 20000, 0.5, 2.0
    rng = np.random.default_rng(1)
    means = radius * _etf(k, d)                                   # spans R^3 exactly (K−1 = d)
    y = np.repeat(np.arange(k), n_per)
    h = means[y] + sigma * rng.normal(size=(y.size, d))
    expected = sigma**2 * (k - 1) ** 2 / (k * radius**2)
    assert nc1(h, y) == pytest.approx(expected, rel=0.03)


def test_more_noise_means_larger_nc1() -> None:
    rng = np.random.default_rng(2)
    h, y, _ = _collapsed(per_class=200)
    values = [nc1(h + s * rng.normal(size=h.shape), y) for s in (0.1, 0.5, 2.0)]
    assert values[0] < values[1] < values[2]


def test_random_features_are_far_from_collapse() -> None:
    rng = np.random.default_rng(3)
    k, d = 10, 32
    y = np.repeat(np.arange(k), 50)
    h = rng.normal(size=(y.size, d))
    w = rng.normal(size=(k, d))
    c = collapse(h, y, w)
    assert c.nc1 > 5.0           # within-class spread dwarfs the (chance) class-mean spread
    assert c.nc2_means > 0.3
    assert c.nc2_weights > 0.3
    assert c.nc3 > 0.8           # independent unit-norm matrices: ≈ √2 apart


def test_non_equiangular_means_give_positive_nc2() -> None:
    # Orthonormal (not ETF) class means in 10-D: Gram after centring is the ETF only up to the
    # centring, so use un-centred weights for the classifier check.
    w = np.eye(4, 10)
    assert nc2_weights(w) == pytest.approx(
        np.linalg.norm(np.eye(4) / 2 - (np.eye(4) - 0.25) / np.sqrt(3)), rel=1e-12)
    assert nc2_weights(w) > 0.1


def test_bad_inputs_are_clear_errors() -> None:
    h, y, means = _collapsed()
    with pytest.raises(CollapseError, match="2-D"):
        nc1(h[:, 0], y)
    with pytest.raises(CollapseError, match="one label per feature row"):
        nc1(h, y[:-1])
    with pytest.raises(CollapseError, match="at least 2 classes"):
        nc1(h, np.zeros_like(y))
    with pytest.raises(CollapseError, match="NaN"):
        nc1(np.full_like(h, np.nan), y)
    with pytest.raises(CollapseError, match="dimensions"):
        nc3(h, y, means[:, :-1])
    with pytest.raises(CollapseError, match="no classifier row"):
        nc3(h, y, means[:3])
