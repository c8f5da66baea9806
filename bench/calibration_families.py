"""A parameterised family of calibration problems with exact truth, for comparing certification.

Each family is a *population* of ``POPULATION`` (score, error) pairs made once from a fixed seed
(softmax logits of a K-class model, or a latent score with an error-probability curve). A
calibration set of n samples is an i.i.d. draw *from that population* (indices with replacement),
so the population is the truth exactly: the true selective risk and coverage of ``score ≥ λ`` are
the population's error rate and share above λ, with no approximation and no integral.

The families span what the issue asks for (docs/calibration.md, "The family grid"):

* overall error from 2 % to 50 %; 2, 10, 12 and 100 classes;
* per-sample logit-scale mixtures (half the samples at scale ~1, half at ~3, lognormal spread);
* a few confidently-wrong samples (0.5 % with a wrong class boosted by 10 logits);
* heavy ties (MSP rounded to 8 levels);
* risk not monotone in the threshold (a band of errors at the very top of the score range);
* a score barely related to the errors (issue 13's "weak" model) and issue 13's informative one.

Scores are MSP at T = 1 (fixed in advance, as the comparator needs) for the logit families.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

POPULATION = 400_000
CHUNK = 50_000


def _msp_and_errors(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MSP at T = 1 and ``argmax ≠ 0`` (every sample's true class is 0) for logits (b, K)."""
    m = z.max(axis=1, keepdims=True)
    p = np.exp(z - m)
    return 1.0 / p.sum(axis=1), z.argmax(axis=1) != 0


def _logits(n: int, k: int, signal: float, rng: np.random.Generator, wrong: float = 0.0
            ) -> tuple[np.ndarray, np.ndarray]:
    """(MSP, error) of n samples: N(0, 1) logits, class 0 lifted by U(0, signal), then scaled by
    a per-sample logit scale from a two-component lognormal mixture; a share ``wrong`` of the
    samples has class 1 lifted by 10 logits after scaling (confidently wrong)."""
    s_out, e_out = np.empty(n), np.empty(n, bool)
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        z = rng.standard_normal((b - a, k))
        z[:, 0] += rng.uniform(0.0, signal, b - a)
        scale = np.where(rng.random(b - a) < 0.5, 1.0, 3.0) * rng.lognormal(0.0, 0.25, b - a)
        z *= scale[:, None]
        if wrong:
            z[rng.random(b - a) < wrong, 1] += 10.0
        s_out[a:b], e_out[a:b] = _msp_and_errors(z)
    return s_out, e_out


