"""Training losses: cross-entropy, label smoothing, MaxSup (formulas: METHODS.md §1).

Each loss maps ``(logits (n, K), targets (n,))`` to a scalar (``reduction="mean"``) or a
per-sample vector (``reduction="none"``). α may follow a linear schedule over epochs; the trainer
calls :meth:`Loss.set_epoch` at the start of every epoch so the schedule actually moves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from serve.errors import AbstainError

LossName = Literal["ce", "ls", "maxsup"]
Reduction = Literal["mean", "none"]


class LossError(AbstainError):
    """An unknown loss or a malformed α."""


@dataclass(frozen=True)
class AlphaSchedule:
    """α constant (``start == end``) or linear ``α_t = start + (end − start)·t/T`` over epochs."""

    start: float
    end: float

    @classmethod
    def parse(cls, text: str | float) -> AlphaSchedule:
        """``"0.1"`` → constant; ``"0.1:0.2"`` → linear from 0.1 towards 0.2."""
        parts = str(text).split(":")
        try:
            vals = [float(p) for p in parts]
        except ValueError as err:
            raise LossError(f"--alpha {text!r} must be a number or START:END (e.g. 0.1:0.2)") from err
        if len(vals) not in (1, 2) or not all(0.0 <= v < 1.0 for v in vals):
            raise LossError(f"--alpha {text!r} must be a number in [0, 1) or START:END of two")
        return cls(vals[0], vals[-1])

    def at(self, epoch: int, epochs: int) -> float:
        """α for 0-based ``epoch`` of ``epochs`` (METHODS §1: ``t/T``, so ``end`` is the limit)."""
        return self.start + (self.end - self.start) * epoch / max(epochs, 1)

    def __str__(self) -> str:
        return f"{self.start:g}" if self.start == self.end else f"{self.start:g}:{self.end:g}"


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction=reduction)


def label_smoothing(logits: torch.Tensor, y: torch.Tensor, alpha: float,
                    reduction: Reduction = "mean") -> torch.Tensor:
    """CE against ``(1−α)·onehot(y) + α/K`` (= ``CE + α·(z_y − mean z)`` + const)."""
    return F.cross_entropy(logits.float(), y, label_smoothing=alpha, reduction=reduction)


def maxsup(logits: torch.Tensor, y: torch.Tensor, alpha: float,
           reduction: Reduction = "mean") -> torch.Tensor:
    """``CE + α·(z_max − mean_k z_k)``: the penalty acts on the top-1 logit, right or wrong.

    Follows the official MaxSup code: plain CE inside, gradient flows through ``z_max`` (to the
    arg-max logit) and through the mean (to all logits).
    """
    z = logits.float()  # (n, K)
    penalty = z.max(dim=1).values - z.mean(dim=1)  # (n,)
    per_sample = F.cross_entropy(z, y, reduction="none") + alpha * penalty
    return per_sample.mean() if reduction == "mean" else per_sample


class Loss:
    """A named loss with its α schedule; ``set_epoch`` advances α."""

    def __init__(self, name: LossName, alpha: AlphaSchedule, epochs: int) -> None:
        self.name, self.schedule, self.epochs = name, alpha, epochs
        self.alpha = alpha.at(0, epochs)

    def set_epoch(self, epoch: int) -> float:
        self.alpha = self.schedule.at(epoch, self.epochs)
        return self.alpha

    def __call__(self, logits: torch.Tensor, y: torch.Tensor,
                 reduction: Reduction = "mean") -> torch.Tensor:
        if self.name == "ce":
            return cross_entropy(logits, y, reduction)
        fn: Callable[..., torch.Tensor] = label_smoothing if self.name == "ls" else maxsup
        return fn(logits, y, self.alpha, reduction)


LOSSES: tuple[str, ...] = ("ce", "ls", "maxsup")


def create_loss(name: str, alpha: str | float = "0.1:0.2", epochs: int = 1) -> Loss:
    """Build a loss by name (``ce``, ``ls``, ``maxsup``); ``ce`` ignores α."""
    if name not in LOSSES:
        raise LossError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    sched = AlphaSchedule(0.0, 0.0) if name == "ce" else AlphaSchedule.parse(alpha)
    return Loss(name, sched, epochs)  # type: ignore[arg-type]
