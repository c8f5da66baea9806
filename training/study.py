"""`abstain study`: train CE / LS / MaxSup over seeds, evaluate through ONNX, write the report.

Each (loss, seed) run is trained with training.trainer, exported with training.export (parity
checked), and evaluated through serve.server.runtime.OnnxModel — the deployed code path. The run
directory keeps what the report is computed from::

    OUT/runs/<loss>-s<seed>/
        train/            checkpoint.pt, config.json, metrics.json   (not committed)
        model/model.onnx                                              (not committed)
        logits.npz        ONNX logits + labels of the tune and test splits
        features.npz      penultimate features (train subsample, test) + classifier W (not committed)
        run.json          loss, seed, timings, parity, final training error

then training.study_report turns the run directories into README.md, results.json and figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from serve.data import Dataset, load_dataset
from serve.files import atomic_write_text
from serve.server.runtime import OnnxModel
from training import study_report
from training.export import export_run, load_run
from training.study_analysis import StudyError
from training.trainer import TrainConfig, train

DEFAULT_LOSSES = "ce,ls:0.1,ls:0.2,ls:0.3,maxsup:0.1:0.2"
Device = Literal["auto", "cpu", "cuda"]


@dataclass
class StudyConfig:
    """One regime: a dataset, a model, a training budget, the losses and the seeds."""

    data: str = "mnist1d"
    model: str = "cnn1d"
    losses: list[str] = field(default_factory=lambda: DEFAULT_LOSSES.split(","))
    seeds: int = 3
    out: str = "docs/study/mnist1d"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    device: Device = "auto"
    nc_samples: int = 5000          # train-split features kept for NC1–NC3 (stratified subsample)
    reuse: bool = False             # keep finished runs found in OUT/runs
    note: str = ""                  # what this regime is for (printed in the report)
    quick: bool = False
    threads: int = 0                # torch + onnxruntime intra-op threads (0 = library default)


def parse_loss(spec: str) -> tuple[str, str]:
    """``ce`` → ("ce", "0"); ``ls:0.1`` → ("ls", "0.1"); ``maxsup:0.1:0.2`` → ("maxsup", "0.1:0.2")."""
    name, _, alpha = spec.strip().partition(":")
    if name == "ce" and not alpha:
        return "ce", "0"
    if name in ("ls", "maxsup") and alpha:
        return name, alpha
    raise StudyError(f"bad loss spec {spec!r}: use ce, ls:ALPHA or maxsup:ALPHA[:ALPHA_END] "
                     f"(e.g. {DEFAULT_LOSSES})")


def _tag(loss: str, seed: int) -> str:
    return f"{loss.replace(':', '_')}-s{seed}"


def _subsample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A stratified subsample of at most ``n`` indices, sorted."""
    if len(y) <= n:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(y == c))[: max(1, round(n * np.mean(y == c)))]
            for c in np.unique(y)]
    return np.sort(np.concatenate(keep))


