"""The batcher's counters: read by tests, ``/v2/models/{m}/stats`` and benchmarks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class BatchStats:
    """Counters readable by tests, /v2/models/{m}/stats and benchmarks."""

    requests: int = 0
    samples: int = 0
    runs: int = 0
    sizes: Counter = field(default_factory=Counter)   # batch size → number of runs
    rejected_full: int = 0
    expired: int = 0

    @property
    def mean_batch_size(self) -> float:
        return self.samples / self.runs if self.runs else 0.0

    def as_dict(self) -> dict:
        return {"requests": self.requests, "samples": self.samples, "runs": self.runs,
                "mean_batch_size": self.mean_batch_size, "max_batch_size": max(self.sizes, default=0),
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
                "rejected_queue_full": self.rejected_full, "expired": self.expired}
