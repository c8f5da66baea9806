"""``abstain serve [MODEL_REPOSITORY]``: validate settings, pre-flight the models, run uvicorn."""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from serve.errors import AbstainError
from serve.settings import ENV_PREFIX, ServerSettings, SettingsError, load_settings

DEFAULT_MODEL = "mnist1d-maxsup"
_FLAGS: list[tuple[str, type, str]] = [
    ("host", str, "interface to bind (0.0.0.0 for all)"),
    ("port", int, "TCP port (default 8000)"),
    ("workers", int, "uvicorn worker processes (default 1)"),
    ("device", str, "auto | cpu | cuda (cuda refuses to start without an active CUDA provider)"),
    ("max_batch_size", int, "samples per coalesced session run (default 64)"),
    ("max_queue_size", int, "samples queued per model before 503 (default 2048)"),
    ("max_instances", int, "samples per request before 413 (default 1024)"),
    ("max_body_bytes", int, "request body limit in bytes (default 16 MiB)"),
    ("request_timeout_s", float, "per-request deadline in seconds (default 30; header X-Deadline-Ms)"),
    ("poll_interval_s", float, "repository poll period for hot reload, 0 = off (default 10)"),
    ("intra_op_threads", int, "onnxruntime threads per session (0 = default)"),
    ("api_key", str, "require 'Authorization: Bearer KEY' on inference endpoints"),
    ("admin_key", str, "enable /v1/admin/* with this Bearer key"),
    ("log_level", str, "debug | info | warning | error"),
    ("drift_window", int, "decisions in the deferral-rate drift window (default 1000)"),
    ("drift_alpha", float, "flag drift when the binomial p-value is below this (default 0.001)"),
    # the feedback loop (serve/loop): recording is on with a state dir or a database URL
    ("state_dir", str, "record every decision in SQLite under this folder (review queue, live risk)"),
    ("database_url", str, "postgresql://… decision store shared by several replicas"),
    ("audit_rate", float, "probability a sample is drawn for audit (default 0.01)"),
    ("store_inputs", str, "true: keep decoded inputs for reviewers (default false)"),
    ("live_delta", float, "level of the anytime-valid live-risk bound (default 0.05)"),
    ("review_ttl_s", float, "review items expire after this many seconds (default 7 days)"),
    ("reviewer_key", str, "Bearer key for the review API (besides the api/admin keys)"),
    ("review_webhook_secret", str, "enable POST /v1/review/labelstudio with this shared secret"),
]


def register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve every model in a repository over HTTP (v1 + KServe v2)",
                       description="Serve models/<name>/<version>/{model.onnx,calibration.json}. "
                       f"Every flag can also be set as {ENV_PREFIX}<FLAG> (flags win).")
    p.add_argument("model_repository", nargs="?", default=None,
                   help="model repository folder (default: models, or $ABSTAIN_MODEL_REPOSITORY)")
    for name, typ, help_ in _FLAGS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None,
                       help=f"{help_}  [env {ENV_PREFIX}{name.upper()}]")
    p.set_defaults(handler=_serve)


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            why = "is already in use" if err.errno == errno.EADDRINUSE else f"cannot be bound ({err})"
            raise SettingsError(f"{host}:{port} {why}: pass another --port or stop the other "
                                "server") from None


def preflight(settings: ServerSettings) -> list[Any]:
    """Load every version once to refuse a bad start with a one-line reason.

    The single-worker server adopts these loaded versions (see ``create_app(preloaded=...)``);
    worker processes (``--workers N``) load their own.
    """
    from serve.repository import load_version, scan
    from serve.runtime import providers_for

    if settings.device == "cuda":
        providers_for("cuda")                     # raises with the fix when CUDA is not installed
    found = scan(settings.model_repository)
    if not found:
        raise SettingsError(
            f"no model in {str(settings.model_repository)!r}: expected "
            "<name>/<version>/{model.onnx,calibration.json} (version a positive integer). Train "
            "and export one (`abstain train`, `abstain export`, `abstain calibrate`)")
    loaded, failed = [], {}
    for (name, version), d in found.items():
        try:
            loaded.append(load_version(d, name, version, settings.device,
                                       settings.intra_op_threads, (1,)))
        except AbstainError as err:
            failed[f"{name}/{version}"] = str(err)
    if not loaded:
        raise SettingsError("no servable model: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return loaded


def curl_example(settings: ServerSettings, loaded: list[Any]) -> str:
    """A command that works against this server for the default (or first) model."""
    names = sorted({mv.name for mv in loaded})
    name = DEFAULT_MODEL if DEFAULT_MODEL in names else names[0]
    mv = max((m for m in loaded if m.name == name), key=lambda m: m.version)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}/v1/models/{name}/predict"
    auth = f" -H \"Authorization: Bearer ${ENV_PREFIX}API_KEY\"" if settings.api_key else ""
    if mv.preprocessing.get("kind") == "image":
        return f"curl -s {url}{auth} -F file=@image.png -F top_k=3"
    n = 1
    for d in mv.model.input_shape:
        n *= d
    body = json.dumps({"instances": [[0.0] * n], "top_k": 3}, separators=(",", ":"))
    return f"curl -s {url}{auth} -H 'Content-Type: application/json' -d '{body}'"


def _serve(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name, _, _ in _FLAGS}
    if args.model_repository is not None:
        overrides["model_repository"] = Path(args.model_repository)
    settings = load_settings(**overrides)
    _check_port(settings.host, settings.port)
    loaded = preflight(settings)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"abstain serve {settings.model_repository}")
    for col in ("model", "version", "provider", "score", "threshold", "target risk", "coverage"):
        table.add_column(col)
    for mv in loaded:
        c = mv.calibration
        table.add_row(mv.name, str(mv.version), mv.model.provider, c.score,
                      "defer all" if c.threshold is None else f"{c.threshold:.4g}",
                      f"{c.target_risk:g}", f"{c.coverage:.3f}")
    console = Console(stderr=True)
    console.print(table)
    console.print(f"try: {curl_example(settings, loaded)}", soft_wrap=True, highlight=False)

    import uvicorn

    common = {"host": settings.host, "port": settings.port, "log_level": settings.log_level,
              "timeout_graceful_shutdown": max(30, int(settings.request_timeout_s) + 5),
              "access_log": False}
    if settings.workers > 1:
        os.environ.update(settings.env())
        from serve.monitoring import MULTIPROC_ENV, setup_multiprocess

        # Workers share metric files here; /metrics on any worker aggregates all of them.
        setup_multiprocess(os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="abstain-metrics-"))
        uvicorn.run("serve.app:create_app_from_env", factory=True, workers=settings.workers,
                    **common)
        return 0
    from serve.app import create_app

    uvicorn.run(create_app(settings, preloaded=loaded), **common)   # no second load
    return 0