@torch.no_grad()
def _features(model: torch.nn.Module, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    model.eval()
    out = [model.features(torch.as_tensor(x[i:i + batch])).reshape(min(batch, len(x) - i), -1)
           for i in range(0, len(x), batch)]
    return torch.cat(out).numpy().astype(np.float32)                 # (n, d)


@torch.no_grad()
def _train_errors(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1024) -> int:
    """Misclassified training samples of the final model (eval mode, the whole train split).

    This is the convergence check: the trainer's per-epoch ``train_acc`` is a running figure
    taken while the weights still move.
    """
    model.eval()
    return sum(int((model(torch.as_tensor(x[i:i + batch])).argmax(1).numpy() != y[i:i + batch]).sum())
               for i in range(0, len(x), batch))


def run_one(cfg: StudyConfig, ds: Dataset, loss: str, seed: int) -> Path:
    """Train, export, and evaluate one (loss, seed); returns its run directory."""
    run_dir = Path(cfg.out) / "runs" / _tag(loss, seed)
    if cfg.reuse and (run_dir / "run.json").is_file() and (run_dir / "logits.npz").is_file():
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    name, alpha = parse_loss(loss)
    t0 = time.perf_counter()
    train(TrainConfig(data=cfg.data, model=cfg.model, loss=name, alpha=alpha, epochs=cfg.epochs,
                      batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, device=cfg.device,
                      out=str(run_dir / "train")))
    t_train = time.perf_counter() - t0
    path, parity, _ = export_run(run_dir / "train", run_dir / "model")
    # "auto": CUDA when this onnxruntime has it, else CPU (a torch-CUDA box may lack onnxruntime-gpu).
    onnx = OnnxModel(path, device="auto", intra_op_threads=cfg.threads)
    x_tu, y_tu = ds.split("tune")
    x_te, y_te = ds.split("test")
    # ONNX outputs float32; storing float32 keeps them exact (the analysis casts to float64).
    np.savez_compressed(run_dir / "logits.npz",
                        logits_tune=onnx.logits(x_tu).astype(np.float32), labels_tune=y_tu,
                        logits_test=onnx.logits(x_te).astype(np.float32), labels_test=y_te)
    model, _ = load_run(run_dir / "train")
    x_tr, y_tr = ds.split("train")
    n_wrong = _train_errors(model, x_tr, y_tr)
    final = json.loads((run_dir / "train" / "metrics.json").read_text())["final"]
    idx = _subsample(y_tr, cfg.nc_samples, seed)
    np.savez_compressed(run_dir / "features.npz",
                        features_train=_features(model, x_tr[idx]), labels_train=y_tr[idx],
                        features_test=_features(model, x_te), labels_test=y_te,
                        weights=model.classifier.weight.detach().numpy().astype(np.float64))
    meta = {"tag": run_dir.name, "loss": loss, "seed": seed, "train_seconds": t_train,
            "total_seconds": time.perf_counter() - t0, "onnx_sha256": onnx.sha256,
            "parity_max_abs_diff": parity.max_abs_diff, "providers": onnx.providers,
            "train_errors": n_wrong, "n_train": int(len(y_tr)),
            "train_error": n_wrong / max(len(y_tr), 1), "final_train_loss": final["train_loss"]}
    atomic_write_text(run_dir / "run.json", json.dumps(meta, indent=1) + "\n")
    return run_dir


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {cpu}, {os.cpu_count()} CPU cores, torch "
            f"{torch.__version__} with {torch.get_num_threads()} threads, {gpu}")


def run_study(cfg: StudyConfig, command: str) -> dict[str, Any]:
    """Every (loss, seed) run, then the report; returns the results dict."""
    from rich.progress import Progress

    losses = [loss.strip() for loss in cfg.losses if loss.strip()]
    for loss in losses:
        parse_loss(loss)
    if len(set(losses)) != len(losses):
        raise StudyError(f"--losses lists a loss twice: {','.join(losses)}")
    if cfg.seeds < 1:
        raise StudyError(f"--seeds must be ≥ 1; got {cfg.seeds}")
    if cfg.threads < 0:
        raise StudyError(f"--threads must be ≥ 0 (0 = default); got {cfg.threads}")
    if cfg.threads:
        # One thread per process avoids OpenMP spin-wait thrashing on a shared, loaded machine.
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(cfg.data)
    t0 = time.perf_counter()
    run_dirs: list[Path] = []
    reused = 0
    jobs = [(loss, s) for s in range(cfg.seeds) for loss in losses]
    with Progress(transient=False) as bar:
        task = bar.add_task("study runs", total=len(jobs))
        for loss, seed in jobs:
            bar.update(task, description=f"study: {loss} seed {seed}")
            reused += cfg.reuse and (Path(cfg.out) / "runs" / _tag(loss, seed) / "run.json").is_file()
            run_dirs.append(run_one(cfg, ds, loss, seed))
            bar.advance(task)
    x_tr = ds.split("train")[1]
    regime = {"data": ds.spec, "model": cfg.model, "epochs": cfg.epochs,
              "batch_size": cfg.batch_size, "lr": cfg.lr, "n_train": int(len(x_tr)),
              "n_tune": int(len(ds.split("tune")[1])), "n_test": int(len(ds.split("test")[1])),
              "num_classes": int(ds.num_classes), "note": cfg.note}
    wall = time.perf_counter() - t0
    first = {"command": command, "runtime_seconds": wall, "load_note": ""}
    prev = out / "results.json"
    if reused == len(jobs) and prev.is_file():
        # Keep the timing of the invocation that trained these runs; this one only re-analysed.
        old = json.loads(prev.read_text())["meta"]
        if old.get("losses") == losses and old.get("seeds") == list(range(cfg.seeds)):
            first = old.get("first_invocation", first)
    loaded = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    meta = {
        "name": out.name, "command": command, "runtime_seconds": wall,
        "runs_reused": int(reused),
        "runs_seconds": sum(json.loads((d / "run.json").read_text())["total_seconds"]
                            for d in run_dirs),
        "machine": _machine(), "seeds": list(range(cfg.seeds)), "losses": losses, "regime": regime,
        "quick": cfg.quick, "data_fingerprint": ds.fingerprint,
        # The study's own threads account for up to `threads` of the load average.
        "load_note": (f"1-minute load average at the end: {loaded:.1f} on {os.cpu_count()} cores"
                      + (" — the machine was shared with other jobs, so the runtime is inflated."
                         if loaded > torch.get_num_threads() + 1 else
                         " (no more than the study's own threads).")),
        "gpu_note": ("this run used CUDA." if cfg.device == "cuda" and torch.cuda.is_available() else
                     "none in this session: the CIFAR-100 GPU run (`abstain study --data "
                     "cifar100:PATH --model resnet18 --device cuda ...`) is still to do."),
    }
    if not reused:
        first = {"command": command, "runtime_seconds": wall, "load_note": meta["load_note"]}
    meta["first_invocation"] = first
    return study_report.build(out, meta, run_dirs)


