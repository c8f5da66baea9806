"""A cascade served like a model: stage 1 answers what it can, later stages only its deferrals.

A :class:`CascadeVersion` sits in the repository's live set beside model versions and answers the
same calls (decode, batch, encode, metadata). Its batcher (serve/server/cascade_batch.py) runs
stage 1 on every sample through stage 1's own batcher, then each later stage on the previous
stage's deferrals only, through *that* stage's batcher (shared with the model's own traffic), and
decides with the cascade's certified thresholds (docs/cascade.md). Every answer carries
``stage``: the stage that answered, or for a deferred sample the last stage (``reject: true``).

Loading checks that each stage is served and still has the ``model.onnx`` hash ``cascade.json``
pins; a stage that changed refuses the cascade (the stage model keeps serving). This module knows
the stage versions only by what it uses of them, so the repository can import it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve.calibration.cascade_artifact import (
    CALIBRATION_FILE,
    SPEC_FILE,
    CascadeCalibration,
    CascadeError,
    load_cascade_calibration,
    read_spec,
)
from serve.decision import DecisionRule
from serve.scores import as_logits, softmax
from serve.server.cascade_batch import CascadeBatcher
from serve.server.repository_files import file_stat

log = logging.getLogger(__name__)


def is_cascade_dir(d: Path) -> bool:
    return (d / SPEC_FILE).is_file()


def cascade_signature(d: Path, stages: list[Any]) -> tuple:
    """The cascade's files and the exact stage versions it was built on."""
    return file_stat(d / SPEC_FILE), file_stat(d / CALIBRATION_FILE), tuple(id(s) for s in stages)


class CascadeRule:
    """The cascade's stage rules seen as one: forcing deferral forces it at every stage."""

    def __init__(self, rules: list[DecisionRule]) -> None:
        self.rules = rules

    @property
    def force_defer(self) -> bool:
        return all(r.force_defer for r in self.rules)

    @force_defer.setter
    def force_defer(self, value: bool) -> None:
        for r in self.rules:
            r.force_defer = value


@dataclass
class CascadeVersion:
    """One loaded cascade: its live stage versions and the rule of each stage."""

    name: str
    version: int
    path: Path
    stages: list[Any]                      # the stage ModelVersions, small → large
    calibration: CascadeCalibration
    rules: list[DecisionRule]
    signature: tuple
    loaded_at: float = field(default_factory=time.time)
    batcher: CascadeBatcher | None = None
    threads: str = "per stage"
    kind: str = "cascade"

    @property
    def rule(self) -> CascadeRule:
        """What the loop's risk guard holds for this epoch: ``force_defer`` on every stage."""
        return CascadeRule(self.rules)

    @property
    def model(self) -> Any:
        """Stage 1's model: the inputs every stage reads (shape, dtype, name)."""
        return self.stages[0].model

    @property
    def class_names(self) -> list[str]:
        return self.stages[-1].class_names

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.stages[0].preprocessing

    def probabilities(self, out: Mapping[str, np.ndarray]) -> np.ndarray:
        """Each row's softmax at the temperature of the stage that answered it."""
        t = np.array([r.temperature for r in self.calibration.stages])[out["stage"] - 1]
        return softmax(as_logits(out["logits"]) / t[:, None])

    def summary(self) -> dict[str, Any]:
        c = self.calibration
        return {"name": self.name, "version": str(self.version), "kind": "cascade",
                "provider": self.model.provider, "threads": self.threads,
                "stages": [{"model": r.model, "version": str(r.version),
                            "model_sha256": r.model_sha256, "score": r.score,
                            "temperature": r.temperature, "threshold": r.threshold}
                           for r in c.stages],
                "calibration": {"target_risk": c.target_risk, "delta": c.delta,
                                "risk": c.risk, "risk_upper_bound": c.risk_upper_bound,
                                "human_share": c.human_share,
                                "human_share_upper": c.human_share_upper,
                                "certified_coverage": c.coverage, "sha256": c.sha256,
                                "stage_rows": c.stage_rows,
                                "certified": f"system risk ≤ {c.target_risk:g} with probability "
                                             f"≥ {1 - c.delta:g} over everything the stages "
                                             "accept"}}


def load_cascade(d: Path, name: str, version: int,
                 stage_of: Callable[[str, int], Any | None]) -> CascadeVersion:
    """Build a cascade on the live stage versions ``stage_of(model, version)`` (blocking: reads
    two small files).

    Raises:
        CascadeError: a file is missing or malformed, a stage is not served, or a stage's model
            is not the one ``cascade.json`` pins.
    """
    refs = read_spec(d)
    stages = []
    for k, ref in enumerate(refs, 1):
        sv = stage_of(ref.model, ref.version)
        if sv is None:
            raise CascadeError(f"stage {k} ({ref.label}) is not being served (missing or "
                               "refused); the cascade needs every stage")
        if getattr(sv, "kind", "model") == "cascade":
            raise CascadeError(f"stage {k} ({ref.label}) is itself a cascade")
        if sv.model.sha256 != ref.model_sha256:
            raise CascadeError(
                f"stage {k} ({ref.label}) now serves a model with sha256 {sv.model.sha256[:12]}…, "
                f"but {d / SPEC_FILE} pins {ref.model_sha256[:12]}…: the stage changed, so the "
                "cascade's certificate no longer holds. Pin the new hash and run `abstain "
                f"calibrate {d}` again")
        stages.append(sv)
    shapes = {(tuple(s.model.input_shape), str(s.model.input_dtype)) for s in stages}
    if len(shapes) != 1 or len({len(s.class_names) for s in stages}) != 1:
        raise CascadeError(f"{d}: every stage must read the same inputs and predict the same "
                           f"classes; got inputs {sorted(shapes)}")
    cal = load_cascade_calibration(d, refs)
    rules = [DecisionRule(r) for r in cal.stages]
    return CascadeVersion(name, version, d, stages, cal, rules, cascade_signature(d, stages))
