"""`abstain train`: the training loop, checkpoints, resume, AMP on CUDA, DDP under torchrun.

Writes ``OUT/config.json`` (the resolved config, with the data fingerprint), ``OUT/checkpoint.pt``
(state dicts only; loaded with ``weights_only=True``) and ``OUT/metrics.json`` (per epoch).

Batches come from a :class:`~torch.utils.data.DistributedSampler` seeded by ``seed`` and the epoch,
and each of W processes takes ``batch_size / W`` samples of every global batch. The union of the
shards is the single-process batch, and DDP averages equal-sized shard gradients, so a W-process
run computes the same updates as a one-process run (up to float rounding).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from serve import __version__
from serve.data import load_dataset
from serve.errors import AbstainError
from serve.files import atomic_path, atomic_write_text
from training.losses import create_loss
from training.models import Classifier, create_model

Device = Literal["auto", "cpu", "cuda"]
Optimizer = Literal["adamw", "sgd"]


class TrainError(AbstainError):
    """A training configuration or run directory that cannot be used."""


@dataclass
class TrainConfig:
    data: str = "mnist1d"
    model: str = "cnn1d"
    loss: str = "maxsup"
    alpha: str = "0.1:0.2"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: Optimizer = "adamw"
    seed: int = 0
    device: Device = "auto"
    out: str = "runs/default"
    resume: bool = False
    stop_after: int | None = None  # stop after this many epochs in this invocation (resume later)
    # filled in by the trainer
    resolved: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.epochs < 1:
            raise TrainError(f"--epochs {self.epochs} must be ≥ 1")
        if self.batch_size < 1:
            raise TrainError(f"--batch-size {self.batch_size} must be ≥ 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainError(f"--lr {self.lr} must be a positive number")
        if self.weight_decay < 0:
            raise TrainError(f"--weight-decay {self.weight_decay} must be ≥ 0")


def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when absent."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(device: Device, local_rank: int = 0) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda, but torch sees no CUDA device; use --device cpu or auto")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 1024) -> tuple[float, float]:
    """(accuracy, mean CE) of ``model`` on ``(x, y)`` in eval mode."""
    was_training = model.training
    model.eval()
    correct, ce = 0, 0.0
    for s in range(0, len(x), batch_size):
        z = model(x[s:s + batch_size]).float()  # (b, K)
        correct += int((z.argmax(1) == y[s:s + batch_size]).sum())
        ce += float(torch.nn.functional.cross_entropy(z, y[s:s + batch_size], reduction="sum"))
    model.train(was_training)
    return correct / max(len(x), 1), ce / max(len(x), 1)


def _config_key(cfg: dict[str, Any]) -> dict[str, Any]:
    keep = ("data", "model", "loss", "alpha", "epochs", "batch_size", "lr", "weight_decay",
            "optimizer", "seed")
    return {k: cfg[k] for k in keep} | {"fingerprint": cfg["resolved"]["data_fingerprint"]}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns the final metrics record (rank 0 writes the files)."""
    cfg.validate()
    rank, world, local_rank = _dist_env()
    device = resolve_device(cfg.device, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.batch_size % world:
        raise TrainError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not cfg.resume:
        raise TrainError(f"{out} already holds a run; pass --resume to continue it or choose "
                         "another --out")
    if cfg.resume and not ckpt_path.exists():
        raise TrainError(f"--resume, but {ckpt_path} does not exist; drop --resume to start afresh")

    ds = load_dataset(cfg.data)
    x_tr, y_tr = ds.split("train")
    x_tu, y_tu = ds.split("tune")
    cfg.resolved = {
        "data_spec": ds.spec, "data_fingerprint": ds.fingerprint, "input_shape": list(ds.input_shape),
        "num_classes": ds.num_classes, "class_names": ds.class_names,
        "preprocessing": ds.preprocessing, "splits": {"train": len(y_tr), "tune": len(y_tu)},
        "world_size": world, "device": str(device), "abstain_version": __version__,
        "torch_version": str(torch.__version__),
    }

    torch.manual_seed(cfg.seed)
    model: Classifier = create_model(cfg.model, ds.input_shape, ds.num_classes)
    model.norm.fit(x_tr)
    model.to(device)
    loss_fn = create_loss(cfg.loss, cfg.alpha, cfg.epochs)
    params = [{"params": [p for n, p in model.named_parameters() if p.ndim > 1],
               "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in model.named_parameters() if p.ndim <= 1], "weight_decay": 0.0}]
    opt: torch.optim.Optimizer = (torch.optim.AdamW(params, lr=cfg.lr) if cfg.optimizer == "adamw"
                                  else torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True))
    sampler = DistributedSampler(range(len(y_tr)), num_replicas=world, rank=rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    local_bs = cfg.batch_size // world
    steps_per_epoch = math.ceil(len(sampler) / local_bs)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    amp_dtype = (torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported()
                 else torch.float16)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp_dtype == torch.float16)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    cfg_dict = asdict(cfg)
    if cfg.resume:
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        if _config_key(ck["config"]) != _config_key(cfg_dict):
            raise TrainError(f"--resume: {out} was trained with a different config or data "
                             f"({_config_key(ck['config'])}); use the same options or another --out")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        start_epoch, history = int(ck["epoch"]) + 1, list(ck["history"])
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(cfg_dict, indent=2) + "\n")

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    x_tr_t, y_tr_t = torch.as_tensor(x_tr, device=device), torch.as_tensor(y_tr, device=device)
    x_tu_t, y_tu_t = torch.as_tensor(x_tu, device=device), torch.as_tensor(y_tu, device=device)

    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    bar = _progress(range(start_epoch, end_epoch), rank, cfg.epochs, start_epoch)
    for epoch in bar:
        t0 = time.perf_counter()
        alpha = loss_fn.set_epoch(epoch)
        sampler.set_epoch(epoch)
        order = torch.as_tensor(list(sampler), device=device)  # this rank's shard, (n_local,)
        net.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for s in range(0, len(order), local_bs):
            idx = order[s:s + local_bs]
            xb, yb = x_tr_t[idx], y_tr_t[idx]  # (b, *shape), (b,)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=device.type == "cuda"):
                z = net(xb)  # (b, K)
            loss = loss_fn(z, yb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((z.detach().argmax(1) == yb).sum())
            seen += len(yb)
        stats = torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(stats)
        tune_acc, tune_ce = evaluate(model, x_tu_t, y_tu_t)
        rec = {"epoch": epoch + 1, "alpha": alpha, "lr": sched.get_last_lr()[0],
               "train_loss": float(stats[0] / stats[2]), "train_acc": float(stats[1] / stats[2]),
               "tune_acc": tune_acc, "tune_ce": tune_ce, "seconds": time.perf_counter() - t0}
        history.append(rec)
        if rank == 0:
            _atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                                "epoch": epoch, "history": history, "config": cfg_dict}, ckpt_path)
            atomic_write_text(out / "metrics.json", json.dumps(
                {"epochs": history, "final": rec, "complete": epoch + 1 == cfg.epochs}, indent=2) + "\n")
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{rec['train_loss']:.3f}", acc=f"{rec['train_acc']:.3f}",
                                tune=f"{tune_acc:.3f}", alpha=f"{alpha:.3f}")
    if world > 1:
        dist.barrier()
    return history[-1] if history else {}


