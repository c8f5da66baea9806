"""The batcher's queue entries and its two refusals (503 queue full, 504 deadline)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from serve.errors import AbstainError

# A request's tag for the record stage: (the server's request id, the client's id or None).
# The batcher only carries it from submit to its batch's on_batch.
Tag = tuple[str, "str | None"] | str


class Overloaded(AbstainError):
    """The model's queue is full: retry after a moment (HTTP 503 + Retry-After)."""

    status = 503
    reason = "queue_full"
    headers: Mapping[str, str] = MappingProxyType({"Retry-After": "1"})


class Unloading(Overloaded):
    """The model version is being unloaded (a reload replaced it): retry, the next one serves."""

    unavailable = True


class DeadlineExceeded(AbstainError):
    """The request's deadline passed before its result was ready (HTTP 504)."""

    status = 504
    reason = "deadline"


@dataclass
class Item:
    """One request's samples waiting in (or taken from) a batcher's queue."""

    x: np.ndarray                       # (n, *input_shape)
    future: asyncio.Future
    deadline: float                     # time.monotonic() seconds
    tag: Tag = ""                       # the request ids (see Tag)
    enqueued: float = field(default_factory=time.perf_counter)
    n: int = field(init=False)

    def __post_init__(self) -> None:
        self.n = int(self.x.shape[0])


def bucket(n: int) -> int:
    """The power-of-two batch-size bucket of ``n`` samples (per-bucket cost estimates)."""
    return (n - 1).bit_length()              # 1 → 0, 2 → 1, 3..4 → 2, 5..8 → 3, …
