"""Server settings: flags and ``ABSTAIN_*`` environment variables, validated with fix-it messages.

Precedence: command-line flag > environment variable > default. :func:`load_settings` turns
pydantic's validation errors into one :class:`SettingsError` line that names the flag, the
variable and the fix, so ``abstain serve`` exits 2 instead of printing a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from serve.errors import AbstainError

ENV_PREFIX = "ABSTAIN_"


class SettingsError(AbstainError):
    """A server setting that is out of range or points at nothing."""


class ServerSettings(BaseSettings):
    """Everything ``abstain serve`` can be told. Field ``x`` ↔ flag ``--x`` ↔ env ``ABSTAIN_X``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", protected_namespaces=())

    model_repository: Path = Field(Path("models"), description="models/<name>/<version>/ root")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime threads per session (0 = default)")
    max_batch_size: int = Field(64, ge=1, le=65536, description="samples per coalesced session run")
    max_queue_size: int = Field(2048, ge=1, description="samples waiting per model before 503")
    max_instances: int = Field(1024, ge=1, description="instances in one request before 413")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="request body limit (413)")
    request_timeout_s: float = Field(30.0, gt=0, description="per-request deadline (504)")
    poll_interval_s: float = Field(10.0, ge=0, description="repository poll period; 0 = off")
    warmup_batch_sizes: tuple[int, ...] = (1, 8, 64)
    api_key: SecretStr | None = Field(None, description="Bearer key for inference endpoints")
    admin_key: SecretStr | None = Field(None, description="Bearer key for /v1/admin/*; off if unset")
    drift_window: int = Field(1000, ge=10)
    drift_alpha: float = Field(0.001, gt=0, lt=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # The feedback loop (serve/loop): recording is on when state_dir or database_url is set.
    state_dir: Path | None = Field(None, description="decision store folder (SQLite, WAL)")
    database_url: SecretStr | None = Field(None, description="postgresql://… shared decision store")
    audit_rate: float = Field(0.01, ge=0, le=1, description="probability a sample is audited")
    store_inputs: bool = Field(False, description="keep decoded inputs for reviewers")
    live_delta: float = Field(0.05, gt=0, lt=1, description="level of the live-risk bound")
    review_ttl_s: float = Field(7 * 86400.0, gt=0, description="review items expire after this")
    reviewer_key: SecretStr | None = Field(None, description="Bearer key for the review API")
    review_webhook_secret: SecretStr | None = Field(None, description="Label Studio webhook secret")

    @property
    def api_key_value(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None

    @property
    def admin_key_value(self) -> str | None:
        return self.admin_key.get_secret_value() if self.admin_key else None

    @property
    def database_url_value(self) -> str | None:
        return self.database_url.get_secret_value() if self.database_url else None

    @property
    def reviewer_key_value(self) -> str | None:
        return self.reviewer_key.get_secret_value() if self.reviewer_key else None

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
    if s.api_key is not None and not s.api_key.get_secret_value().strip():
        raise SettingsError(f"{ENV_PREFIX}API_KEY / --api-key is empty: set a key or unset it")
    if s.admin_key is not None and not s.admin_key.get_secret_value().strip():
        raise SettingsError(f"{ENV_PREFIX}ADMIN_KEY / --admin-key is empty: set a key or unset it")
    if any(b < 1 for b in s.warmup_batch_sizes):
        raise SettingsError(f"{ENV_PREFIX}WARMUP_BATCH_SIZES must be positive integers, e.g. [1,8,64]")
    return s