def _held_out_logits(n: int, k: int, rng: np.random.Generator, temperature: float = 1.0,
                     noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(MSP at ``temperature``, error): logits N(0, 1) with class 0 lifted by an exponential
    margin (mean 2.5) and a per-sample scale ~ Gamma(2, 1); a share ``noise`` of the true labels
    flipped to a uniformly random class (label noise that no score can rank)."""
    s_out, e_out = np.empty(n), np.empty(n, bool)
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        z = rng.standard_normal((b - a, k))
        z[:, 0] += rng.exponential(2.5, b - a)
        z *= rng.gamma(2.0, 1.0, b - a)[:, None]
        s_out[a:b], wrong = _msp_and_errors(z / temperature)
        y = np.where(rng.random(b - a) < noise, rng.integers(0, k, b - a), 0)
        e_out[a:b] = z.argmax(axis=1) != y if noise else wrong
    return s_out, e_out


def _signal_for(k: int, error: float, wrong: float) -> float:
    """The signal whose logit model has overall error ≈ ``error`` (bisection on 20k samples)."""
    lo, hi = 0.0, 40.0
    for _ in range(22):
        mid = 0.5 * (lo + hi)
        _, e = _logits(20_000, k, mid, np.random.default_rng(12345), wrong)
        lo, hi = (mid, hi) if e.mean() > error else (lo, mid)
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Family:
    """A named population of (score, error) pairs; ``make(rng)`` builds it (POPULATION rows)."""

    name: str
    make: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]
    seed: int = 0

    @cached_property
    def population(self) -> tuple[np.ndarray, np.ndarray]:
        return self.make(np.random.default_rng(self.seed))

    @cached_property
    def _sorted(self) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.population
        order = np.argsort(s, kind="stable")
        return s[order], np.concatenate(([0], np.cumsum(e[order][::-1])))   # errors in the top j

    @property
    def error_rate(self) -> float:
        return float(self.population[1].mean())

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.population
        i = rng.integers(0, len(s), n)
        return s[i], e[i]

    def truth(self, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(true coverage, true selective risk) of ``score ≥ λ`` for each λ (risk 0 when empty)."""
        asc, top_err = self._sorted
        acc = len(asc) - np.searchsorted(asc, np.asarray(thresholds, np.float64), side="left")
        risk = np.divide(top_err[acc], acc, out=np.zeros(acc.shape), where=acc > 0)
        return acc / len(asc), risk

    def oracle(self, target_risk: float) -> float:
        """The largest true coverage of any threshold whose true risk is ≤ r*."""
        asc, top_err = self._sorted
        acc = len(asc) - np.flatnonzero(np.append(True, asc[1:] != asc[:-1]))  # per distinct score
        ok = top_err[acc] <= target_risk * acc
        return float(acc[ok].max() / len(asc)) if ok.any() else 0.0


def _logit_family(name: str, k: int, error: float, wrong: float = 0.0, levels: int = 0,
                  seed: int = 0) -> Family:
    def make(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s, e = _logits(POPULATION, k, _signal_for(k, error, wrong), rng, wrong)
        return (np.floor(s * levels) / levels if levels else s), e
    return Family(name, make, seed)


def _latent_family(name: str, g: Callable[[np.ndarray], np.ndarray], seed: int = 0) -> Family:
    """Score c ~ U(0, 6), error with probability g(c)."""
    def make(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        c = rng.uniform(0.0, 6.0, POPULATION)
        return c, rng.random(POPULATION) < g(c)
    return Family(name, make, seed)


FAMILIES: dict[str, Family] = {f.name: f for f in [
    _logit_family("K=2, err 2%", 2, 0.02, seed=1),
    _logit_family("K=10, err 10%", 10, 0.10, seed=2),
    _logit_family("K=12, err 33%", 12, 0.33, seed=3),
    _logit_family("K=100, err 50%", 100, 0.50, seed=4),
    _logit_family("K=10, err 10%, 0.5% confidently wrong", 10, 0.10, wrong=0.005, seed=5),
    _logit_family("K=10, err 20%, 8 tied levels", 10, 0.20, levels=8, seed=6),
    _latent_family("non-monotone (errors at the top)",
                   lambda c: np.where(c > 5.9, 0.2, 0.4 * np.exp(-c)), seed=7),
    _latent_family("weak (issue 13)", lambda c: 0.16 * np.exp(-0.1 * c), seed=8),
    _latent_family("informative (issue 13)", lambda c: 0.5 * np.exp(-c), seed=9),
]}


def _three_levels(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Score in {0, 2, 4} (c ~ U(0, 6) floored to even numbers), error 0.3·exp(−score)."""
    c = 2.0 * np.floor(rng.uniform(0.0, 6.0, POPULATION) / 2.0)
    return c, rng.random(POPULATION) < 0.3 * np.exp(-c)


def _held_out_family(name: str, k: int, seed: int, **kw) -> Family:
    return Family(name, lambda rng: _held_out_logits(POPULATION, k, rng, **kw), seed)


HELD_OUT: dict[str, Family] = {f.name: f for f in [
    _held_out_family("held-out: K=5, 5% label noise", 5, seed=21, noise=0.05),
    _held_out_family("held-out: K=50, MSP at T = 0.3", 50, seed=22, temperature=0.3),
    _held_out_family("held-out: K=3, MSP at T = 3", 3, seed=23, temperature=3.0),
    _latent_family("held-out: errors in the middle",
                   lambda c: 0.01 + 0.3 * np.exp(-((c - 3.0) ** 2)), seed=24),
    _latent_family("held-out: clean top third, 25% below", lambda c: np.where(c > 4.0, 0.004, 0.25),
                   seed=25),
    _latent_family("held-out: steep logistic", lambda c: 1.0 / (1.0 + np.exp(3.0 * (c - 2.0))),
                   seed=26),
    Family("held-out: 3 tied levels", _three_levels, seed=27),
]}
"""Families built *after* the default's constants were fixed on FAMILIES, never used to choose
them: other generators (exponential margins, Gamma logit scales, label noise, other temperatures,
other error curves), run on other r*, δ and n (bench/calibration_grid.py --held-out)."""
