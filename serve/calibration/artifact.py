"""``calibration.json``: the schema, its hash, an atomic write, and a load that verifies.

Everything that reads a calibration (the server, `abstain evaluate`, the benchmark) goes through
:func:`load_calibration`, which refuses a malformed file or one made for another model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve import __version__
from serve.errors import AbstainError
from serve.files import atomic_write_text
from serve.scores import Score, ScoreError, create_score

SCHEMA_VERSION = 1
FILENAME = "calibration.json"
Method = Literal["ltt", "sgr", "coverage", "none"]


class CalibrationError(AbstainError):
    """A calibration file that is missing, malformed, or made for another model."""


@dataclass(frozen=True)
class Calibration:
    """The deployed decision rule: accept iff ``score(logits) ≥ threshold``.

    ``threshold`` is None when nothing could be certified and the operator chose
    ``--allow-defer-all``: then every prediction is deferred.
    """

    model_sha256: str
    score: str                       # score spec, e.g. "pnorm:2" or "msp"
    temperature: float               # the score's temperature (part of the certified rule)
    threshold: float | None
    target_risk: float
    delta: float
    method: Method
    n_tune: int
    n_cert: int
    coverage: float                  # empirical, on the certification split
    risk: float                      # empirical selective risk, on the certification split
    risk_upper_bound: float          # post-selection CP bound at `threshold`: indicative only
    data_fingerprint: str
    # The temperature of the reported probabilities (None: ``temperature``; absent from files made
    # before it existed). Not part of the certified rule: see :attr:`probs_temperature`.
    probability_temperature: float | None = None
    score_params: dict[str, Any] = field(default_factory=dict)
    candidates: dict[str, float] = field(default_factory=dict)   # score spec → tuning AURC
    score_quantiles: list[float] = field(default_factory=list)   # certification-split quantiles
    data: dict[str, Any] = field(default_factory=dict)           # spec, split names, ratio, seed
    # Where the certified logits came from: onnxruntime's provider and the model's input
    # precision, and the probe batch saved beside the artifact (probe.npz) to compare with.
    provider: str = ""
    precision: str = ""
    probe_sha256: str = ""
    created: str = ""
    abstain_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    @property
    def defer_all(self) -> bool:
        return self.threshold is None

    @property
    def probs_temperature(self) -> float:
        """The temperature of the served ``probabilities`` (``softmax(z / T)``).

        The certificate is about the score's ranking, not about probabilities, so they may use the
        temperature fitted on the tuning split even when the deployed score is fixed at another
        one (the floored sequence's MSP at T = 1); it touches neither score nor threshold.
        """
        t = self.probability_temperature
        return self.temperature if t is None else t

    def score_fn(self) -> Score:
        """The score function this calibration certified (one implementation, shared)."""
        return create_score(self.score, self.temperature)

    def to_json(self) -> str:
        """The canonical JSON; an unset ``probability_temperature`` is left out, so a file made
        before the field existed keeps its hash (the feedback loop keys its epochs by it)."""
        d = asdict(self)
        if d["probability_temperature"] is None:
            del d["probability_temperature"]
        return json.dumps(d, indent=2, sort_keys=True, allow_nan=False) + "\n"

    @property
    def sha256(self) -> str:
        """Hash of the canonical JSON (reported in metrics and readiness)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def _check(cal: Calibration, where: str) -> None:
    def bad(msg: str) -> CalibrationError:
        return CalibrationError(f"{where}: {msg}. Re-run `abstain calibrate` for this model")

    if cal.schema_version != SCHEMA_VERSION:
        raise bad(f"schema_version {cal.schema_version} is not supported (expected {SCHEMA_VERSION})")
    if len(cal.model_sha256) != 64:
        raise bad("model_sha256 is not a SHA-256 hex digest")
    try:
        cal.score_fn()
    except ScoreError as err:
        raise bad(f"bad score: {err}") from err
    t = cal.probability_temperature
    if t is not None and not (isinstance(t, (int, float)) and 0.0 < t < math.inf):
        raise bad(f"probability_temperature must be a finite number > 0 or absent; got {t!r}")
    if cal.threshold is not None and not math.isfinite(cal.threshold):
        raise bad("threshold must be a finite number or null (defer everything)")
    for name in ("target_risk", "delta", "coverage", "risk", "risk_upper_bound"):
        v = getattr(cal, name)
        if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
            raise bad(f"{name} must be a number in [0, 1]; got {v!r}")
    if cal.method not in ("ltt", "sgr", "coverage", "none"):
        raise bad(f"unknown method {cal.method!r}")


MAX_BYTES = 16 << 20


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number: every number must be finite")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{text[:20]} overflows a float: every number must be finite")
    return v


