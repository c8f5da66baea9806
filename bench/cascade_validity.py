"""Validity of the cascade certificate by simulation: P(system risk > r*) ≤ δ over fresh splits.

Two synthetic data models of a two-stage cascade, each giving per-sample scores, error draws and
the true error probabilities (so the true risk of a deployed threshold vector is computed on a
large reference sample as the mean error *probability* of what it accepts, not a noisy count):

* ``logistic``: a latent difficulty u ~ N(0, 1); stage k's score is u plus its own noise, its
  error probability a falling logistic of that score; the stages' errors are independent given u.
* ``ties``: scores rounded to 12 levels (heavy ties), one shared uniform for both stages' error
  draws (stage 2 errs mostly where stage 1 does).

Each repetition draws a calibration set, splits it into tuning and certification parts, plans on
the first, certifies on the second (serve.calibration.cascade) and checks the deployed vector's
true risk. Usage: ``python -m bench.cascade_validity --reps 200``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from serve.calibration.cascade import certify_cascade
from serve.calibration.cascade_plan import Budgets, plan_cascade

Draw = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def logistic(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scores (n, 2), errors (n, 2) bool, error probabilities (n, 2)."""
    u = rng.standard_normal(n)
    s = np.stack([u + 0.8 * rng.standard_normal(n), u + 0.4 * rng.standard_normal(n)], axis=1)
    p = np.stack([_sigmoid(-(1.6 * s[:, 0] + 1.2)), _sigmoid(-(2.4 * s[:, 1] + 3.0))], axis=1)
    return s, rng.random((n, 2)) < p, p


def ties(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u = rng.standard_normal(n)
    raw = np.stack([u + 0.7 * rng.standard_normal(n), u + 0.3 * rng.standard_normal(n)], axis=1)
    s = np.clip(np.round(raw * 2.0) / 2.0, -3.0, 2.5)              # 12 levels
    p = np.stack([_sigmoid(-(1.4 * s[:, 0] + 1.0)), _sigmoid(-(2.0 * s[:, 1] + 2.6))], axis=1)
    shared = rng.random(n)[:, None]
    return s, shared < p, p


MODELS: dict[str, Draw] = {"logistic": logistic, "ties": ties}


@dataclass
class Validity:
    model: str
    reps: int
    certified: int
    violations: int
    mean_human: float
    mean_stage2: float
    mean_true_risk: float
    delta: float
    target_risk: float

    @property
    def rate(self) -> float:
        return self.violations / self.reps

    @property
    def slack_limit(self) -> int:
        """Violations above this happen with probability < 0.001 when the true rate is δ."""
        return int(stats.binom.ppf(0.999, self.reps, self.delta))

    def line(self) -> str:
        lo, hi = (stats.beta.ppf(0.025, self.violations, self.reps - self.violations + 1)
                  if self.violations else 0.0,
                  stats.beta.ppf(0.975, self.violations + 1, self.reps - self.violations))
        return (f"{self.model:9s} r*={self.target_risk:g} δ={self.delta:g}: violations "
                f"{self.violations}/{self.reps} = {self.rate:.3f} (95% CI {lo:.3f}–{hi:.3f}; "
                f"limit {self.slack_limit}), certified {self.certified}/{self.reps}, mean human "
                f"share {self.mean_human:.3f}, mean stage-2 share {self.mean_stage2:.3f}, mean "
                f"true risk {self.mean_true_risk:.4f}")


def true_outcome(thresholds: list[float], s: np.ndarray, p: np.ndarray
                 ) -> tuple[float, float, float]:
    """(true risk, human share, stage-2 share) of a threshold vector on a reference sample."""
    a1 = s[:, 0] >= thresholds[0]
    a2 = ~a1 & (s[:, 1] >= thresholds[1])
    accepted = a1.sum() + a2.sum()
    risk = (p[a1, 0].sum() + p[a2, 1].sum()) / accepted if accepted else 0.0
    return float(risk), 1.0 - accepted / len(s), float((~a1).mean())


def run(model: str, reps: int = 200, n: int = 3000, tune_fraction: float = 0.3,
        target_risk: float = 0.05, delta: float = 0.1, seed: int = 0,
        budgets: Budgets | None = None, reference: int = 400_000,
        points: int | None = None) -> Validity:
    draw = MODELS[model]
    ref_s, _, ref_p = draw(np.random.default_rng(10_000 + seed), reference)
    rng = np.random.default_rng(seed)
    n_tune = int(round(tune_fraction * n))
    certified = violations = 0
    humans, stage2, risks = [], [], []
    for _ in range(reps):
        s, e, _ = draw(rng, n)
        b = budgets or Budgets()
        plan = plan_cascade(s[:n_tune], e[:n_tune], n - n_tune, target_risk, delta, b, points)
        cert = certify_cascade(s[n_tune:], e[n_tune:], plan, target_risk, delta, b)
        if not cert.certified:
            continue
        certified += 1
        risk, human, share2 = true_outcome(cert.thresholds, ref_s, ref_p)
        violations += risk > target_risk
        humans.append(human)
        stage2.append(share2)
        risks.append(risk)
    return Validity(model, reps, certified, violations, float(np.mean(humans or [1.0])),
                    float(np.mean(stage2 or [1.0])), float(np.mean(risks or [0.0])), delta,
                    target_risk)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--target-risk", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--points", type=int, default=None, help="grid points per stage "
                    "(default: serve.calibration.cascade_plan.GRID_POINTS)")
    args = ap.parse_args(argv)
    for model in MODELS:
        t0 = time.perf_counter()
        v = run(model, args.reps, args.n, target_risk=args.target_risk, delta=args.delta,
                points=args.points)
        print(f"{v.line()} ({time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
