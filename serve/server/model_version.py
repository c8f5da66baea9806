"""One servable version: its onnxruntime session, verified calibration, decision rule and batcher.

:func:`load_version` loads, verifies and warms up one ``<root>/<name>/<version>/`` directory into a
:class:`ModelVersion`; the repository (serve/server/repository.py) holds the live set of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from serve.calibration import probe
from serve.calibration.artifact import FILENAME as CALIBRATION_FILE
from serve.calibration.artifact import Calibration, load_calibration
from serve.decision import DecisionRule
from serve.server.repository_files import MODEL_FILE, version_signature
from serve.server.runtime import Device, OnnxModel, read_model_bytes
from serve.server.threads import pick_threads

log = logging.getLogger(__name__)


class Batcher(Protocol):
    """A version's batcher as the repository sees it: something to close when the version leaves.

    The server's ``batcher_factory`` fills the slot with the data plane's
    :class:`serve.server.dataplane.batch.Batcher`, which the data plane uses in full; the
    repository does not import the data plane (which imports the repository).
    """

    async def close(self) -> None: ...


@dataclass
class ModelVersion:
    """One loaded, warmed, servable version."""

    name: str
    version: int
    path: Path
    model: OnnxModel
    calibration: Calibration
    rule: DecisionRule
    signature: tuple
    loaded_at: float = field(default_factory=time.time)
    batcher: Batcher | None = None
    threads: str = "default"                       # intra-op threads, as the start-up table shows
    alone: OnnxModel | None = None                 # the session for a request alone (threads.py)
    kind: str = "model"                            # or "cascade" (serve/server/cascade.py)

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    @property
    def preprocessing(self) -> dict[str, Any]:
        p = self.model.metadata.get("preprocessing")
        return p if isinstance(p, dict) else {"kind": "none"}

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One session run plus the decision for the whole batch (vectorised), in the worker thread."""
        return self._decide(self.model.run(x))                 # (n, K) float32 logits

    def infer_alone(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`infer` for a request that runs alone, on the event loop (serve/server/threads.py)."""
        return self._decide((self.alone or self.model).run(x))

    def probabilities(self, out: Mapping[str, np.ndarray]) -> np.ndarray:
        """The temperature-calibrated softmax of a served batch's logits (requests that ask)."""
        return self.rule.probabilities(out["logits"])

    def _decide(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        d = self.rule(logits)
        return {"logits": logits, "label": d.label, "score": d.score, "reject": d.reject}

    def summary(self) -> dict[str, Any]:
        c, m = self.calibration, self.model
        cal = {k: getattr(c, k) for k in ("score", "threshold", "target_risk", "delta", "method",
                                          "risk", "risk_upper_bound", "temperature", "defer_all")}
        cal.update(probability_temperature=c.probs_temperature, certified_coverage=c.coverage,
                   sha256=c.sha256, certified=(
            f"selective risk ≤ {c.target_risk:g} with probability ≥ {1 - c.delta:g}; "
            "risk_upper_bound is a post-selection CP bound (indicative only)"))
        return {"name": self.name, "version": str(self.version), "provider": m.provider,
                "threads": self.threads, "providers": m.providers, "model_sha256": m.sha256,
                "calibration": cal}


def load_version(d: Path, name: str, version: int, device: Device = "auto",
                 intra_op_threads: int | str = 0, warmup: tuple[int, ...] = (1,),
                 on_probe_mismatch: str = "refuse") -> ModelVersion:
    """Load, verify and warm up one version directory (blocking; call from a thread).

    Raises:
        AbstainError: the model or its calibration cannot be served, with the reason.
    """
    sig = version_signature(d)
    data = read_model_bytes(d / MODEL_FILE)                   # once: every session is built from it
    sessions = pick_threads(
        lambda n: OnnxModel(d / MODEL_FILE, device=device, intra_op_threads=n, model_bytes=data),
        intra_op_threads, tuple(sorted({1, max(warmup)})))
    model = sessions.batch
    cal = load_calibration(d / CALIBRATION_FILE, model.sha256)
    qs = cal.score_quantiles
    if cal.threshold is not None and qs and not (min(qs) <= cal.threshold <= max(qs)):
        log.warning("%s/%s: threshold %.6g lies outside the certification scores' range "
                    "[%.6g, %.6g]: it %s", name, version, cal.threshold, min(qs), max(qs),
                    "defers (almost) everything" if cal.threshold > max(qs)
                    else "accepts (almost) everything")
    rule = DecisionRule(cal)
    alone = sessions.alone if sessions.alone is not model else None
    served = (model, alone) if alone is not None else (model,)
    for m in served:
        m.warmup(tuple(warmup))
    # One decision on warm-up logits proves the score works for this model's K.
    rule(model.run(np.zeros((1, *model.input_shape), model.input_dtype)))
    probe.check(d, served, rule, on_probe_mismatch)          # the certified logits, here?
    return ModelVersion(name, version, d, model, cal, rule, sig, threads=sessions.note,
                        alone=alone)
