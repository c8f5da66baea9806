"""``abstain serve [MODEL_REPOSITORY]``: validate settings, pre-flight the models, run uvicorn."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from serve.errors import AbstainError
from serve.server.settings import (
    ENV_PREFIX,
    ServerSettings,
    SettingsError,
    load_settings,
    read_key_file,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "mnist1d-maxsup"
_FLAGS: list[tuple[str, type, str]] = [
    ("host", str, "interface to bind, 0.0.0.0 for all (default 127.0.0.1)"),
    ("port", int, "TCP port (default 8000)"),
    ("workers", int, "uvicorn worker processes (default 1)"),
    ("device", str, "auto | cpu | cuda (default auto; cuda refuses to start without an active "
               "CUDA provider)"),
    ("max_batch_size", int, "samples per coalesced session run (default 64)"),
    ("max_queue_size", int, "samples queued per model before 503 (default 2048)"),
    ("overload_queue_ms", float, "under sustained overload keep only this many ms of work queued, "
     "e.g. 5 (default 0 = the whole queue)"),
    ("max_instances", int, "samples per request before 413 (default 1024)"),
    ("max_body_bytes", int, "request body limit in bytes (default 16 MiB)"),
    ("request_timeout_s", float, "per-request deadline in seconds (default 30; header X-Deadline-Ms)"),
    ("poll_interval_s", float, "repository poll period for hot reload, 0 = off (default 10)"),
    ("intra_op_threads", str, "onnxruntime threads: auto (batches on 1 or all cores, measured at "
     "warm-up; a request alone on all cores; default), 0 = onnxruntime's default, or a number"),
    ("max_inflight", int, "inference requests in flight before 503 (default 4096)"),
    ("max_body_buffer_bytes", int, "body bytes being read, all requests, before 503 (default 256 MiB)"),
    ("max_header_bytes", int, "request line + headers before 431 (default 64 KiB)"),
    ("header_timeout_s", float, "seconds to receive the headers before 408 (default 10)"),
    ("body_timeout_s", float, "seconds to receive a body before 408 (default 30)"),
    ("keep_alive_s", float, "seconds an idle keep-alive connection stays open (default 5)"),
    ("max_image_pixels", int, "decoded image pixels per request before 413 (default 50M)"),
    ("max_image_pixels_per_s", int, "decoded image pixels per second before 503 (default 200M)"),
    ("shed_hold_s", float, "after a 503, seconds before that connection is read again (default 1 = the minimum Retry-After)"),
    ("on_probe_mismatch", str, "refuse | warn: a version whose probe batch gives other logits or "
     "decisions than calibration saw (another provider or precision) is refused (default)"),
    ("metrics_port", int, "serve /metrics on this port only (default: beside the API)"),
    ("grpc_port", int, "also serve the KServe v2 gRPC protocol on this port (default: off)"),
    ("api_key", str, "DISCOURAGED (visible in ps): use --api-key-file or ABSTAIN_API_KEY "
     "(default: none)"),
    ("admin_key", str, "DISCOURAGED (visible in ps): use --admin-key-file or ABSTAIN_ADMIN_KEY "
     "(default: none, /v1/admin off)"),
    ("log_level", str, "debug | info | warning | error (default info)"),
    ("drift_window", int, "decisions in the deferral-rate drift window (default 1000)"),
    ("drift_alpha", float, "flag drift when the binomial p-value is below this (default 0.001)"),
    ("shift_alpha", float, "label-free shift monitor: probability of any false alarm within "
     "--shift-horizon stationary predictions (default 0.01)"),
    ("shift_horizon", int, "predictions --shift-alpha covers (default 1000000)"),
    # the feedback loop (serve/feedback): recording is on with a state dir or a database URL
    ("state_dir", str, "record every decision in SQLite under this folder (review queue, live risk; default: off)"),
    ("database_url", str, "postgresql://… decision store shared by several replicas (default: off)"),
    ("audit_rate", float, "probability a sample is drawn for audit (default 0.01)"),
    ("store_inputs", str, "true: keep decoded inputs for reviewers (default false)"),
    ("live_delta", float, "level of the anytime-valid live-risk bound (default 0.05)"),
    ("review_ttl_s", float, "review items expire after this many seconds (default 7 days)"),
    ("retention_days", float, "delete records older than this many days unless audited or labelled "
     "for a calibration still served, or pending review (default: keep all)"),
    ("retention_max_rows", int, "keep at most this many records nobody reviews (accepted, not "
     "audited; expired); the oldest go (default: no cap)"),
    ("reviewer_key", str, "DISCOURAGED (visible in ps): use --reviewer-key-file or "
     "ABSTAIN_REVIEWER_KEY (default: none; the review API is off without a reviewer or admin key)"),
    ("review_webhook_secret", str, "DISCOURAGED (visible in ps): use --review-webhook-secret-file "
     "or ABSTAIN_REVIEW_WEBHOOK_SECRET (default: none, the Label Studio webhook off)"),
    ("max_control_body_bytes", int, "body limit of /v1/feedback and the Label Studio webhook, "
     "checked after the key (default 1 MiB)"),
    ("on_risk_alarm", str, "keep | defer: while a served calibration's live risk alarms (the "
     "bound's lower end above r*, or the change detector fired), keep serving it or defer every "
     "prediction until a new calibration loads (default keep; fallback is refused: no stricter "
     "threshold is certified in advance yet)"),
    ("change_arl", float, "risk-change detector: average run length to a false alarm, in "
     "labelled audits (default 100000)"),
]

# Every secret: its --X-file flag (and ABSTAIN_X_FILE) reads it from a file, never from ps.
_SECRET_FILES = [("api_key", "the Bearer key of inference clients (predict, metadata)"),
                 ("admin_key", "the admin Bearer key (/v1/admin/*, the review API)"),
                 ("metrics_key", "the Bearer key for /metrics"),
                 ("reviewer_key", "the reviewers' Bearer key (review queue, labels, live risk)"),
                 ("review_webhook_secret", "the Label Studio webhook's shared secret"),
                 ("database_url", "the postgresql:// URL with its password")]


def register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve every model in a repository over HTTP (v1 + KServe v2)",
                       description="Serve models/<name>/<version>/{model.onnx,calibration.json}. "
                       f"Every flag can also be set as {ENV_PREFIX}<FLAG> (flags win).")
    p.add_argument("model_repository", nargs="?", default=None,
                   help="model repository folder (default: models, or $ABSTAIN_MODEL_REPOSITORY)")
    for name, typ, help_ in _FLAGS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None,
                       help=f"{help_}  [env {ENV_PREFIX}{name.upper()}]")
    p.add_argument("--follow-symlinks", dest="follow_symlinks", action="store_true", default=None,
                   help="serve version directories that resolve outside the repository (off: "
                   f"they are skipped with a warning)  [env {ENV_PREFIX}FOLLOW_SYMLINKS]")
    p.add_argument("--open-review-api", dest="open_review_api", action="store_true",
                   default=None, help="serve the review API (queues, stored inputs, labels) to "
                   "anyone who can reach the server, without a key; start-up warns (default: off, "
                   f"the review API needs the reviewer or admin key)  [env {ENV_PREFIX}OPEN_REVIEW_API]")
    for name, what in _SECRET_FILES:
        env = ENV_PREFIX + name.upper()
        p.add_argument(f"--{name.replace('_', '-')}-file", dest=f"{name}_file", default=None,
                       metavar="PATH", help=f"read {what} from PATH (first line; default: none)  "
                       f"[env {env}_FILE, or the value in {env}]")
    p.set_defaults(handler=_serve)


def _check_port(host: str, port: int, flag: str = "--port") -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            why = "is already in use" if err.errno == errno.EADDRINUSE else f"cannot be bound ({err})"
            raise SettingsError(f"{host}:{port} {why}: pass another {flag} or stop the other "
                                "server") from None


def preflight(settings: ServerSettings) -> list[Any]:
    """Load every version once to refuse a bad start with a one-line reason.

    The single-worker server adopts these loaded versions (see ``create_app(preloaded=...)``);
    worker processes (``--workers N``) load their own.
    """
    from serve.server.cascade import is_cascade_dir
    from serve.server.model_version import load_version
    from serve.server.repository_files import scan
    from serve.server.runtime import providers_for

    if settings.device == "cuda":
        providers_for("cuda")                     # raises with the fix when CUDA is not installed
    found = scan(settings.model_repository, settings.follow_symlinks)
    if not found:
        raise SettingsError(
            f"no model in {str(settings.model_repository)!r}: expected "
            "<name>/<version>/{model.onnx,calibration.json} (version a positive integer). Train "
            "and export one (`abstain train`, `abstain export`, `abstain calibrate`)")
    loaded, failed = [], {}
    for (name, version), d in found.items():
        if is_cascade_dir(d):                      # built on its stages by the repository
            continue
        try:
            loaded.append(load_version(d, name, version, settings.device,
                                       settings.intra_op_threads, (1,), settings.on_probe_mismatch))
        except Exception as err:                   # any failure refuses that version only
            failed[f"{name}/{version}"] = str(err) if isinstance(err, AbstainError) else \
                f"{type(err).__name__}: {err}"
    if not loaded:
        raise SettingsError("no servable model: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return loaded


def _store_location(settings: ServerSettings) -> str:
    """Where decisions go, without a database password."""
    from urllib.parse import urlsplit, urlunsplit

    url = settings.feedback.location
    if not isinstance(url, str):
        return f"SQLite under {settings.state_dir}"
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def loop_lines(settings: ServerSettings) -> list[str]:
    """Start-up lines saying whether the feedback loop records, audits and serves the review API."""
    if settings.state_dir is None and settings.database_url is None:
        why = "(no --state-dir or --database-url)"
        return [f"decision store: off {why}: decisions are not recorded",
                f"audits: off {why}",
                f"review API: off {why}: no /v1/review/queue, /v1/feedback, /v1/monitor/risk"]
    keys = [name for name, value in (("reviewer", settings.reviewer_key),
                                     ("admin", settings.admin_key)) if value is not None]
    where = "/v1/review/queue, /v1/feedback, /v1/requests/ID, /v1/monitor/risk"
    if settings.open_review_api:
        review = (f"OPEN TO ANYONE who can reach the server at {where} (--open-review-api): "
                  "audited samples, stored inputs and labels need no key")
    elif keys:
        review = (f"on at {where}, with the {' or '.join(keys)} key as Bearer (the API key is "
                  "refused: clients only predict)")
    else:
        review = ("off (no --reviewer-key-file or --admin-key-file; --open-review-api opens it "
                  "to anyone)")
    webhook = ("on" if settings.review_webhook_secret is not None
               else "off (no --review-webhook-secret-file)")
    rate = settings.audit_rate
    audits = ("off (--audit-rate 0)" if rate == 0 else
              f"{rate * 100:g}% of samples (uniform, independent of the decision) queued for review "
              f"(--audit-rate {rate:g}); on a live-risk alarm: "
              + ("defer every prediction until a new calibration loads" if
                 settings.on_risk_alarm == "defer" else "keep serving")
              + f" (--on-risk-alarm {settings.on_risk_alarm})")
    kept = [f"rows nobody needs deleted after {settings.retention_days:g} days"
            if settings.retention_days is not None else "",
            f"at most {settings.retention_max_rows} rows nobody reviews"
            if settings.retention_max_rows is not None else ""]
    retention = "; ".join(k for k in kept if k) or "kept until deleted (no --retention-days)"
    return [f"decision store: {_store_location(settings)} (every decision recorded"
            f"{', inputs kept for review items' if settings.store_inputs else ''}; {retention})",
            f"audits: {audits}",
            f"review API: {review}; Label Studio webhook {webhook}"]


def _secrets(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    """Put each secret given as a file (``--X-file`` or ``ABSTAIN_X_FILE``) into ``overrides``;
    warn about each given on the command line, where every user of the machine can read it."""
    for name, _ in _SECRET_FILES:
        flag, env = f"--{name.replace('_', '-')}", f"{ENV_PREFIX}{name.upper()}"
        path = getattr(args, f"{name}_file", None)
        source = f"{flag}-file"
        if path is None and os.environ.get(f"{env}_FILE"):
            path, source = os.environ[f"{env}_FILE"], f"{env}_FILE"
        value = overrides.get(name)
        if path is not None:
            if value is not None:
                raise SettingsError(f"{flag} and {source} both given: keep {flag}-file")
            overrides[name] = read_key_file(path, source)
        elif value is not None and (name != "database_url" or _has_password(value)):
            log.warning("%s on the command line is visible to every user of this machine (ps, "
                        "shell history): prefer %s-file or %s", flag, flag, env)


def _has_password(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password is not None
    except ValueError:
        return True


def _serve(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name, _, _ in _FLAGS}
    overrides["follow_symlinks"] = args.follow_symlinks
    overrides["open_review_api"] = args.open_review_api
    if args.model_repository is not None:
        overrides["model_repository"] = Path(args.model_repository)
    _secrets(args, overrides)
    settings = load_settings(**overrides)
    _check_port(settings.host, settings.port)
    if settings.grpc_port is not None:
        try:
            import grpc  # noqa: F401
        except ImportError:
            raise SettingsError("--grpc-port needs grpcio: pip install 'abstain[cpu]' (or [gpu]), "
                                "or leave --grpc-port unset") from None
        if settings.grpc_port and settings.workers == 1:  # workers share it (SO_REUSEPORT)
            _check_port(settings.host, settings.grpc_port, "--grpc-port")
    loaded = preflight(settings)

    from rich.table import Table

    from serve.cli.console import make_console
    from serve.cli.examples import banner_lines

    table = Table(title=f"abstain serve {settings.model_repository}")
    for col in ("model", "version", "provider", "threads", "score", "threshold", "target risk",
                "coverage"):
        table.add_column(col)
    for mv in loaded:
        c = mv.calibration
        table.add_row(mv.name, str(mv.version), mv.model.provider, mv.threads, c.score,
                      "defer all" if c.threshold is None else f"{c.threshold:.4g}",
                      f"{c.target_risk:g}", f"{c.coverage:.3f}")
    console = make_console(stderr=True)
    console.print(table)
    for line in [*loop_lines(settings), *banner_lines(settings.host, settings.port, loaded, bool(settings.api_key))]:
        console.print(line, soft_wrap=True, highlight=False, markup=False)

    import uvicorn

    from serve.server.http_protocol import uvicorn_options

    common = {"host": settings.host, "port": settings.port, "log_level": settings.log_level,
              "timeout_graceful_shutdown": max(30, int(settings.request_timeout_s) + 5),
              "access_log": False, **uvicorn_options(settings.limits)}
    if settings.workers > 1:
        os.environ.update(settings.env())
        from serve.monitoring.monitor import MULTIPROC_ENV, setup_multiprocess

        # Workers share metric files here; /metrics on any worker aggregates all of them.
        setup_multiprocess(os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="abstain-metrics-"))
        uvicorn.run("serve.server.app:create_app_from_env", factory=True, workers=settings.workers,
                    **common)
        return 0
    from serve.server.app import create_app

    uvicorn.run(create_app(settings, preloaded=loaded), **common)   # no second load
    return 0