_FINITE = Annotated[float, Field(allow_inf_nan=False)]
_UNIT = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _Schema(BaseModel):
    """The field types of calibration.json, checked strictly (``"0.3"`` is not a number)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    score: Annotated[str, Field(min_length=1, max_length=64)]
    temperature: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
    threshold: _FINITE | None
    target_risk: _UNIT
    delta: _UNIT
    method: Method
    n_tune: Annotated[int, Field(ge=0)]
    n_cert: Annotated[int, Field(ge=0)]
    coverage: _UNIT
    risk: _UNIT
    risk_upper_bound: _UNIT
    data_fingerprint: str
    probability_temperature: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None
    score_params: dict[str, Any] = {}       # numbers in nested values: finite (checked at parse)
    candidates: dict[str, _FINITE] = {}
    score_quantiles: list[_FINITE] = []
    data: dict[str, Any] = {}
    provider: str = ""
    precision: str = ""
    probe_sha256: Annotated[str, Field(pattern=r"^([0-9a-f]{64})?$")] = ""
    created: str = ""
    abstain_version: str = ""
    schema_version: int = SCHEMA_VERSION


def _validated(raw: object, path: Path) -> Calibration:
    """``raw`` JSON → a Calibration, or one CalibrationError naming every bad field."""
    if not isinstance(raw, dict):
        raise CalibrationError(f"{path} must hold a JSON object. Re-run `abstain calibrate`")
    try:
        checked = _Schema.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}"
                             for e in err.errors()[:5])
        raise CalibrationError(f"{path}: {problems}. Re-run `abstain calibrate`") from None
    return Calibration(**{f.name: getattr(checked, f.name) for f in fields(Calibration)})


def new_calibration(**kwargs: Any) -> Calibration:
    """Build and validate a calibration, stamping the creation time."""
    kwargs.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    cal = Calibration(**kwargs)
    _check(cal, "new calibration")
    return cal


def save_calibration(cal: Calibration, model_dir: str | os.PathLike[str]) -> Path:
    """Atomically write ``calibration.json`` into ``model_dir``."""
    path = Path(model_dir) / FILENAME
    atomic_write_text(path, cal.to_json())
    return path


def load_calibration(path: str | os.PathLike[str], model_sha256: str | None = None) -> Calibration:
    """Read and verify a calibration; ``path`` is the file or its model directory.

    Raises:
        CalibrationError: missing, not JSON, wrong fields or values, or (when ``model_sha256`` is
            given) made for a different model file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise CalibrationError(f"{path} not found: run `abstain calibrate {path.parent}` first")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise CalibrationError(f"{path} is larger than {MAX_BYTES} bytes: not a calibration. "
                                   "Re-run `abstain calibrate`")
        raw = json.loads(path.read_text(), parse_constant=_no_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CalibrationError(f"{path} is not valid JSON with finite numbers ({err}). Re-run "
                               "`abstain calibrate`") from None
    except OSError as err:
        raise CalibrationError(f"cannot read {path}: {err.strerror or err}") from None
    if not isinstance(raw, dict):
        raise CalibrationError(f"{path} must hold a JSON object. Re-run `abstain calibrate`")
    cal = _validated(raw, path)
    _check(cal, str(path))
    if model_sha256 is not None and cal.model_sha256 != model_sha256:
        raise CalibrationError(
            f"{path} was made for a model with sha256 {cal.model_sha256[:12]}…, but the model "
            f"beside it has sha256 {model_sha256[:12]}…. Re-run `abstain calibrate` for this model")
    return cal
