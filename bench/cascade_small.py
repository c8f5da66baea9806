"""A cascade on a small calibration set against each of its stages alone (docs/cascade.md).

The digits case of docs/cascade.md in synthetic form: 270 calibration samples (81 tuning, 189
certification), r* = 0.05, δ = 0.1, two good stages (≈ 1 % errors), stage 2 marginally better
and far more confident (its expected errors, the path's order, a fifth of stage 1's). Each draw
certifies the cascade (serve.calibration.cascade) and each stage alone with the planned LTT of
serve.calibration.plan on the same split, and compares the certified human shares and the
cascade's stage-2 calls. Usage: ``python -m bench.cascade_small --reps 200``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from serve.calibration.cascade import certify_cascade
from serve.calibration.cascade_plan import plan_cascade
from serve.calibration.plan import plan_ltt, run_plan


def digits_like(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scores (n, 2), errors (n, 2) bool, expected errors (n, 2) ordering the cascade path."""
    u = rng.standard_normal(n)
    s = np.stack([u + 0.3 * rng.standard_normal(n), u + 0.3 * rng.standard_normal(n)], axis=1)
    p = np.stack([1 / (1 + np.exp(2.5 * s[:, 0] + 7.5)), 1 / (1 + np.exp(2.5 * s[:, 1] + 8.0))],
                 axis=1)
    return s, rng.random((n, 2)) < p, p * [1.0, 0.2]


@dataclass
class Small:
    human: np.ndarray       # (reps,) the cascade's certified human share (1 where none)
    calls: np.ndarray       # (reps,) its stage-2 calls per certification sample
    alone: np.ndarray       # (reps, 2) each stage alone, planned LTT on the same split

    def line(self) -> str:
        def ci(x: np.ndarray) -> str:
            h = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
            return f"{x.mean():.4f} (95% CI {x.mean() - h:.4f}–{x.mean() + h:.4f})"

        return (f"{len(self.human)} draws: human share cascade {ci(self.human)}, stage 1 alone "
                f"{ci(self.alone[:, 0])}, stage 2 alone {ci(self.alone[:, 1])}; cascade − better "
                f"stage alone (by mean) {ci(self.human - self.alone[:, self.alone.mean(0).argmin()])}"
                f"; stage-2 calls per sample {ci(self.calls)}")


def run(reps: int = 200, n: int = 270, n_tune: int = 81, target_risk: float = 0.05,
        delta: float = 0.1, seed: int = 0) -> Small:
    rng = np.random.default_rng(seed)
    n_cert = n - n_tune
    human, calls, alone = [], [], []
    for _ in range(reps):
        s, e, proxy = digits_like(rng, n)
        plan = plan_cascade(s[:n_tune], e[:n_tune], n_cert, target_risk, delta,
                            tune_proxy=proxy[:n_tune])
        cert = certify_cascade(s[n_tune:], e[n_tune:], plan, target_risk, delta)
        human.append(cert.human_share)
        calls.append(cert.reach[1] / cert.n if cert.certified else 1.0)
        row = []
        for k in range(2):
            lp = plan_ltt(s[:n_tune, k], e[:n_tune, k], n_cert, target_risk, delta)
            g, n_acc, _, _ = run_plan(lp, s[n_tune:, k], e[n_tune:, k], target_risk)
            row.append(1.0 - n_acc[g] / n_cert if g >= 0 else 1.0)
        alone.append(row)
    return Small(np.array(human), np.array(calls), np.array(alone))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args(argv)
    print(run(args.reps).line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
