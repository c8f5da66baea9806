"""The control plane: health, metadata, statistics, admin, metrics and the API docs (FastAPI).

Everything that is not inference lives here; inference is the data plane's (``serve/server/dataplane``).
The OpenAPI document describes both: the data plane's paths are added to it from
:data:`INFERENCE_PATHS`, so every endpoint is documented while each has exactly one route.
Health answers say only ready / not ready unless the caller holds the API key.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from serve import __version__
from serve.errors import AbstainError
from serve.monitoring.monitor import Monitor
from serve.server.dataplane.admit import check_key, key_ok
from serve.server.docs_ui import install_docs
from serve.server.error_answers import http_answer, record
from serve.server.model_version import ModelVersion
from serve.server.protocol import RequestError, v2
from serve.server.protocol import schemas as S
from serve.server.repository import ModelRepository, valid_name
from serve.server.settings import Keys

JSON = "application/json"
_E = {c: {"model": S.ErrorBody} for c in (400, 401, 404, 413, 415, 422, 503, 504)}
_PREFIXES = ("/{p}/models/{{model_name}}", "/{p}/models/{{model_name}}/versions/{{model_version}}")


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, JSON)


def error_json(msg: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": msg}, status, headers)


def create_control(*, keys: Keys, metrics_port: int | None, repo: ModelRepository,
                   monitor: Monitor, lifespan: Any) -> FastAPI:
    """The FastAPI app of everything but inference; ``keys`` guard health details, admin and
    ``/metrics`` (served on ``metrics_port`` instead when one is set)."""
    app = FastAPI(title="abstain", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Selective prediction: every prediction is accepted "
                  "or deferred against a certified threshold.")
    api_key, admin_key, metrics_key = keys.api, keys.admin, keys.metrics

    def lookup(request: Request, name: str, version: str | None) -> ModelVersion:
        if not valid_name(name):
            raise RequestError(f"no model named {name[:64]!r}; model names match "
                               "[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", 404, "unknown_model")
        mv = repo.get(name, version)
        request.state.model, request.state.version = mv.name, str(mv.version)
        return mv

    @app.exception_handler(AbstainError)
    async def abstain_error(request: Request, err: AbstainError) -> Response:
        record(monitor, err, getattr(request.state, "model", ""),
               getattr(request.state, "version", ""))
        status, body, headers = http_answer(err)
        return Response(body, status, headers, JSON)

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

    # ------------------------------------------------------------------ health
    def readiness(request: Request) -> Response:
        ok = repo.ready and bool(repo.versions())
        body: dict[str, Any] = {"status": "ready" if ok else "not ready", "ready": ok}
        if key_ok(request.headers.get("authorization", ""), api_key):
            body["models"] = [{"name": mv.name, "version": str(mv.version),
                               "provider": mv.model.provider} for mv in repo.versions()]
        return json_response(body, 200 if ok else 503)

    @app.get("/healthz", response_model=S.Health, tags=["health"])
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", response_model=S.Health, tags=["health"], responses={503: {"model": S.Health}})
    async def readyz(request: Request) -> Response:
        return readiness(request)

    @app.get("/v2/health/live", response_model=S.Health, tags=["v2"])
    async def v2_live() -> Response:
        return json_response({"status": "live"})

    @app.get("/v2/health/ready", response_model=S.Health, tags=["v2"],
             responses={503: {"model": S.Health}})
    async def v2_ready(request: Request) -> Response:
        return readiness(request)

    @app.get("/metrics", tags=["monitoring"], response_class=Response)
    async def metrics(request: Request) -> Response:
        if metrics_port:
            return error_json(f"metrics are served on port {metrics_port} "
                              "(--metrics-port)", 404)
        check_key(request.headers.get("authorization", ""), metrics_key, "metrics key")
        body, ctype = monitor.render()
        return Response(body, 200, media_type=ctype)

    # ------------------------------------------------------------------ v2 metadata
    @app.get("/v2", response_model=S.V2ServerMetadata, tags=["v2"])
    async def v2_server() -> Response:
        return json_response({"name": "abstain", "version": __version__,
                              "extensions": ["binary_tensor_data", "statistics", "model_repository"]})

    for prefix in _PREFIXES:
        prefix = prefix.format(p="v2")

        @app.get(prefix, response_model=S.V2ModelMetadata, tags=["v2"], responses=_E)
        async def v2_metadata(request: Request, model_name: str,
                              model_version: str | None = None) -> Response:
            check_key(request.headers.get("authorization", ""), api_key)
            return json_response(metadata(repo, lookup(request, model_name, model_version)))

        @app.get(prefix + "/ready", response_model=S.ModelReady, tags=["v2"], responses=_E)
        async def v2_model_ready(request: Request, model_name: str,
                                 model_version: str | None = None) -> Response:
            check_key(request.headers.get("authorization", ""), api_key)
            mv = lookup(request, model_name, model_version)
            return json_response({"name": mv.name, "version": str(mv.version), "ready": repo.ready})

        @app.get(prefix + "/stats", tags=["v2"], responses=_E)
        async def v2_stats(request: Request, model_name: str,
                           model_version: str | None = None) -> Response:
            check_key(request.headers.get("authorization", ""), api_key)
            mv = lookup(request, model_name, model_version)
            assert mv.batcher is not None
            return json_response({"model_stats": [{"name": mv.name, "version": str(mv.version),
                                                   "queue_depth": mv.batcher.queue_depth,
                                                   **mv.batcher.stats.as_dict()}]})

    # ------------------------------------------------------------------ v1 listing and admin
    @app.get("/v1/models", tags=["v1"])
    async def v1_models(request: Request) -> Response:
        check_key(request.headers.get("authorization", ""), api_key)
        return json_response({"models": [mv.summary() for mv in repo.versions()]})

    @app.post("/v1/admin/reload", tags=["admin"], responses=_E)
    async def admin_reload(request: Request) -> Response:
        if admin_key is None:
            raise RequestError("admin endpoints are off: start the server with --admin-key-file "
                               "or ABSTAIN_ADMIN_KEY to enable them", 404, "admin_off")
        check_key(request.headers.get("authorization", ""), admin_key, "admin key")
        report = await repo.reload()
        return json_response(report.as_dict())

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes)
            comps = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in (*S.REQUEST_MODELS, S.V1PredictResponse, S.V2InferResponse, S.ErrorBody):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                comps.update(schema.pop("$defs", {}))
                comps[model.__name__] = schema
            doc["paths"].update(inference_paths())
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    install_docs(app)                 # Swagger UI from the package: no CDN
    return app


def metadata(repo: ModelRepository, mv: ModelVersion) -> dict[str, Any]:
    """The v2 model metadata, with abstain's outputs, calibration and provider."""
    k = len(mv.class_names)
    dt = v2.v2_datatype(mv.model.input_dtype)
    cascade = getattr(mv, "kind", "model") == "cascade"       # serve/server/cascade.py
    extra = [{"name": "stage", "datatype": "INT32", "shape": [-1]}] if cascade else []
    stages = {"stages": mv.summary()["stages"]} if cascade else {}
    return {"name": mv.name, "versions": [str(v) for v in sorted(repo.models[mv.name])],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": mv.model.input_name, "datatype": dt,
                        "shape": [-1, *mv.model.input_shape]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, k]},
                        {"name": "label", "datatype": "INT64", "shape": [-1]},
                        {"name": "score", "datatype": "FP64", "shape": [-1]},
                        {"name": "reject", "datatype": "BOOL", "shape": [-1]},
                        {"name": "probabilities", "datatype": "FP64", "shape": [-1, k]},
                        {"name": "class_name", "datatype": "BYTES", "shape": [-1]}, *extra],
            "provider": mv.model.provider, "class_names": mv.class_names,
            "calibration": mv.summary()["calibration"], "version": str(mv.version),
            "preprocessing": mv.preprocessing, "model_sha256": mv.model.sha256, **stages}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def inference_paths() -> dict[str, Any]:
    """OpenAPI path items of the data plane's endpoints (served by serve/server/rest.py)."""
    errors = {str(c): {"description": "error", "content": {JSON: {"schema": _ref("ErrorBody")}}}
              for c in (400, 401, 404, 413, 415, 422, 503, 504)}
    params = [{"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}]
    vparam = {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}}
    paths: dict[str, Any] = {}
    for i, template in enumerate(_PREFIXES):
        ps = params + ([vparam] if i else [])
        paths[template.format(p="v1") + "/predict"] = {"post": {
            "tags": ["v1"], "summary": "Predict, with an accept/defer decision per instance",
            "operationId": f"v1_predict{'_version' if i else ''}", "parameters": [
                *ps, {"name": "top_k", "in": "query", "required": False,
                      "schema": {"type": "integer", "minimum": 0}}],
            "requestBody": {"required": True, "content": {
                JSON: {"schema": _ref("V1PredictRequest")},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "top_k": {"type": "integer"}}}},
                "image/png": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": {"description": "predictions", "content": {
                JSON: {"schema": _ref("V1PredictResponse")}}}, **errors}}}
        paths[template.format(p="v2") + "/infer"] = {"post": {
            "tags": ["v2"], "summary": "Open Inference Protocol v2 infer (JSON or binary tensors)",
            "operationId": f"v2_infer{'_version' if i else ''}", "parameters": ps,
            "requestBody": {"required": True, "content": {
                JSON: {"schema": _ref("V2InferRequest")}}},
            "responses": {"200": {"description": "outputs", "content": {
                JSON: {"schema": _ref("V2InferResponse")},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                **errors}}}
    return paths
