"""Server settings: flags and ``ABSTAIN_*`` environment variables, validated with fix-it messages.

Precedence: command-line flag > environment variable > default. :func:`load_settings` turns
pydantic's validation errors into one :class:`SettingsError` line that names the flag, the
variable and the fix, so ``abstain serve`` exits 2 instead of printing a traceback.

:class:`ServerSettings` is the flat surface users see (one field per flag and variable, so
``--max-body-bytes`` ↔ ``ABSTAIN_MAX_BODY_BYTES``). Components never receive it whole: each gets
its typed, frozen section by keyword — :class:`ModelSource` (the repository), :class:`Limits`
(what a request and the process may spend), :class:`Batching`, :class:`Keys` (security) and
:class:`~serve.feedback.settings.FeedbackSettings` (the review loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from serve.errors import AbstainError
from serve.feedback.settings import FeedbackSettings

ENV_PREFIX = "ABSTAIN_"
# Every secret setting: each has a --X-file flag (serve/cli/serve.py) besides --X and ABSTAIN_X.
SECRETS = ("api_key", "admin_key", "metrics_key", "reviewer_key", "review_webhook_secret",
           "database_url")


class SettingsError(AbstainError):
    """A server setting that is out of range or points at nothing."""


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where the repository finds its versions and how it loads them."""

    root: Path
    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int | str = 0
    warmup_batch_sizes: tuple[int, ...] = (1, 8, 64)
    follow_symlinks: bool = False
    on_probe_mismatch: Literal["refuse", "warn"] = "refuse"
    poll_interval_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request, and the process as a whole, may spend before it is refused."""

    max_instances: int = 1024
    max_body_bytes: int = 16 * 1024 * 1024
    max_inflight: int = 4096
    max_body_buffer_bytes: int = 256 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_image_pixels: int = 50_000_000
    max_image_pixels_per_s: int = 200_000_000
    request_timeout_s: float = 30.0
    shed_hold_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Batching:
    """The adaptive batcher of each loaded version."""

    max_batch_size: int = 64
    max_queue_size: int = 2048
    overload_queue_ms: float = 0.0
    inline_run_s: float = 0.0002


@dataclass(frozen=True, slots=True)
class Keys:
    """Bearer keys, one per role (``None``: that part is open or off, as each flag says)."""

    api: str | None = None
    admin: str | None = None
    metrics: str | None = None
    reviewer: str | None = None
    review_webhook_secret: str | None = None

    def __repr__(self) -> str:           # never print a key
        return "Keys(" + ", ".join(f"{k}={'set' if getattr(self, k) else None}"
                                   for k in self.__slots__) + ")"


class ServerSettings(BaseSettings):
    """Everything ``abstain serve`` can be told. Field ``x`` ↔ flag ``--x`` ↔ env ``ABSTAIN_X``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", protected_namespaces=())

    model_repository: Path = Field(Path("models"), description="models/<name>/<version>/ root")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int | Literal["auto"] = Field(
        "auto", description="onnxruntime threads per session: auto, 0 (default) or a number")
    max_batch_size: int = Field(64, ge=1, le=65536, description="samples per coalesced session run")
    max_queue_size: int = Field(2048, ge=1, description="samples waiting per model before 503")
    overload_queue_ms: float = Field(
        0.0, ge=0, le=60_000, description="under sustained overload (queue full and refusing for "
        "0.1 s) keep only this much work queued, so served requests do not wait out a full queue; "
        "0 = always the whole queue (default)")
    max_instances: int = Field(1024, ge=1, description="instances in one request before 413")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="request body limit (413)")
    max_inflight: int = Field(4096, ge=1, description="inference requests in flight before 503")
    max_body_buffer_bytes: int = Field(256 * 1024 * 1024, ge=1024,
                                       description="body bytes being read, all requests, before 503")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="request line + headers (431)")
    header_timeout_s: float = Field(10.0, gt=0, description="time to receive the headers (408)")
    body_timeout_s: float = Field(30.0, gt=0, description="time to receive a body (408)")
    keep_alive_s: float = Field(5.0, gt=0, le=3600,
                                description="an idle keep-alive connection is closed after this")
    max_image_pixels: int = Field(50_000_000, ge=1, description="decoded pixels per request (413)")
    max_image_pixels_per_s: int = Field(200_000_000, ge=1, description="decoded pixels per second")
    shed_hold_s: float = Field(1.0, ge=0, le=60,
                               description="after a 503, seconds (±50% jitter) before the connection is read again")
    request_timeout_s: float = Field(30.0, gt=0, description="per-request deadline (504)")
    inline_run_s: float = Field(0.0002, ge=0, le=0.1,
                                description="session runs measured faster than this run on the "
                                "event loop instead of the inference thread")
    poll_interval_s: float = Field(10.0, ge=0, description="repository poll period; 0 = off")
    on_probe_mismatch: Literal["refuse", "warn"] = Field(
        "refuse", description="a version whose probe logits differ from calibration's")
    follow_symlinks: bool = Field(False, description="serve version directories that resolve "
                                  "outside the repository")
    warmup_batch_sizes: tuple[int, ...] = (1, 8, 64)
    api_key: SecretStr | None = Field(None, description="Bearer key for inference endpoints")
    admin_key: SecretStr | None = Field(None, description="Bearer key for /v1/admin/*; off if unset")
    metrics_key: SecretStr | None = Field(None, description="Bearer key for /metrics; open if unset")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="serve /metrics on this port only")
    grpc_port: int | None = Field(None, ge=0, le=65535,
                                  description="serve the v2 gRPC protocol on this port; off if unset")
    drift_window: int = Field(1000, ge=10)
    drift_alpha: float = Field(0.001, gt=0, lt=1)
    shift_alpha: float = Field(0.01, gt=0, lt=1, description="probability of any false label-free "
                               "shift alarm within --shift-horizon stationary predictions")
    shift_horizon: int = Field(1_000_000, ge=1, description="predictions --shift-alpha covers")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # The feedback loop (serve/feedback): recording is on when state_dir or database_url is set.
    state_dir: Path | None = Field(None, description="decision store folder (SQLite, WAL)")
    database_url: SecretStr | None = Field(None, description="postgresql://… shared decision store")
    audit_rate: float = Field(0.01, ge=0, le=1, description="probability a sample is audited")
    store_inputs: bool = Field(False, description="keep decoded inputs for reviewers")
    live_delta: float = Field(0.05, gt=0, lt=1, description="level of the live-risk bound")
    review_ttl_s: float = Field(7 * 86400.0, gt=0, description="review items expire after this")
    retention_days: float | None = Field(None, gt=0, description="delete records older than this "
                                         "that no review or current calibration needs; keep all if unset")
    retention_max_rows: int | None = Field(None, ge=1, description="keep at most this many rows "
                                           "nobody reviews (accepted unaudited, expired); the oldest go")
    reviewer_key: SecretStr | None = Field(None, description="Bearer key for the review API")
    review_webhook_secret: SecretStr | None = Field(None, description="Label Studio webhook secret")
    open_review_api: bool = Field(False, description="serve the review API to anyone, without a "
                                  "key (start-up warns); off: it needs the reviewer or admin key")
    max_control_body_bytes: int = Field(1 << 20, ge=1024, le=1 << 30, description="request body "
                                        "limit of /v1/feedback and the Label Studio webhook (413)")
    on_risk_alarm: Literal["keep", "defer", "fallback"] = Field(
        "keep", description="while a served calibration's live risk alarms: keep serving it, "
        "defer every prediction, or fall back to a stricter threshold certified in advance")
    change_arl: float = Field(100_000.0, ge=10, description="average run length, in labelled "
                              "audits, to a false alarm of the risk-change detector")

    @property
    def models(self) -> ModelSource:
        return ModelSource(self.model_repository, self.device, self.intra_op_threads,
                           self.warmup_batch_sizes, self.follow_symlinks, self.on_probe_mismatch,
                           self.poll_interval_s)

    @property
    def limits(self) -> Limits:
        return Limits(**{f: getattr(self, f) for f in Limits.__slots__})

    @property
    def batching(self) -> Batching:
        return Batching(**{f: getattr(self, f) for f in Batching.__slots__})

    @property
    def keys(self) -> Keys:
        return Keys(_secret(self.api_key), _secret(self.admin_key), _secret(self.metrics_key),
                    _secret(self.reviewer_key), _secret(self.review_webhook_secret))

    @property
    def feedback(self) -> FeedbackSettings:
        return FeedbackSettings(open_review_api=self.open_review_api,
                                max_body_bytes=self.max_control_body_bytes,
                                location=_secret(self.database_url) or self.state_dir,
                                audit_rate=self.audit_rate, store_inputs=self.store_inputs,
                                live_delta=self.live_delta, review_ttl_s=self.review_ttl_s,
                                retention_days=self.retention_days,
                                retention_max_rows=self.retention_max_rows,
                                on_risk_alarm=self.on_risk_alarm, change_arl=self.change_arl)

    def env(self) -> dict[str, str]:
        """These settings as ``ABSTAIN_*`` variables (how uvicorn worker processes receive them)."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, SecretStr):
                v = v.get_secret_value()
            elif isinstance(v, tuple):
                v = "[" + ",".join(str(i) for i in v) + "]"
            out[ENV_PREFIX + name.upper()] = str(v)
        return out


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() or None if value is not None else None


def _describe(err: dict[str, Any]) -> str:
    name = str(err["loc"][0]) if err.get("loc") else "?"
    flag, env = "--" + name.replace("_", "-"), ENV_PREFIX + name.upper()
    ctx = err.get("ctx") or {}
    bound = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in ctx.items()
                      if k in ("ge", "gt", "le", "lt")).replace("ge ", "≥ ").replace(
        "gt ", "> ").replace("le ", "≤ ").replace("lt ", "< ")
    want = f" (must be {bound})" if bound else ""
    return (f"{flag} / {env} = {err.get('input')!r} is invalid: {err.get('msg', 'bad value')}{want}. "
            f"Fix the flag or unset {env}")


def read_key_file(path: str, flag: str) -> str:
    """A secret (a key, a database URL) from a file's first line, stripped, so it never appears
    in ``ps`` or shell history."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"{flag} {path!r}: cannot read it ({err.__class__.__name__}); "
                            "pass a readable file holding the secret on its first line") from None
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise SettingsError(f"{flag} {path!r} is empty: write the secret on its first line")
    return key


