"""The ASGI app: routes wired to the repository, batcher, protocols and monitor.

``create_app(settings)`` is the factory; ``create_app_from_env`` is what uvicorn worker processes
import (settings travel as ``ABSTAIN_*`` variables). Hot-path rule: between ``repository.get`` and
``batcher.submit`` there is no ``await``, so a hot reload can never slip in between and a request
always finishes on the version it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from serve import __version__
from serve.asgi import (
    DEADLINE_HEADER,
    FAST_RE,
    IMAGE_TYPES,
    JSON,
    Guard,
    error_json,
    is_json,
    json_response,
)
from serve.batching import Batcher
from serve.errors import AbstainError
from serve.monitoring import Monitor
from serve.protocol import RequestError, check_batch, v1, v2
from serve.protocol import schemas as S
from serve.protocol.images import decode_image, image_spec
from serve.repository import ModelRepository, ModelVersion
from serve.settings import ServerSettings, load_settings

log = logging.getLogger("serve.app")

_E = {c: {"model": S.ErrorBody} for c in (400, 401, 404, 413, 415, 422, 503, 504)}


def create_app(settings: ServerSettings | None = None, monitor: Monitor | None = None,
               preloaded: list[ModelVersion] | None = None) -> FastAPI:
    """Build the server for ``settings`` (defaults: environment variables).

    ``preloaded``: versions already loaded (by ``abstain serve``'s pre-flight) that the first
    repository scan adopts instead of loading them again, if their files did not change.
    """
    settings = settings or load_settings()
    monitor = monitor or Monitor(settings.drift_window, settings.drift_alpha)

    def make_batcher(mv: ModelVersion) -> Batcher:
        name, ver = mv.name, str(mv.version)

        def on_batch(size: int, waits: list[float], inference_s: float, out: dict) -> None:
            monitor.batch(name, ver, size, waits, inference_s)
            monitor.decisions(name, ver, out["label"], mv.class_names, out["score"], out["reject"])

        return Batcher(mv.infer, settings.max_batch_size, settings.max_queue_size, on_batch,
                       lambda depth: monitor.queue_depth(name, ver, depth), name=f"{name}/{ver}")

    repo = ModelRepository(settings.model_repository, monitor, settings.device,
                           settings.intra_op_threads, settings.warmup_batch_sizes, make_batcher,
                           preloaded)

    async def poll() -> None:
        while True:
            await asyncio.sleep(settings.poll_interval_s)
            try:
                await repo.reload()
            except Exception:
                log.exception("repository poll failed (will retry)")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        report = await repo.reload()
        if not repo.versions():
            log.error("no servable model in %s (%s); not ready until one loads",
                      settings.model_repository, report.failed or "empty")
        for mv in repo.versions():
            log.info("ready: %s/%s on %s", mv.name, mv.version, mv.model.provider)
        # Started: readiness is now "at least one model is live", so a repository that fills
        # later (poll or admin reload) makes the server ready without a restart.
        repo.ready = True
        poller = asyncio.create_task(poll()) if settings.poll_interval_s > 0 else None
        yield
        repo.ready = False
        if poller:
            poller.cancel()
        await repo.close()
        monitor.close()

    app = FastAPI(title="abstain", version=__version__, lifespan=lifespan,
                  description="Selective prediction: every prediction is accepted or deferred "
                  "against a certified threshold.")
    app.state.settings, app.state.monitor, app.state.repository = settings, monitor, repo

    api_key, admin_key = settings.api_key_value, settings.admin_key_value

    def check_key(request: Request | Headers, key: str | None, what: str) -> None:
        if key is None:
            return
        headers = request if isinstance(request, Headers) else request.headers
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), key.encode()):
            raise RequestError(f"missing or wrong API key: send 'Authorization: Bearer <{what}>'",
                               401, "unauthorized", {"WWW-Authenticate": "Bearer"})

    def deadline(headers: Headers) -> float:
        raw = headers.get(DEADLINE_HEADER)
        timeout = settings.request_timeout_s
        if raw is not None:
            try:
                timeout = float(raw) / 1000.0
            except ValueError:
                timeout = -1.0
            if not (0 < timeout <= 3600):
                raise RequestError(f"X-Deadline-Ms must be a number of milliseconds in (0, 3600000]; "
                                   f"got {raw!r}", 400, "bad_deadline")
        return time.monotonic() + timeout

    def lookup(request: Request | dict, name: str, version: str | None) -> ModelVersion:
        mv = repo.get(name, version)
        state = request if isinstance(request, dict) else request.scope.setdefault("state", {})
        state["model"], state["version"] = mv.name, str(mv.version)
        return mv

    async def run(mv: ModelVersion, x: Any, headers: Headers) -> dict:
        assert mv.batcher is not None
        return await mv.batcher.result(x, deadline(headers))

    def error_response(err: AbstainError, model: str, version: str) -> Response:
        status = int(getattr(err, "status", 422))
        monitor.error(getattr(err, "reason", type(err).__name__), model, version)
        headers = dict(getattr(err, "headers", {}) or {})
        if status in (503, 504):
            monitor.shed(model, version, status)
            if status == 503:
                headers.setdefault("Retry-After", "1")
        return error_json(str(err), status, headers)

    async def v2_core(headers: Headers, state: dict, body: bytes, name: str,
                      version: str | None) -> Response:
        """v2 infer (JSON or binary) after the body is read: parse, batch, encode."""
        mv = lookup(state, name, version)     # no await from here to submit
        m = mv.model
        req = v2.parse_infer(body, headers.get(v2.HEADER), m.input_name, m.input_shape,
                             m.input_dtype, settings.max_instances)
        out = await run(mv, req.x, headers)
        content, hlen = v2.encode_infer(out, mv.class_names, mv.name, str(mv.version),
                                        req.id or state["request_id"], req.outputs)
        if hlen is None:
            return Response(content, 200, media_type=JSON)
        return Response(content, 200, {v2.HEADER: str(hlen)}, "application/octet-stream")

    async def v1_json_core(headers: Headers, state: dict, body: bytes, name: str,
                           version: str | None) -> Response:
        mv = lookup(state, name, version)     # no await from here to submit
        x, top_k, rid = v1.parse_request(body, mv.model.input_shape, mv.model.input_dtype,
                                         len(mv.class_names), settings.max_instances)
        out = await run(mv, x, headers)
        return json_response({"id": rid or state["request_id"], "model_name": mv.name,
                      "model_version": str(mv.version),
                      "predictions": v1.encode_predictions(out, mv.class_names, top_k)})

    def fast_route(scope: dict, raw_headers: dict[bytes, bytes]) -> Any:
        """(endpoint label, handler) for a JSON/binary inference POST, or None for FastAPI.

        Same checks, errors and metrics as the FastAPI routes below, minus the framework:
        FastAPI's routing and dependency resolution cost more than the whole inference.
        """
        if scope["method"] != "POST":
            return None
        match = FAST_RE.match(scope["path"])
        if match is None or (match[1] == "v1") != (match[4] == "predict"):
            return None
        ctype = raw_headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        v1_route = match[1] == "v1"
        if v1_route and not is_json(ctype):
            return None                       # forms, images, 415: FastAPI's route
        if not v1_route and ctype.startswith(("multipart/", "application/x-www-form-urlencoded")):
            return None
        name, version = match[2], match[3]
        endpoint = (f"/{match[1]}/models/{{model_name}}"
                    + ("/versions/{model_version}" if version is not None else "")
                    + ("/predict" if v1_route else "/infer"))
        core = v1_json_core if v1_route else v2_core

        async def handler(read_body: Any) -> Response | None:
            state = scope["state"]
            headers = Headers(scope=scope)
            try:
                check_key(headers, api_key, "api key")
                body = await read_body()
                return await core(headers, state, body, name, version)
            except AbstainError as err:
                return error_response(err, state.get("model", ""), state.get("version", ""))
            except ClientDisconnect:
                return None
            except Exception as err:
                log.exception("internal error (a bug in abstain): %s", err)
                monitor.error("internal")
                return error_json("internal server error (a bug; it has been logged)", 500)

        return endpoint, handler

    app.add_middleware(Guard, limit=settings.max_body_bytes, monitor=monitor, fast=fast_route)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(AbstainError)
    async def abstain_error(request: Request, err: AbstainError) -> Response:
        return error_response(err, getattr(request.state, "model", ""),
                              getattr(request.state, "version", ""))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, err: RequestValidationError) -> Response:
        msgs = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in err.errors()]
        return error_json("invalid request: " + "; ".join(msgs), 422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> Response:
        msg = err.detail if isinstance(err.detail, str) else str(err.detail)
        if err.status_code == 404:
            msg = "no such endpoint; see /docs for the API"
        elif err.status_code == 405:
            msg = "method not allowed on this endpoint; see /docs for the API"
        return error_json(msg, err.status_code, getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def bug(_: Request, err: Exception) -> Response:
        log.exception("internal error (a bug in abstain): %s", err)
        monitor.error("internal")
        return error_json("internal server error (a bug; it has been logged)", 500)

    # ------------------------------------------------------------------ health
    def readiness() -> Response:
        models = [{"name": mv.name, "version": str(mv.version), "provider": mv.model.provider}
                  for mv in repo.versions()]
        ok = repo.ready and bool(models)
        return json_response({"status": "ready" if ok else "not ready", "ready": ok, "models": models},
                     200 if ok else 503)

    @app.get("/healthz", response_model=S.Health, tags=["health"])
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", response_model=S.Health, tags=["health"], responses={503: {"model": S.Health}})
    async def readyz() -> Response:
        return readiness()

    @app.get("/v2/health/live", response_model=S.Health, tags=["v2"])
    async def v2_live() -> Response:
        return json_response({"status": "live"})

    @app.get("/v2/health/ready", response_model=S.Health, tags=["v2"],
             responses={503: {"model": S.Health}})
    async def v2_ready() -> Response:
        return readiness()

    @app.get("/metrics", tags=["monitoring"], response_class=Response)
    async def metrics() -> Response:
        body, ctype = monitor.render()
        return Response(body, 200, media_type=ctype)

    # ------------------------------------------------------------------ v2 metadata
    @app.get("/v2", response_model=S.V2ServerMetadata, tags=["v2"])
    async def v2_server() -> Response:
        return json_response({"name": "abstain", "version": __version__,
                      "extensions": ["binary_tensor_data", "statistics", "model_repository"]})

    def metadata(mv: ModelVersion) -> dict[str, Any]:
        k = len(mv.class_names)
        dt = v2.v2_datatype(mv.model.input_dtype)
        return {"name": mv.name, "versions": [str(v) for v in sorted(repo.models[mv.name])],
                "platform": "onnxruntime_onnx",
                "inputs": [{"name": mv.model.input_name, "datatype": dt,
                            "shape": [-1, *mv.model.input_shape]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, k]},
                            {"name": "label", "datatype": "INT64", "shape": [-1]},
                            {"name": "score", "datatype": "FP64", "shape": [-1]},
                            {"name": "reject", "datatype": "BOOL", "shape": [-1]},
                            {"name": "probabilities", "datatype": "FP64", "shape": [-1, k]},
                            {"name": "class_name", "datatype": "BYTES", "shape": [-1]}],
                "provider": mv.model.provider, "class_names": mv.class_names,
                "calibration": mv.summary()["calibration"], "version": str(mv.version),
                "preprocessing": mv.preprocessing, "model_sha256": mv.model.sha256}

    for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        @app.get(prefix, response_model=S.V2ModelMetadata, tags=["v2"], responses=_E)
        async def v2_metadata(request: Request, model_name: str,
                              model_version: str | None = None) -> Response:
            check_key(request, api_key, "api key")
            return json_response(metadata(lookup(request, model_name, model_version)))

        @app.get(prefix + "/ready", response_model=S.ModelReady, tags=["v2"], responses=_E)
        async def v2_model_ready(request: Request, model_name: str,
                                 model_version: str | None = None) -> Response:
            mv = lookup(request, model_name, model_version)
            return json_response({"name": mv.name, "version": str(mv.version), "ready": repo.ready})

        @app.get(prefix + "/stats", tags=["v2"], responses=_E)
        async def v2_stats(request: Request, model_name: str,
                           model_version: str | None = None) -> Response:
            check_key(request, api_key, "api key")
            mv = lookup(request, model_name, model_version)
            assert mv.batcher is not None
            return json_response({"model_stats": [{"name": mv.name, "version": str(mv.version),
                                           "queue_depth": mv.batcher.queue_depth,
                                           **mv.batcher.stats.as_dict()}]})

        # -------------------------------------------------------------- v2 infer
        @app.post(prefix + "/infer", tags=["v2"], response_model=None,
                  responses={200: {"model": S.V2InferResponse, "content": {
                      "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                      **_E},
                  openapi_extra={"requestBody": {"required": True, "content": {JSON: {"schema": {
                      "$ref": "#/components/schemas/V2InferRequest"}}}}})
        async def v2_infer(request: Request, model_name: str,
                           model_version: str | None = None) -> Response:
            check_key(request, api_key, "api key")
            ctype = request.headers.get("content-type", "")
            if ctype.startswith(("multipart/", "application/x-www-form-urlencoded")):
                raise RequestError(f"unsupported media type {ctype!r}: v2 infer takes JSON or the "
                                   "binary tensor extension", 415, "unsupported_media")
            body = await request.body()
            return await v2_core(request.headers, request.scope["state"], body, model_name,
                                 model_version)

        # -------------------------------------------------------------- v1 predict
        v1_prefix = prefix.replace("/v2/", "/v1/")

        @app.post(v1_prefix + "/predict", tags=["v1"], response_model=None,
                  responses={200: {"model": S.V1PredictResponse}, **_E},
                  openapi_extra={"requestBody": {"required": True, "content": {
                      JSON: {"schema": {"$ref": "#/components/schemas/V1PredictRequest"}},
                      "multipart/form-data": {"schema": {"type": "object", "properties": {
                          "file": {"type": "string", "format": "binary"},
                          "top_k": {"type": "integer"}}}}}}})
        async def v1_predict(request: Request, model_name: str,
                             model_version: str | None = None) -> Response:
            check_key(request, api_key, "api key")
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype == "multipart/form-data":
                mv, x, top_k, rid = await _images_from_form(request, model_name, model_version)
            elif ctype in IMAGE_TYPES:
                body = await request.body()
                mv = lookup(request, model_name, model_version)
                img = decode_image(body, image_spec(mv.preprocessing, mv.name), "body")
                x = check_batch(img[None], mv.model.input_shape, settings.max_instances, "image")
                top_k, rid = v1.parse_top_k(_int_query(request, "top_k"), len(mv.class_names)), None
            elif is_json(ctype):
                body = await request.body()
                return await v1_json_core(request.headers, request.scope["state"], body,
                                          model_name, model_version)
            else:
                raise RequestError(f"unsupported media type {ctype!r}: send application/json "
                                   '({"instances": [...]}), multipart/form-data with image files, '
                                   "or a PNG/JPEG body", 415, "unsupported_media")
            out = await run(mv, x, request.headers)
            return json_response({"id": rid or request.state.request_id, "model_name": mv.name,
                          "model_version": str(mv.version),
                          "predictions": v1.encode_predictions(out, mv.class_names, top_k)})

    def _int_query(request: Request, key: str) -> int | None:
        raw = request.query_params.get(key)
        if raw is None:
            return None
        if not raw.isdigit():
            raise RequestError(f"{key} must be a non-negative integer; got {raw!r}", 422, "bad_top_k")
        return int(raw)

    async def _images_from_form(request: Request, name: str, version: str | None):
        form = await request.form(max_files=settings.max_instances, max_fields=16)
        files: list[tuple[str, bytes]] = []
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((value.filename or "image", await value.read()))
        raw_k = form.get("top_k")
        await form.close()
        if not files:
            raise RequestError("the form has no file: upload images as -F file=@image.png",
                               422, "bad_image")
        if isinstance(raw_k, str) and not raw_k.strip().isdigit():
            raise RequestError(f"top_k must be a non-negative integer; got {raw_k!r}", 422,
                               "bad_top_k")
        mv = lookup(request, name, version)   # no await from here to submit
        spec = image_spec(mv.preprocessing, mv.name)
        if len(files) > settings.max_instances:
            raise RequestError(f"too many images: {len(files)}, the limit is "
                               f"{settings.max_instances}", 413, "too_many_instances")
        x = np.stack([decode_image(data, spec, fname) for fname, data in files])
        x = check_batch(x, mv.model.input_shape, settings.max_instances, "images")
        top_k = v1.parse_top_k(int(raw_k) if isinstance(raw_k, str) else None, len(mv.class_names))
        return mv, x, top_k, None

    # ------------------------------------------------------------------ v1 listing and admin
    @app.get("/v1/models", tags=["v1"])
    async def v1_models(request: Request) -> Response:
        check_key(request, api_key, "api key")
        return json_response({"models": [mv.summary() for mv in repo.versions()]})

    @app.post("/v1/admin/reload", tags=["admin"], responses=_E)
    async def admin_reload(request: Request) -> Response:
        if admin_key is None:
            raise RequestError("admin endpoints are off: start the server with --admin-key or "
                               "ABSTAIN_ADMIN_KEY to enable them", 404, "admin_off")
        check_key(request, admin_key, "admin key")
        report = await repo.reload()
        return json_response(report.as_dict())

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes)
            comps = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in S.REQUEST_MODELS:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                comps.update(schema.pop("$defs", {}))
                comps[model.__name__] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` / worker processes: settings from ``ABSTAIN_*``."""
    return create_app(load_settings())
