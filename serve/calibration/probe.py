"""The probe batch: does this server compute the logits that calibration certified?

A certificate is about the scores of the logits calibration saw. Another execution provider (CUDA
vs CPU), precision or onnxruntime build computes logits that differ in the last bits, and a sample
whose score lies near the threshold can then be accepted where calibration would have deferred it.
So calibration saves a few hundred of its inputs with the logits it computed (``probe.npz`` beside
``calibration.json``, hashed into it), and every load runs them again and compares:

* the decisions the certified rule takes on the stored logits vs on the logits computed now
  (a *flip* is a sample whose accept/defer differs), and
* the largest absolute logit difference.

A mismatch — any flip, or a logit difference above ``ATOL`` — refuses the version, or with
``--on-probe-mismatch warn`` serves it with a loud warning that gives both numbers.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.calibration.artifact import CalibrationError
from serve.errors import AbstainError
from serve.files import atomic_write_bytes

log = logging.getLogger(__name__)
FILENAME = "probe.npz"
N_PROBE = 256
ATOL = 1e-3


@dataclass(frozen=True)
class ProbeReport:
    n: int
    flips: int
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.flips == 0 and self.max_abs_diff <= ATOL

    def describe(self) -> str:
        return (f"{self.flips} of {self.n} probe decisions flip and logits differ by up to "
                f"{self.max_abs_diff:.3g} (tolerance: no flip, ≤ {ATOL:g})")


class ProbeMismatch(AbstainError):
    """This server's logits differ from the certified ones beyond the tolerance."""


def write_probe(model_dir: str | Path, x: np.ndarray, logits: np.ndarray) -> str:
    """Save the first ``N_PROBE`` inputs and their logits; returns the file's sha256."""
    buf = io.BytesIO()
    np.savez(buf, x=np.ascontiguousarray(x[:N_PROBE]),
             logits=np.ascontiguousarray(logits[:N_PROBE], dtype=np.float64))
    data = buf.getvalue()
    atomic_write_bytes(Path(model_dir) / FILENAME, data)
    return hashlib.sha256(data).hexdigest()


def load_probe(model_dir: Path, sha256: str) -> tuple[np.ndarray, np.ndarray]:
    path = model_dir / FILENAME
    try:
        data = path.read_bytes()
    except OSError:
        raise CalibrationError(f"{path} is missing, but calibration.json names a probe batch: "
                               "restore it or re-run `abstain calibrate`") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CalibrationError(f"{path} does not match the probe_sha256 in calibration.json: "
                               "re-run `abstain calibrate`")
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return f["x"], f["logits"]


def compare(rule, stored: np.ndarray, now: np.ndarray) -> ProbeReport:
    """Flips of the certified rule and the largest logit difference, stored vs now."""
    before, after = rule(stored).reject, rule(now).reject
    diff = float(np.max(np.abs(np.asarray(now, np.float64) - stored))) if len(stored) else 0.0
    return ProbeReport(len(stored), int(np.sum(before != after)), diff)


def check(model_dir: Path, models: Sequence, rule, on_mismatch: str = "refuse") -> list[ProbeReport]:
    """Run the probe (read once) on each session of ``models``; [] when the calibration has no
    probe (older artifacts)."""
    cal = rule.calibration
    if not cal.probe_sha256:
        log.info("%s: no probe batch in its calibration (made before probes); the logits of "
                 "this provider are not compared with calibration's", model_dir)
        return []
    x, stored = load_probe(model_dir, cal.probe_sha256)
    reports = []
    for model in models:
        report = compare(rule, stored, model.logits(x))
        reports.append(report)
        if report.ok:
            continue
        where = (f"{model_dir}: calibrated on {cal.provider or 'an unrecorded provider'} "
                 f"({cal.precision or '?'}), served on {model.provider}: {report.describe()}")
        if on_mismatch != "warn":
            raise ProbeMismatch(f"{where}. Re-calibrate on this provider (abstain calibrate "
                                "--device ...), or pass --on-probe-mismatch warn to serve anyway")
        log.warning("CERTIFICATE MAY NOT HOLD: %s; serving anyway (--on-probe-mismatch warn)",
                    where)
    return reports
