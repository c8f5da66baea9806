"""Adversarial logits for the decision graph: random rows, ties, and rows at the threshold.

A case is a calibration (score, temperature, threshold) and (n, K) float32 logits. The threshold
is the score of an *anchor* row, as `abstain calibrate` takes a certification score. Around it:
exact duplicates and column permutations of the anchor (its score in exact arithmetic), rows whose
max logit is tied, and the anchor with one or two logits moved by a few float32 ulps, many of which
score within 1e-9 of the threshold on either side. Scores are computed by serve.scores at test
time, so any change there changes what the graph is held to.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from serve.calibration.artifact import Calibration
from serve.scores import create_score

K = 10
SPECS = ["msp", "log_msp", "maxlogit", "centred_maxlogit", "pnorm:0", "pnorm:1", "pnorm:2",
         "pnorm:3", "pnorm:0.5", "pnorm:inf", "energy", "margin"]


def random_logits(rng: np.random.Generator, n: int, k: int = K) -> np.ndarray:
    """Rows at scales from 1e-3 to 100, some offset by ±500, 5 % with a tied max, a few constant."""
    scale = rng.choice([1e-3, 0.1, 1.0, 5.0, 30.0, 100.0], size=(n, 1))
    z = rng.normal(size=(n, k)) * scale
    z[rng.random(n) < 0.1] += rng.choice([-500.0, 500.0])
    tied = rng.random(n) < 0.05
    cols = rng.integers(0, k, size=n)
    z[tied, cols[tied]] = z[tied].max(axis=1)
    z[rng.random(n) < 0.005] = rng.normal()
    return z.astype(np.float32)


def _nudge(rng: np.random.Generator, anchor: np.ndarray, n: int, max_ulps: int) -> np.ndarray:
    """``n`` copies of ``anchor`` with one or two logits moved by ±1..max_ulps float32 ulps."""
    rows = np.repeat(anchor[None, :], n, axis=0).view(np.int32)
    top2 = np.argsort(anchor)[-2:]
    for _ in range(2):
        j = rng.integers(0, anchor.size, size=n)
        pick = rng.random(n)
        j[pick < 0.4] = top2[(pick[pick < 0.4] < 0.25).astype(int)]  # the max and runner-up often
        steps = rng.integers(1, max_ulps + 1, size=n) * rng.choice([-1, 1], size=n)
        rows[np.arange(n), j] += steps.astype(np.int32) * (rng.random(n) < 0.7)
    return rows.view(np.float32)


def anchor_rows(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A 'small' anchor (|z| ~ 1e-4, three logits ~ 1e-8: fine-grained) or a 'confident' one."""
    if kind == "small":
        z = rng.normal(size=K) * 1e-4
        z[rng.choice(K, 3, replace=False)] *= 1e-4
        return z.astype(np.float32)
    z = rng.normal(size=K) * 5.0
    z[rng.integers(K)] += 25.0
    return z.astype(np.float32)


def make_case(spec: str, temperature: float, anchor_kind: str, n: int, seed: int,
              base: Calibration, defer_all: bool = False) -> tuple[Calibration, np.ndarray]:
    """``n`` rows: 50 % random, 10 % duplicates/permutations of the anchor, 40 % nudged anchors."""
    rng = np.random.default_rng(seed)
    score = create_score(spec, temperature)
    anchor = anchor_rows(anchor_kind, rng)
    n_perm, n_nudge = n // 10, (4 * n) // 10
    perms = np.repeat(anchor[None, :], n_perm, axis=0)
    perms[n_perm // 4:] = np.take_along_axis(
        perms[n_perm // 4:], rng.permuted(np.tile(np.arange(K), (n_perm - n_perm // 4, 1)), axis=1),
        axis=1)
    thirds = [n_nudge // 3, n_nudge // 3, n_nudge - 2 * (n_nudge // 3)]
    nudged = np.concatenate([_nudge(rng, anchor, m, u) for m, u in zip(thirds, (8, 200, 3000), strict=True)])
    z = np.concatenate([random_logits(rng, n - n_perm - n_nudge), perms, nudged])
    z = z[rng.permutation(len(z))]
    threshold = None if defer_all else float(score(anchor[None, :])[0])
    cal = dataclasses.replace(base, score=score.spec, temperature=temperature, threshold=threshold)
    return cal, np.ascontiguousarray(z)


def cases(base: Calibration, n: int) -> list[tuple[str, Calibration, np.ndarray]]:
    """Two calibrations per score (small anchor at T = 1, confident anchor at T = 1.37), plus
    defer-all for two scores."""
    out = []
    for i, spec in enumerate(SPECS):
        for kind, temp in (("small", 1.0), ("confident", 1.37)):
            cal, z = make_case(spec, temp, kind, n // 2, 1000 + 2 * i + (kind == "small"), base)
            out.append((f"{spec}@T={temp:g},{kind}", cal, z))
    for spec in ("msp", "pnorm:2"):
        cal, z = make_case(spec, 1.0, "small", n // 10, 7, base, defer_all=True)
        out.append((f"{spec},defer-all", cal, z))
    return out
