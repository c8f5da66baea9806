"""The review, feedback and live-risk API: a FastAPI router the control plane mounts.

Same auth as inference: when any of the API, admin or reviewer keys is set, a request must carry
``Authorization: Bearer <one of them>``. Handlers are plain ``def`` functions, so FastAPI runs
them in its thread pool and a database call never blocks the event loop. Errors are
``{"error": "..."}`` JSON like the rest of the server.
"""

from __future__ import annotations

import hmac
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from serve.feedback.guard import active_alarms
from serve.feedback.recorder import epoch_info
from serve.feedback.risk import live_risk
from serve.feedback.store import Store


class Feedback(BaseModel):
    request_id: str = Field(min_length=1, max_length=128)
    index: int = Field(0, ge=0)
    label: str | int = Field(description="a class name or class index of the model")
    source: str = Field("api", max_length=64)
    annotator: str | None = Field(None, max_length=128)


def error(msg: str, status: int) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": msg}, status, headers)


def resolve_label(label: str | int, classes: list[str] | None) -> int | str:
    """The class index of ``label``, or an error message naming the allowed classes."""
    allowed = f"one of {classes}" if classes else "a class index"
    if isinstance(label, int) or (isinstance(label, str) and label.isdigit() and not classes):
        i = int(label)
        if classes is None or 0 <= i < len(classes):
            return i
        return f"label index {i} is outside the model's {len(classes)} classes; send {allowed}"
    if classes and label in classes:
        return classes.index(label)
    return f"label {label!r} is not a class of this model; send {allowed}"


def apply_feedback(store: Store, fb: Feedback) -> tuple[int, dict[str, Any]]:
    """Validate and store one label; returns (HTTP status, body). Shared by the API and syncs."""
    rec = store.record(fb.request_id, fb.index)
    if rec is None:
        return 404, {"error": f"no recorded sample {fb.index} of request {fb.request_id!r}; "
                              "labels can only be given to served requests (see the x-request-id header)"}
    classes = epoch_info(store, rec["model"], rec["version"], rec["calibration_sha256"]).get("class_names")
    label = resolve_label(fb.label, classes)
    if isinstance(label, str):
        return 422, {"error": label}
    outcome = store.add_feedback(fb.request_id, fb.index, label, fb.source, fb.annotator)
    if outcome == "conflict":
        return 409, {"error": f"sample {fb.index} of request {fb.request_id!r} already has a "
                              "different label; labels are final (ask an admin to correct the store)"}
    return (201 if outcome == "created" else 200), {
        "request_id": fb.request_id, "index": fb.index, "label": label,
        "label_name": classes[label] if classes else None, "status": outcome}


def _present(row: dict[str, Any], classes: list[str] | None) -> dict[str, Any]:
    def name(i: Any) -> Any:
        return classes[i] if classes and isinstance(i, int) and 0 <= i < len(classes) else i

    out = {"request_id": row["request_id"], "index": row["idx"], "time": row["ts"],
           "model": row["model"], "version": row["version"],
           "calibration_sha256": row["calibration_sha256"], "label": name(row["label"]),
           "score": row["score"], "reject": row["reject"], "review": row["review"],
           "expires": row["expires"]}
    if row.get("topk") is not None:
        out["top_k"] = [{"label": name(c), "probability": p} for c, p in row["topk"]]
    if row.get("input") is not None:
        out["input"] = row["input"]
    if "human_label" in row:
        out["human_label"] = name(row["human_label"])
        out["feedback_source"] = row.get("feedback_source")
        out["annotator"] = row.get("annotator")
    return out


def create_router(store: Store, *, api_key: str | None = None, admin_key: str | None = None,
                  reviewer_key: str | None = None, live_delta: float = 0.05) -> APIRouter:
    """Routes ``/v1/review/queue``, ``/v1/feedback``, ``/v1/requests/{id}``, ``/v1/monitor/risk``."""
    keys = [k.encode() for k in (api_key, admin_key, reviewer_key) if k]
    router = APIRouter(tags=["review"])
    classes_cache: dict[tuple[str, str, str], list[str] | None] = {}

    def classes_of(row: dict[str, Any]) -> list[str] | None:
        key = (row["model"], row["version"], row["calibration_sha256"])
        if key not in classes_cache:
            classes_cache[key] = epoch_info(store, *key).get("class_names")
        return classes_cache[key]

    def denied(request: Request) -> JSONResponse | None:
        if not keys:
            return None
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""
        if any(hmac.compare_digest(token, k) for k in keys):
            return None
        return error("missing or wrong key: send 'Authorization: Bearer <api, admin or reviewer key>'", 401)

    @router.get("/v1/review/queue")
    def review_queue(request: Request, kind: Literal["deferred", "audit"] = "deferred",
                     limit: int = 50, model: str | None = None) -> Any:
        """Pending review items, oldest first, with prediction, score, top-k and stored input."""
        if (resp := denied(request)) is not None:
            return resp
        if not 1 <= limit <= 1000:
            return error(f"limit={limit} must be between 1 and 1000", 422)
        rows = store.queue(kind, limit, model)
        alarms = [a for a in active_alarms(store) if not model or a["model"] == model]
        return {"kind": kind, "risk_alarms": alarms,
                "items": [_present(r, classes_of(r)) for r in rows]}

    @router.post("/v1/feedback")
    def feedback(request: Request, fb: Feedback) -> Any:
        """A human label for one served sample: 201 new, 200 same again, 409 different, 404, 422."""
        if (resp := denied(request)) is not None:
            return resp
        status, body = apply_feedback(store, fb)
        return JSONResponse(body, status)

    @router.get("/v1/requests/{request_id}")
    def get_request(request: Request, request_id: str) -> Any:
        """The recorded decisions of one request and any human labels."""
        if (resp := denied(request)) is not None:
            return resp
        rows = store.request(request_id)
        if not rows:
            return error(f"no recorded request {request_id!r} (not served, not yet flushed, "
                         "or recording is off)", 404)
        return {"request_id": request_id, "samples": [_present(r, classes_of(r)) for r in rows]}

    @router.get("/v1/monitor/risk")
    def monitor_risk(request: Request, model: str | None = None, version: str | None = None) -> Any:
        """Live selective risk per (model, version, calibration) from labelled audits."""
        if (resp := denied(request)) is not None:
            return resp
        out = []
        for m, v, sha in store.epochs():
            if (model and m != model) or (version and v != version):
                continue
            n, k, pending = store.audit_counts(m, v, sha)
            target = epoch_info(store, m, v, sha).get("target_risk")
            out.append(live_risk(m, v, sha, target, k, n, pending, live_delta).to_dict())
        return {"delta": live_delta, "epochs": out}

    return router
