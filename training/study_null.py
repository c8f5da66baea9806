"""Null simulation behind ``MIN_ERRORS``: how often the verdict rule calls pure noise "clear".

Two losses drawn from one distribution (so every difference is noise), three seeds each, one
shared test set; each run's MSP-like score and errors come from a per-sample difficulty shared
by every run (the fixed test set) plus per-run noise. The rule (training.study_evidence.compare
on E-AURC with the study's paired bootstrap) should call a difference clear in ≤ 2·ALPHA of
repetitions (both directions). Run::

    PYTHONPATH=. python -m training.study_null [--reps 300] [--n 1000]

and read off the smallest error count at which the rate stays within 2·ALPHA plus its noise.
"""

from __future__ import annotations

import argparse

import numpy as np

from serve import selective_metrics as metrics
from training.study_analysis import bootstrap_indices
from training.study_evidence import ALPHA, compare


def _run(rng: np.random.Generator, h: np.ndarray, cut: float) -> tuple[np.ndarray, np.ndarray]:
    latent = h + 0.5 * rng.standard_normal(h.size)            # this run's view of difficulty
    errors = latent > cut
    scores = -latent + 0.7 * rng.standard_normal(h.size)      # imperfect ranking of its errors
    return scores, errors


def false_clear_rate(n: int, n_errors: int, reps: int, seed: int = 0, resamples: int = 200,
                     seeds: int = 3) -> float:
    """Fraction of null repetitions whose E-AURC difference is called clear (either sign)."""
    rng = np.random.default_rng(seed)
    idx = bootstrap_indices(n, resamples, seed)
    clear = 0
    for _ in range(reps):
        h = rng.standard_normal(n)
        cut = np.quantile(h + 0.5 * rng.standard_normal(n), 1 - n_errors / n)
        vals, boots = {}, {}
        for loss in ("a", "b"):
            for s in range(seeds):
                sc, e = _run(rng, h, cut)
                vals[loss, s] = metrics.e_aurc(sc, e)
                boots[loss, s] = np.array([metrics.e_aurc(sc[i], e[i]) for i in idx])
        d = np.array([vals["a", s] - vals["b", s] for s in range(seeds)])
        db = np.stack([boots["a", s] - boots["b", s] for s in range(seeds)], axis=1)
        clear += compare(d, db).sign != 0
    return clear / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--errors", default="10,20,30,50")
    args = ap.parse_args()
    se = np.sqrt(2 * ALPHA * (1 - 2 * ALPHA) / args.reps)
    for k in (int(x) for x in args.errors.split(",")):
        rate = false_clear_rate(args.n, k, args.reps)
        print(f"n = {args.n}, ~{k} test errors per run: false 'clear' rate {rate:.3f} "
              f"(nominal ≤ {2 * ALPHA:.2f}, binomial SE {se:.3f})", flush=True)


if __name__ == "__main__":
    main()
