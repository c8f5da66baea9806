"""prometheus-client plumbing the monitor needs: multiprocess mode, vectorised histogram updates,
and a collector that shows every model version's score histogram (each with its own buckets) as
one metric family.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from prometheus_client import Histogram, values
from prometheus_client.metrics_core import Metric

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def setup_multiprocess(directory: str | os.PathLike[str]) -> Path:
    """Prepare ``directory`` for prometheus-client multiprocess mode; call before starting workers.

    Empties the directory (stale files from a previous run would be summed into the new one),
    exports ``PROMETHEUS_MULTIPROC_DIR`` for the workers, and switches this process's value class
    to the shared-file one (prometheus-client picks it once, at import).
    """
    path = Path(directory)
    if path.exists():
        for child in path.iterdir():
            if child.suffix == ".db":
                child.unlink()
            elif child.is_dir():
                shutil.rmtree(child)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    use_multiprocess_values()
    return path


def use_multiprocess_values() -> None:
    if values.ValueClass.__name__ != "MmapedValue":
        values.ValueClass = values.MultiProcessValue()


def observe_many(child: Histogram, bounds: np.ndarray, xs: np.ndarray) -> None:
    """Vectorised ``observe`` of many values into one histogram child.

    ``bounds`` are the child's upper bounds including +Inf; prometheus-client stores one
    non-cumulative counter per bucket (the first bound ≥ the value), which is what we add to.
    """
    xs = np.asarray(xs, dtype=np.float64).ravel()
    if xs.size == 0:
        return
    idx = np.minimum(np.searchsorted(bounds, xs, side="left"), bounds.size - 1)  # nan → +Inf bucket
    counts = np.bincount(idx, minlength=bounds.size)
    for i in np.flatnonzero(counts):
        child._buckets[i].inc(int(counts[i]))
    child._sum.inc(float(np.nansum(xs)))


class ScoreHistograms:
    """Collector that exposes every version's score histogram as one metric family."""

    def __init__(self) -> None:
        self.hists: dict[tuple[str, str], Histogram] = {}

    def collect(self) -> list[Metric]:
        fam = Metric("abstain_confidence_score", "Confidence score of each prediction "
                     "(buckets: the calibration's certification quantiles and threshold).",
                     "histogram")
        for h in list(self.hists.values()):
            for m in h.collect():
                fam.samples.extend(m.samples)
        return [fam]

    def describe(self) -> list[Metric]:
        return [Metric("abstain_confidence_score", "", "histogram")]


