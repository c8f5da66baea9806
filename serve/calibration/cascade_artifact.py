"""A cascade's files: ``cascade.json`` (its stages, each pinned by sha256) and its calibration.

A cascade is a version directory ``<root>/<name>/<version>/`` holding::

    cascade.json               {"stages": [{"model": "mnist1d-mlp", "version": 1,
                                            "model_sha256": "<64 hex>"}, …]}   small → large
    cascade_calibration.json   written by `abstain calibrate DIR`: per stage its score,
                               temperature and threshold, and the system's certificate

Every stage names a model version of the same repository. Loading checks that each stage's
``model.onnx`` still has the pinned hash and that the calibration was made for exactly these pins:
a changed stage refuses the cascade (the stage model itself keeps serving).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve import __version__
from serve.errors import AbstainError
from serve.files import atomic_write_text
from serve.scores import Score, create_score

SPEC_FILE = "cascade.json"
CALIBRATION_FILE = "cascade_calibration.json"
SCHEMA_VERSION = 1
MAX_BYTES = 1 << 20
_NAME = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
_SHA = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class CascadeError(AbstainError):
    """A cascade whose files are missing, malformed, or no longer match its stages."""


class _Stage(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    model: _NAME
    version: Annotated[int, Field(ge=1, le=999_999_999)]
    model_sha256: _SHA


class _Spec(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    stages: Annotated[list[_Stage], Field(min_length=2, max_length=3)]


@dataclass(frozen=True)
class StageRef:
    """One stage: a model version of the same repository and the hash it is pinned to."""

    model: str
    version: int
    model_sha256: str

    @property
    def label(self) -> str:
        return f"{self.model}/{self.version}"


def _read_json(path: Path, what: str, fix: str) -> Any:
    if not path.is_file():
        raise CascadeError(f"{path} not found: {fix}")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise CascadeError(f"{path} is larger than {MAX_BYTES} bytes: not a {what}")
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CascadeError(f"{path} is not valid JSON ({err}): {fix}") from None
    except OSError as err:
        raise CascadeError(f"cannot read {path}: {err.strerror or err}") from None


def _problems(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}"
                     for e in err.errors()[:5])


def read_spec(cascade_dir: Path) -> list[StageRef]:
    """The stages of ``cascade_dir/cascade.json``, validated (2 or 3 stages, each pinned)."""
    path = Path(cascade_dir) / SPEC_FILE
    raw = _read_json(path, "cascade", 'write {"stages": [{"model": NAME, "version": V, '
                     '"model_sha256": HEX}, …]} (docs/cascade.md)')
    if not isinstance(raw, dict):
        raise CascadeError(f'{path} must hold a JSON object {{"stages": [...]}} (docs/cascade.md)')
    try:
        spec = _Spec.model_validate(raw)
    except ValidationError as err:
        raise CascadeError(f"{path}: {_problems(err)}. Each stage needs model, version and "
                           "model_sha256 (docs/cascade.md)") from None
    stages = [StageRef(s.model, s.version, s.model_sha256) for s in spec.stages]
    if len({s.label for s in stages}) != len(stages):
        raise CascadeError(f"{path}: a model version appears twice among the stages")
    return stages


def write_spec(cascade_dir: Path, stages: list[StageRef]) -> Path:
    """Write ``cascade.json`` atomically (used by the benchmark and tests; people may hand-write it)."""
    path = Path(cascade_dir) / SPEC_FILE
    atomic_write_text(path, json.dumps({"stages": [asdict(s) for s in stages]}, indent=2) + "\n")
    return path


def stage_dir(cascade_dir: Path, stage: StageRef) -> Path:
    """A stage's version directory: ``<root>/<model>/<version>`` beside the cascade's own."""
    return Path(cascade_dir).parent.parent / stage.model / str(stage.version)


@dataclass(frozen=True)
class StageRule:
    """One stage's decision rule in the cascade (a :class:`serve.decision.RuleSpec`)."""

    model: str
    version: int
    model_sha256: str
    score: str
    temperature: float
    threshold: float | None          # None: this stage accepts nothing (defers every sample)

    def score_fn(self) -> Score:
        return create_score(self.score, self.temperature)

    @property
    def probs_temperature(self) -> float:
        """A stage reports probabilities at the temperature its score was chosen with (fitted on
        the cascade's tuning split)."""
        return self.temperature


