"""The review, feedback and live-risk API: a FastAPI router the control plane mounts.

Who may call it, how much body it reads and how a store outage answers are
``serve/feedback/access.py``'s: the reviewer or admin key (never the API key), the key checked
before the body is read, bodies bounded, the parse and every store call in a worker thread (so a
database call never blocks the event loop), 503 with ``Retry-After`` when the store is down.
Every bad input is a 4xx ``{"error": "..."}`` JSON answer like the rest of the server's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool

from serve.feedback.access import (
    ERRORS,
    ReviewAccess,
    ReviewError,
    guarded_route,
    json_body,
    parse,
    read_body,
    store_errors,
)
from serve.feedback.guard import active_alarms
from serve.feedback.recorder import epoch_info
from serve.feedback.risk import live_risk
from serve.feedback.store import Store

MAX_INDEX = 2**31 - 1
ID_PATTERN = r"^[\x20-\x7e]+$"          # printable ASCII, as the server's request ids
Id = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
Text = Annotated[StrictStr, Field(pattern=r"^[^\x00-\x1f\x7f]*$")]   # no control characters
QueryText = Annotated[str | None, Query(max_length=128, pattern=ID_PATTERN)]
RISK_NOTE = ("labels, errors, pending_audits and expired_audits count audited ACCEPTED samples "
             "only (deferred samples do not enter the live risk); lower/upper use the labelled "
             "ones, upper_pessimistic counts every unlabelled audit as an error, and the status "
             "counts expired audits as errors (status_basis); labels_to_ok / labels_to_alarm "
             "project how many more labels either would need at the labelled error rate so far; "
             "current marks the calibration this server has in force (one epoch per calibration). "
             "A cascade's epoch is the whole system (its certified r* holds over everything "
             "any stage accepts); its stages list the same counts and bounds per stage that "
             "accepted the sample, as diagnostics: no stage has a certified risk of its own")


def stage_risk(stage: int, labels: int, errors: int, pending: int, expired: int,
               target: float | None, delta: float) -> dict[str, Any]:
    """One cascade stage's audited accepted samples: counts and live-risk bounds.

    The certificate is on the system, not on any stage (a stage's share of the accepted set is
    chosen by the thresholds together), so a stage has no r* to be judged against: the bounds are
    the same confidence sequence as the system's (prior centred at the system's r*) and there
    is no status. A stage far above r* while the system is fine is still worth a look.
    """
    r = live_risk("", "", "", target, errors, labels, pending, delta, expired=expired)
    return {"stage": stage, "labels": labels, "errors": errors, "pending_audits": pending,
            "expired_audits": expired, "risk": r.risk, "lower": r.lower,
            "upper": r.upper, "upper_pessimistic": r.upper_pessimistic}


class Feedback(BaseModel):
    """One human label; unknown fields are ignored, wrong ones refused (never coerced)."""

    request_id: Id
    index: StrictInt = Field(0, ge=0, le=MAX_INDEX)
    label: Annotated[StrictStr, Field(min_length=1, max_length=256)] | StrictInt = Field(
        description="a class name or class index of the model")
    source: Annotated[Text, Field(min_length=1, max_length=64)] = "api"
    annotator: Annotated[Text, Field(max_length=128)] | None = None


def resolve_label(label: str | int, classes: list[str] | None) -> int | str:
    """The class index of ``label``, or an error message naming the allowed classes."""
    allowed = f"one of {classes}" if classes else f"a class index in [0, {MAX_INDEX}]"
    digits = isinstance(label, str) and label.isascii() and label.isdigit() and len(label) <= 10
    if isinstance(label, int) or (digits and not classes):
        i = int(label)
        if 0 <= i < (len(classes) if classes else MAX_INDEX + 1):
            return i
        within = f"the model's {len(classes)} classes" if classes else "the class indices"
        return f"label index {i} is outside {within}; send {allowed}"
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
           "expires": row["expires"], "client_id": row.get("client_id"),
           "stage": row.get("stage")}
    if row.get("topk") is not None:
        out["top_k"] = [{"label": name(c), "probability": p} for c, p in row["topk"]]
    if row.get("input") is not None:
        out["input"] = row["input"]
    if "human_label" in row:
        out["human_label"] = name(row["human_label"])
        out["feedback_source"] = row.get("feedback_source")
        out["annotator"] = row.get("annotator")
    return out


def create_router(store: Store, access: ReviewAccess, *, live_delta: float = 0.05,
                  max_body_bytes: int = 1 << 20,
                  current_epochs: Callable[[], dict[tuple[str, str], str]] | None = None) -> APIRouter:
    """Routes ``/v1/review/queue``, ``/v1/feedback``, ``/v1/requests/{id}``, ``/v1/monitor/risk``,
    each behind ``access`` (checked before anything else of the request is looked at).

    ``current_epochs`` maps each served (model, version) to the sha256 of its calibration in force,
    so the risk report can mark the current epoch.
    """
    router = APIRouter(tags=["review"], route_class=guarded_route(access.check))
    classes_cache: dict[tuple[str, str, str], list[str] | None] = {}

    def classes_of(row: dict[str, Any]) -> list[str] | None:
        key = (row["model"], row["version"], row["calibration_sha256"])
        if key not in classes_cache:
            classes_cache[key] = epoch_info(store, *key).get("class_names")
        return classes_cache[key]

    def in_thread(work: Callable[[], Any]) -> Any:
        """``work`` (store calls, and the answer's JSON rendering) in a worker thread."""
        def run() -> Any:
            with store_errors(store):
                return work()
        return run_in_threadpool(run)

    @router.get("/v1/review/queue", responses=ERRORS)
    async def review_queue(kind: Literal["deferred", "audit"] = "deferred",
                           limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                           model: QueryText = None) -> Any:
        """Pending review items, oldest first, with prediction, score, top-k and stored input."""
        def work() -> Any:
            rows = store.queue(kind, limit, model)
            alarms = [a for a in active_alarms(store) if not model or a["model"] == model]
            return JSONResponse({"kind": kind, "risk_alarms": alarms,
                                 "items": [_present(r, classes_of(r)) for r in rows]})
        return await in_thread(work)

    @router.post("/v1/feedback", responses={201: {"description": "a new label"}, **ERRORS},
                 openapi_extra=json_body(Feedback))
    async def feedback(request: Request) -> Any:
        """A human label for one served sample: 201 new, 200 same again, 409 different, 404, 422."""
        raw = await read_body(request, max_body_bytes)
        status, body = await in_thread(lambda: apply_feedback(store, parse(Feedback, raw)))
        return JSONResponse(body, status)

    @router.get("/v1/requests", responses=ERRORS)
    async def find_requests(client_id: Annotated[str, Query(min_length=1, max_length=128,
                                                            pattern=ID_PATTERN)],
                            limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
        """The server's request ids of the requests a client sent with its own id, oldest first
        (the client's X-Request-Id or body "id", as recorded: cleaned to printable ASCII)."""
        def work() -> Any:
            return JSONResponse({"client_id": client_id,
                                 "request_ids": store.by_client_id(client_id, limit)})
        return await in_thread(work)

    @router.get("/v1/requests/{request_id}", responses=ERRORS)
    async def get_request(request_id: Annotated[str, Path(max_length=128, pattern=ID_PATTERN)]) -> Any:
        """The recorded decisions of one request and any human labels."""
        def work() -> Any:
            rows = store.request(request_id)
            if not rows:
                raise ReviewError(f"no recorded request {request_id!r} (not served, not yet "
                                  "flushed, or recording is off)", 404, "unknown_request")
            return JSONResponse({"request_id": request_id,
                                 "samples": [_present(r, classes_of(r)) for r in rows]})
        return await in_thread(work)

    @router.get("/v1/monitor/risk", responses=ERRORS)
    async def monitor_risk(model: QueryText = None, version: QueryText = None) -> Any:
        """Live selective risk per (model, version, calibration) from audited accepted samples;
        a cascade's epoch adds ``stages`` (per-stage diagnostics, see :func:`stage_risk`)."""
        def work() -> Any:
            serving = current_epochs() if current_epochs is not None else None
            out = []
            for m, v, sha in store.epochs():
                if (model and m != model) or (version and v != version):
                    continue
                n, k, pending, expired = store.audit_states(m, v, sha)
                target = epoch_info(store, m, v, sha).get("target_risk")
                row = live_risk(m, v, sha, target, k, n, pending, live_delta,
                                expired=expired).to_dict()
                row["current"] = (None if serving is None or (m, v) not in serving
                                  else serving[(m, v)] == sha)
                by_stage = store.audit_states_by_stage(m, v, sha)
                if by_stage:
                    row["stages"] = [stage_risk(st, *counts, target, live_delta)
                                     for st, counts in by_stage.items()]
                out.append(row)
            return JSONResponse({"delta": live_delta, "note": RISK_NOTE, "epochs": out})
        return await in_thread(work)

    return router
