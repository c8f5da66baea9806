"""What ``--pool-epochs`` risks: violations and refusals when older epochs are pooled.

Same traffic model as tests/unit/test_loop_recertify.py (scores U(0, 1), P(wrong | s) =
c·(1 − s)², true risk at θ = c·(1 − θ)²/3; r* = δ = 0.05): 2,000 audits of an older epoch at
c = 0.6 and n audits of the epoch in force at c_post; the pooled window is tested for
exchangeability (serve.feedback.window.pool_checks) and for a rise within it (change_checks).

    python -m bench.recertify_pooling [--reps 500]
"""

from __future__ import annotations

import argparse

import numpy as np

from serve.feedback.recalibrate import WindowChoice, recertify
from serve.feedback.window import Audits

R_STAR = DELTA = 0.05
IN_FORCE = 0.55


def cell(c_post: float, n_post: int, reps: int, seed: int) -> tuple[float, float, float]:
    """(violation rate, refusal rate, refusals by the pool checks) of pooled recertification."""
    rng = np.random.default_rng(seed)
    viol = refused = by_pool = 0
    for _ in range(reps):
        s = rng.random(2000 + n_post)
        c = np.r_[np.full(2000, 0.6), np.full(n_post, c_post)]
        w = rng.random(len(s)) < c * (1 - s) ** 2
        a = Audits(s, w, np.ones(len(s), bool), np.r_[np.zeros(2000), np.ones(n_post)].astype(np.int64),
                   np.arange(len(s), dtype=np.float64), ("a" * 64, "b" * 64))
        out = recertify(a, "b" * 64, WindowChoice(pool=True), R_STAR, DELTA, in_force=IN_FORCE)
        if out.cert is None:
            refused += 1
            by_pool += any(p.rejected for p in out.pool)
        elif out.cert.certified:
            viol += c_post * (1 - out.cert.threshold) ** 2 / 3 > R_STAR
    return viol / reps, refused / reps, by_pool / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=500)
    args = ap.parse_args()
    print("| risk after / before | audits of the epoch in force | violations | refused | "
          "of which by the pool checks |")
    print("|---|---|---|---|---|")
    for c_post in (0.6, 0.8, 1.2):
        for n_post in (300, 1000, 3000):
            v, r, p = cell(c_post, n_post, args.reps, seed=1000 + n_post)
            print(f"| {c_post / 0.6:.2f}× | {n_post} | {v:.3f} | {r:.3f} | {p:.3f} |")


if __name__ == "__main__":
    main()