def _progress(it: range, rank: int, total: int, initial: int):
    if rank != 0:
        return it
    from tqdm import tqdm
    return tqdm(it, desc="train", unit="epoch", total=total - initial, dynamic_ncols=True)


def _summary(cfg: TrainConfig, rec: dict[str, Any], seconds: float) -> None:
    from rich.table import Table

    from serve.cli.console import make_console

    t = Table(title=f"abstain train → {cfg.out}")
    for col in ("data", "model", "loss", "α", "epochs", "train acc", "tune acc", "time"):
        t.add_column(col)
    t.add_row(cfg.resolved.get("data_spec", cfg.data), cfg.model, cfg.loss,
              "-" if cfg.loss == "ce" else cfg.alpha, str(rec.get("epoch", 0)),
              f"{rec.get('train_acc', float('nan')):.4f}", f"{rec.get('tune_acc', float('nan')):.4f}",
              f"{seconds:.1f}s")
    make_console(stderr=True).print(t)


def main(args: argparse.Namespace) -> int:
    cfg = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.__dataclass_fields__
                         if k != "resolved" and hasattr(args, k)})
    t0 = time.perf_counter()
    try:
        rec = train(cfg)
        if dist.is_initialized():
            # Every rank finishes its collectives before any tears gloo down: a rank destroying
            # the group while its peer still used it aborted at exit ("terminate called without
            # an active exception", exit -6), once in ~10 CI runs of test_training_ddp.
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if _dist_env()[0] == 0:
        _summary(cfg, rec, time.perf_counter() - t0)
    return 0


__all__ = ["TrainConfig", "TrainError", "evaluate", "main", "resolve_device", "train"]
