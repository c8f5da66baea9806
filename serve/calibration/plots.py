"""The two figures written beside a calibration: risk–coverage and reliability (matplotlib Agg)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from serve.calibration.pipeline import CalibrationRun
from serve.files import atomic_path
from serve.selective_metrics import ECE_BINS, ece, risk_coverage_curve


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Render to a temporary file beside ``path`` and rename it into place (atomic)."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")


def risk_coverage_plot(run: CalibrationRun, path: str | os.PathLike[str], title: str = "") -> Path:
    """Every candidate's tuning curve, the target risk, and the certified operating point."""
    plt = _figure()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    chosen = run.choice.spec
    cmap = plt.get_cmap("viridis")
    pnorms = [c for c in run.choice.candidates if c.spec.startswith("pnorm:")]
    for c in run.choice.candidates:
        if c.spec == chosen:
            continue
        if c.spec == "msp":
            ax.plot(c.coverage, c.risk, color="tab:orange", lw=1.4, label=f"msp  AURC {c.aurc:.4f}")
        else:
            i = pnorms.index(c)
            ax.plot(c.coverage, c.risk, color=cmap(i / max(1, len(pnorms) - 1)), lw=0.8, alpha=0.7,
                    label=f"{c.spec}  AURC {c.aurc:.4f}")
    best = next(c for c in run.choice.candidates if c.spec == chosen)
    ax.plot(best.coverage, best.risk, color="black", lw=2.2,
            label=f"{chosen} (chosen)  AURC {best.aurc:.4f}")
    cert_curve = risk_coverage_curve(run.cert_scores, run.cert_errors)
    idx = np.unique(np.linspace(0, len(cert_curve.thresholds) - 1, 800).round().astype(np.int64))
    ax.plot(cert_curve.coverage[idx], cert_curve.risk[idx], color="black", ls=":", lw=1.4,
            label=f"{chosen} on certification")
    s = run.settings
    ax.axhline(s.target_risk, color="tab:red", ls="--", lw=1.2, label=f"target risk {s.target_risk:g}")
    cert = run.certificate
    if cert.certified:
        ax.errorbar([cert.coverage], [cert.risk],
                    yerr=[[0.0], [max(cert.risk_upper_bound - cert.risk, 0.0)]],
                    fmt="o", color="tab:red", ms=8, capsize=4, zorder=5,
                    label=f"operating point ({cert.method}): coverage {cert.coverage:.3f}, "
                          f"risk {cert.risk:.4f}, post-selection bound {cert.risk_upper_bound:.4f}")
    else:
        ax.text(0.5, 0.92, "nothing certified: every prediction is deferred", color="tab:red",
                ha="center", transform=ax.transAxes, fontsize=11, weight="bold")
    ax.set_xlabel("coverage (fraction accepted)")
    ax.set_ylabel("selective risk (error rate among accepted)")
    ax.set_xlim(0, 1)
    top = max(float(np.max(best.risk[len(best.risk) // 20:], initial=0)), 2 * s.target_risk)
    ax.set_ylim(0, min(1.0, 1.15 * top))
    ax.grid(alpha=0.3)
    ax.set_title(title or f"Risk–coverage on the tuning split (n = {run.n_tune}); "
                          f"operating point on certification (n = {cert.n}), δ = {s.delta:g}",
                 fontsize=9)
    # Outside the axes: inside, it hid the target line and the low-coverage corner.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    _save(fig, path)
    plt.close(fig)
    return path


def _reliability(conf: np.ndarray, errors: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    acc = np.bincount(bins, weights=(~errors).astype(np.float64), minlength=n_bins)
    cs = np.bincount(bins, weights=conf, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return count, acc / count, cs / count


def reliability_plot(run: CalibrationRun, path: str | os.PathLike[str]) -> Path:
    """Accuracy vs. confidence of the MSP on the certification split, at T = 1 and at the
    temperature of the reported probabilities."""
    plt = _figure()
    path = Path(path)
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    edges = np.linspace(0, 1, ECE_BINS + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    width = 1.0 / ECE_BINS
    T = run.choice.probability_temperature
    series = [(run.cert_msp_raw, "T = 1", "tab:gray", -0.2), (run.cert_msp, f"T = {T:.3f}", "tab:blue", 0.2)]
    for conf, name, color, shift in series:
        count, acc, _ = _reliability(conf, run.msp_errors, ECE_BINS)
        e = ece(conf, run.msp_errors)
        ok = count > 0
        ax.bar(centers[ok] + shift * width, acc[ok], width=0.4 * width, color=color, alpha=0.8,
               label=f"{name}: ECE {e:.4f}")
        axh.bar(centers[ok] + shift * width, count[ok] / count.sum(), width=0.4 * width,
                color=color, alpha=0.8)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy in bin")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title(f"Reliability of MSP on the certification split (n = {len(run.msp_errors)}, "
                 f"{ECE_BINS} bins)", fontsize=9)
    axh.set_xlabel("confidence (max softmax probability)")
    axh.set_ylabel("share of samples")
    axh.set_xlim(0, 1)
    axh.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return path