@dataclass(frozen=True)
class CascadeCalibration:
    """The deployed cascade: stage k accepts what reaches it iff its score ≥ its threshold."""

    stages: list[StageRule]
    target_risk: float
    delta: float
    n_tune: int
    n_cert: int
    risk: float                       # system risk on the certification split
    risk_upper_bound: float           # post-selection CP bound: indicative only
    human_share: float
    human_share_upper: float          # (1 − δ) CP upper bound
    stage_rows: list[dict[str, Any]]  # per stage: reach/accepted shares, risk, counts
    budgets: dict[str, Any] = field(default_factory=dict)
    procedure: str = ""
    detail: str = ""
    start: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    abstain_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def coverage(self) -> float:
        return 1.0 - self.human_share


class _Rule(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    model: _NAME
    version: Annotated[int, Field(ge=1)]
    model_sha256: _SHA
    score: Annotated[str, Field(min_length=1, max_length=64)]
    temperature: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
    threshold: Annotated[float, Field(allow_inf_nan=False)] | None


_UNIT = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _Calibration(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    stages: Annotated[list[_Rule], Field(min_length=2, max_length=3)]
    target_risk: _UNIT
    delta: _UNIT
    n_tune: Annotated[int, Field(ge=0)]
    n_cert: Annotated[int, Field(ge=0)]
    risk: _UNIT
    risk_upper_bound: _UNIT
    human_share: _UNIT
    human_share_upper: _UNIT
    stage_rows: list[dict[str, Any]]
    budgets: dict[str, Any] = {}
    procedure: str = ""
    detail: str = ""
    start: str = ""
    data: dict[str, Any] = {}
    created: str = ""
    abstain_version: str = ""
    schema_version: int = SCHEMA_VERSION


def new_cascade_calibration(**kwargs: Any) -> CascadeCalibration:
    kwargs.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return CascadeCalibration(**kwargs)


def save_cascade_calibration(cal: CascadeCalibration, cascade_dir: Path) -> Path:
    path = Path(cascade_dir) / CALIBRATION_FILE
    atomic_write_text(path, cal.to_json())
    return path


def load_cascade_calibration(cascade_dir: Path, stages: list[StageRef]) -> CascadeCalibration:
    """Read, validate and match the calibration to the pinned ``stages``.

    Raises:
        CascadeError: missing, malformed, another schema, or made for other stages or pins.
    """
    d = Path(cascade_dir)
    path = d / CALIBRATION_FILE
    fix = f"run `abstain calibrate {d} --data SPEC:calibration`"
    raw = _read_json(path, "cascade calibration", fix)
    try:
        c = _Calibration.model_validate(raw)
    except ValidationError as err:
        raise CascadeError(f"{path}: {_problems(err)}; {fix}") from None
    if c.schema_version != SCHEMA_VERSION:
        raise CascadeError(f"{path}: schema_version {c.schema_version} is not supported "
                           f"(expected {SCHEMA_VERSION}); {fix}")
    rules = [StageRule(**r.model_dump()) for r in c.stages]
    made_for = [(r.model, r.version, r.model_sha256) for r in rules]
    pinned = [(s.model, s.version, s.model_sha256) for s in stages]
    if made_for != pinned:
        raise CascadeError(f"{path} was made for the stages {_pins(made_for)}, but {SPEC_FILE} "
                           f"pins {_pins(pinned)}; {fix}")
    for r in rules:
        try:
            r.score_fn()
        except AbstainError as err:
            raise CascadeError(f"{path}: stage {r.model}/{r.version}: {err}; {fix}") from None
    fields_ = {k: getattr(c, k) for k in _Calibration.model_fields if k != "stages"}
    return CascadeCalibration(stages=rules, **fields_)


def _pins(stages: list[tuple[str, int, str]]) -> str:
    return ", ".join(f"{m}/{v} ({sha[:12]}…)" for m, v, sha in stages)


def threshold_json(t: float) -> float | None:
    """+∞ ("accepts nothing") as JSON null."""
    return None if math.isinf(t) else float(t)