def _summary(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"abstain study → {results['meta']['name']} "
              f"({results['meta']['runtime_seconds']:.0f} s)")
    for col in ("loss", "accuracy", "MSP AURC", "auto AURC", "MSP AUROC", "NC1 (train)"):
        t.add_column(col)
    for loss, e in results["aggregate"].items():
        nc = e["collapse"].get("train", {}).get("nc1", {"mean": float("nan")})
        t.add_row(loss, f"{e['accuracy']['mean']:.4f}", f"{e['scores']['msp']['aurc']['mean']:.4f}",
                  f"{e['scores']['auto']['aurc']['mean']:.4f}",
                  f"{e['scores']['msp']['auroc']['mean']:.4f}", f"{nc['mean']:.3f}")
    c = Console(stderr=True)
    c.print(t)
    for i, claim in enumerate(results["claims"], 1):
        c.print(f"claim {i}: [bold]{claim['verdict']}[/bold] — {claim['claim']}")


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    cfg = StudyConfig(data=args.data, model=args.model, losses=args.losses.split(","),
                      seeds=args.seeds, out=args.out, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, device=args.device,
                      nc_samples=args.nc_samples, reuse=args.reuse, note=args.note, quick=args.quick,
                      threads=args.threads)
    if args.quick:
        # Small data, one seed, a couple of epochs: a CI-sized run of the whole pipeline.
        if cfg.data == "mnist1d":
            cfg.data = "mnist1d?n=2000"
        cfg.seeds = 1
        cfg.epochs = min(cfg.epochs, 2)
        cfg.nc_samples = min(cfg.nc_samples, 1000)
    return cfg


def main(args: argparse.Namespace) -> int:
    if getattr(args, "index", None):
        print(study_report.write_index(Path(args.index)))
        return 0
    if not args.out:
        raise StudyError("--out is required, e.g. --out docs/study/mnist1d (or pass --index DIR)")
    cfg = config_from_args(args)
    if sys.argv[1:2] == ["study"]:
        command = "abstain " + shlex.join(sys.argv[1:])
    else:  # called in-process (tests): rebuild the equivalent command line from the config
        command = (f"abstain study --data {shlex.quote(cfg.data)} --model {cfg.model} --losses "
                   f"{','.join(cfg.losses)} --seeds {cfg.seeds} --epochs {cfg.epochs} "
                   f"--out {shlex.quote(cfg.out)}" + (" --quick" if cfg.quick else ""))
    _summary(run_study(cfg, command))
    return 0
