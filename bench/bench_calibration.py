"""Benchmark: the full calibration pipeline on 1,000,000 × 100 precomputed logits.

Runs what `abstain calibrate --logits FILE.npz` runs after loading: stratified split, temperature
fit, auto score over MSP + pnorm:0..10 (AURC on the tuning part), certification (LTT by default)
and the quantiles — on float32 logits as a user's .npz would hold them. Reports wall time of the
pipeline and the process's peak RSS (resource.getrusage, includes the logits themselves).

    .venv/bin/python bench/bench_calibration.py [--n 1000000] [--k 100] [--method ltt]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np


def synthetic_logits(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 logits (n, k) of a ~80%-accurate classifier with per-sample logit scale."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = np.empty((n, k), np.float32)
    step = 100_000
    for a in range(0, n, step):
        b = min(n, a + step)
        block = rng.standard_normal((b - a, k), dtype=np.float32)
        block[np.arange(b - a), y[a:b]] += rng.uniform(0.0, 6.0, b - a).astype(np.float32)
        block *= rng.lognormal(0.0, 0.3, b - a).astype(np.float32)[:, None]
        z[a:b] = block
    return z, y


def peak_rss_gib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss     # KiB on Linux
    return kib / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--method", choices=("ltt", "sgr"), default="ltt")
    ap.add_argument("--target-risk", type=float, default=0.05)
    ap.add_argument("--delta", type=float, default=0.05)
    args = ap.parse_args(argv)

    from serve.calibration.pipeline import CalibrationSettings, calibrate_arrays, to_calibration

    t0 = time.perf_counter()
    z, y = synthetic_logits(args.n, args.k)
    t_gen = time.perf_counter() - t0
    rss_data = peak_rss_gib()
    settings = CalibrationSettings(target_risk=args.target_risk, delta=args.delta,
                                   method=args.method)
    t0 = time.perf_counter()
    run = calibrate_arrays(z, y, settings)
    cal = to_calibration(run, "0" * 64, {"spec": "bench", "split": "given", "fingerprint": "bench"},
                         allow_defer_all=True)
    t_cal = time.perf_counter() - t0
    rss = peak_rss_gib()
    print(f"logits: {args.n} x {args.k} float32 ({z.nbytes / 2**30:.2f} GiB), generated in {t_gen:.1f} s")
    print(f"chosen score: {cal.score}  ({run.choice.reason}); temperature {cal.temperature:.4f}")
    print("tuning AURC: " + ", ".join(f"{k}={v:.4f}" for k, v in cal.candidates.items()))
    print(f"{cal.method}: threshold {cal.threshold}, coverage {cal.coverage:.4f}, risk {cal.risk:.4f}, "
          f"bound {cal.risk_upper_bound:.4f} (n_tune {cal.n_tune}, n_cert {cal.n_cert})")
    print(f"calibration pipeline: {t_cal:.2f} s wall")
    print(f"peak RSS: {rss:.2f} GiB (after generating the logits: {rss_data:.2f} GiB)")
    ok = t_cal < 30.0 and rss < 4.0
    print("PASS (< 30 s, < 4 GiB)" if ok else "FAIL (limits: 30 s, 4 GiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
