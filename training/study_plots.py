"""The study's figures (matplotlib Agg), drawn from the saved per-run logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from serve import selective_metrics as metrics  # noqa: E402
from serve.files import atomic_path  # noqa: E402
from serve.scores import create_score  # noqa: E402
from training.study_analysis import P_GRID  # noqa: E402

CURVE_SCORES = ("msp", "maxlogit", "pnorm:2", "auto")
COLORS = {"msp": "tab:blue", "maxlogit": "tab:orange", "pnorm:2": "tab:green", "auto": "tab:red"}


def _save(fig: Any, out: Path, title: str = "") -> None:
    """Lay out, write atomically (a reader never sees half a PNG), and free the figure."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _load(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(run_dir / "logits.npz") as f:
        return f["logits_test"].astype(np.float64), f["labels_test"]


def _curve(z: np.ndarray, y: np.ndarray, spec: str,
           temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    c = metrics.risk_coverage_curve(create_score(spec, temperature)(z), z.argmax(axis=1) != y)
    return np.concatenate([[0.0], c.coverage]), np.concatenate([[c.risk[0]], c.risk])


def _grid(n: int) -> tuple[Any, np.ndarray]:
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def risk_coverage(runs: dict[str, list[tuple[int, Path, tuple[str, float]]]], out: Path) -> None:
    """One panel per loss: risk–coverage of each score (every seed, thin lines)."""
    fig, axes = _grid(len(runs))
    for ax, (loss, items) in zip(axes, runs.items(), strict=False):
        for seed, run_dir, (auto, temp) in items:
            z, y = _load(run_dir)
            for spec in CURVE_SCORES:
                cov, risk = (_curve(z, y, auto, temp) if spec == "auto" else _curve(z, y, spec))
                label = (f"auto ({auto})" if spec == "auto" else spec) if seed == items[0][0] else None
                ax.plot(cov, risk, color=COLORS[spec], lw=1.0, alpha=0.8,
                        ls="--" if spec == "auto" else "-", label=label)
        ax.set(title=f"{loss}", xlabel="coverage", ylabel="selective risk", xlim=(0, 1))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    _save(fig, out, "Risk–coverage on the test split (one line per seed)")


def msp_by_loss(runs: dict[str, list[tuple[int, Path, tuple[str, float]]]], out: Path) -> None:
    """MSP risk–coverage of every loss on one axis (claim 1), first seed."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for loss, items in runs.items():
        z, y = _load(items[0][1])
        cov, risk = _curve(z, y, "msp")
        ax.plot(cov, risk, lw=1.4, label=f"{loss} (acc {(z.argmax(1) == y).mean():.3f})")
    ax.set(xlabel="coverage", ylabel="selective risk", title="MSP risk–coverage per loss "
           f"(seed {next(iter(runs.values()))[0][0]})", xlim=(0, 1))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out)


def xia_scatter(runs: dict[str, list[tuple[int, Path, tuple[str, float]]]], out: Path, max_points: int = 3000) -> None:
    """Xia et al. Fig. 5 style: max logit against MSP, correct vs incorrect, one panel per loss."""
    fig, axes = _grid(len(runs))
    rng = np.random.default_rng(0)
    for ax, (loss, items) in zip(axes, runs.items(), strict=False):
        z, y = _load(items[0][1])
        correct = z.argmax(axis=1) == y
        idx = rng.permutation(len(y))[:max_points]
        msp, ml = create_score("msp")(z)[idx], create_score("maxlogit")(z)[idx]
        ok = correct[idx]
        ax.scatter(msp[ok], ml[ok], s=4, alpha=0.35, color="tab:blue", label="correct")
        ax.scatter(msp[~ok], ml[~ok], s=6, alpha=0.7, color="tab:red", label="incorrect")
        ax.set(title=loss, xlabel="MSP", ylabel="max logit")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    _save(fig, out, "Max logit vs MSP on the test split (first seed)")


def pnorm_grid(agg: dict[str, dict[str, Any]], out: Path) -> None:
    """Test AURC of pnorm:p over p (mean ± std over seeds), relative to MSP, per loss (claim 2)."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ps = np.array(P_GRID)
    for loss, entry in agg.items():
        msp = entry["scores"]["msp"]["aurc"]["mean"]
        mean = np.array([entry["scores"][f"pnorm:{p}"]["aurc"]["mean"] for p in ps]) / msp
        std = np.nan_to_num(np.array([entry["scores"][f"pnorm:{p}"]["aurc"]["std"] for p in ps]) / msp)
        line, = ax.plot(ps, mean, marker="o", ms=3, label=loss)
        ax.fill_between(ps, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.axhline(1.0, color="k", lw=0.8, ls=":", label="MSP")
    ax.set(xlabel="p (0 = centred max logit)", ylabel="AURC / AURC(MSP)",
           title="MaxLogit-pNorm AURC relative to MSP (test split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out)