def load_settings(check_paths: bool = True, **overrides: Any) -> ServerSettings:
    """Settings from the environment, with ``overrides`` (flags given explicitly) on top.

    Raises:
        SettingsError: a value out of range, an unknown choice, or a missing repository.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        s = ServerSettings(**overrides)
    except ValidationError as err:
        raise SettingsError("; ".join(_describe(e) for e in err.errors())) from None
    if check_paths:
        repo = s.model_repository
        if not repo.is_dir():
            raise SettingsError(
                f"model repository {str(repo)!r} is not a directory. Pass the folder that holds "
                "<name>/<version>/{model.onnx,calibration.json} (e.g. `abstain serve models`) "
                f"or set {ENV_PREFIX}MODEL_REPOSITORY")
    given: dict[str, str] = {}
    for name in SECRETS[:-1]:                                # the keys; the URL is checked below
        key = getattr(s, name)
        if key is None:
            continue
        value, flag = key.get_secret_value(), name.replace("_", "-")
        if not value.strip():
            raise SettingsError(f"{ENV_PREFIX}{name.upper()} / --{flag}-file is empty: set a key "
                                "or unset it")
        if value in given.values():
            other = next(k for k, v in given.items() if v == value).replace("_", "-")
            raise SettingsError(f"--{flag} is the same as --{other}: each key grants one role, "
                                "so give every role its own key (e.g. openssl rand -hex 24)")
        given[name] = value
    if s.metrics_port is not None and s.metrics_port == s.port:
        raise SettingsError(f"--metrics-port {s.metrics_port} is the serving port: pick another "
                            "port or leave it unset to serve /metrics beside the API")
    if s.grpc_port and s.grpc_port in (s.port, s.metrics_port):
        raise SettingsError(f"--grpc-port {s.grpc_port} is already the HTTP or metrics port: pick "
                            "another port for gRPC")
    if isinstance(s.intra_op_threads, int) and s.intra_op_threads < 0:
        raise SettingsError(f"--intra-op-threads / {ENV_PREFIX}INTRA_OP_THREADS = "
                            f"{s.intra_op_threads} is invalid: use auto, 0 (onnxruntime's default) "
                            "or a positive number of threads")
    if s.on_risk_alarm == "fallback":
        raise SettingsError("--on-risk-alarm fallback needs a stricter threshold certified in "
                            "advance, and calibration.json does not hold one yet (no stricter "
                            "threshold to fall back to): use "
                            "--on-risk-alarm defer (defer every prediction while the live risk "
                            "alarms) or keep (the default)")
    if any(b < 1 for b in s.warmup_batch_sizes):
        raise SettingsError(f"{ENV_PREFIX}WARMUP_BATCH_SIZES must be positive integers, e.g. [1,8,64]")
    return s
