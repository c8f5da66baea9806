"""Label Studio as the reviewers' tool: push pending review items as tasks, pull labels back.

Talks to Label Studio's REST API with httpx (extra ``review``); Label Studio itself runs in its
own environment. Every task carries ``data.key = "<request_id>/<index>"``, so a push never
imports an item twice and a pull can be repeated at will (feedback is idempotent): a sync that
stops half-way is resumed by running it again. Annotations also arrive through Label Studio's
webhook (``POST /v1/review/labelstudio``), checked with a shared secret header before its
(bounded) body is read; a malformed event is a 422, never a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from serve.errors import AbstainError
from serve.feedback.access import (
    ERRORS,
    ReviewError,
    check_secret,
    describe,
    guarded_route,
    read_body,
    store_errors,
)
from serve.feedback.api import Feedback, apply_feedback
from serve.feedback.recorder import epoch_info
from serve.feedback.store import Store

SECRET_HEADER = "X-Abstain-Webhook-Secret"
SOURCE = "label-studio"


class LabelStudioError(AbstainError):
    """Label Studio refused a request or is unreachable."""


def label_config(classes: list[str]) -> str:
    """A single-choice classification interface over the item's text rendering."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return ("<View>\n  <Header value=\"$title\"/>\n  <Text name=\"input\" value=\"$text\"/>\n"
            "  <Choices name=\"label\" toName=\"input\" choice=\"single\" showInline=\"true\">\n"
            f"{choices}\n  </Choices>\n</View>")


def task_for(item: dict[str, Any], kind: str, classes: list[str]) -> dict[str, Any]:
    """A Label Studio task for one review item, the model's prediction pre-annotated."""
    label = classes[item["label"]] if 0 <= item["label"] < len(classes) else str(item["label"])
    top = ", ".join(f"{classes[c]} {p:.3f}" for c, p in item.get("topk") or [])
    text = json.dumps(item["input"]) if item.get("input") is not None else "(input not stored)"
    return {"data": {"key": f"{item['request_id']}/{item['idx']}", "request_id": item["request_id"],
                     "index": item["idx"], "kind": kind, "model": item["model"],
                     "version": item["version"], "text": text,
                     "title": f"{kind}: model says {label} (score {item['score']:.3f}; {top})"},
            "predictions": [{"model_version": f"{item['model']}/{item['version']}",
                             "score": float(item["score"]),
                             "result": [{"from_name": "label", "to_name": "input", "type": "choices",
                                         "value": {"choices": [label]}}]}]}


def feedback_from(task_data: Any, annotation: Any) -> Feedback | None:
    """The label an annotation gives, or None (cancelled, empty, or not one of our tasks).

    Raises:
        ReviewError: 422 — the task or annotation is malformed (wrong types, no index, an index
            that is not a non-negative integer, an over-long annotator …); nothing is coerced.
    """
    if not isinstance(task_data, dict) or not isinstance(annotation, dict):
        raise _bad("task.data and annotation must be JSON objects")
    if annotation.get("was_cancelled") or "request_id" not in task_data:
        return None
    results = annotation.get("result") or []
    if not isinstance(results, list):
        raise _bad("annotation.result must be a list")
    for r in results:
        if not isinstance(r, dict):
            continue
        value = r.get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        if r.get("type") == "choices" and isinstance(choices, list) and choices:
            if "index" not in task_data:
                raise _bad("task.data has a request_id but no index")
            who = annotation.get("completed_by")
            if isinstance(who, dict):
                who = who.get("email") or who.get("id")
            try:
                return Feedback.model_validate({
                    "request_id": task_data["request_id"], "index": task_data["index"],
                    "label": choices[0], "source": SOURCE,
                    "annotator": None if who is None else str(who)})
            except ValidationError as err:
                raise _bad(describe(err)) from None
    return None


def _bad(what: str) -> ReviewError:
    return ReviewError(f"not a label abstain can take: {what}", 422, "invalid_annotation")


@dataclass
class SyncReport:
    project: int
    pushed: int = 0
    already: int = 0
    pulled: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        got = ", ".join(f"{v} {k}" for k, v in sorted(self.pulled.items())) or "none"
        return (f"project {self.project}: pushed {self.pushed} new tasks ({self.already} already "
                f"there); annotations pulled: {got}")


class LabelStudio:
    """A small client for the parts of Label Studio's API the loop needs."""

    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._httpx = httpx
        self.client = httpx.Client(base_url=self.url, timeout=timeout,
                                   headers={"Authorization": f"Token {token}"})

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.client.request(method, path, **kw)
        except self._httpx.HTTPError as err:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url}: {err}") from None
        if r.status_code == 401:
            raise LabelStudioError(f"Label Studio at {self.url} refused the token (401): pass the "
                                   "API token from Account & Settings (legacy tokens must be enabled)")
        if r.status_code >= 400:
            raise LabelStudioError(f"Label Studio {method} {path} failed with {r.status_code}: "
                                   f"{r.text[:300]}")
        return r.json() if r.content else None

    def project(self, project: str, classes: list[str]) -> int:
        """The id of ``project`` (an id or a title); a missing title is created for ``classes``."""
        if project.isdigit():
            self._call("GET", f"/api/projects/{project}")
            return int(project)
        page = self._call("GET", "/api/projects", params={"page_size": 1000, "title": project})
        for p in page.get("results", page) if isinstance(page, dict) else page:
            if p.get("title") == project:
                return int(p["id"])
        created = self._call("POST", "/api/projects", json={
            "title": project, "label_config": label_config(classes),
            "description": "abstain review queue: deferred and audited predictions"})
        return int(created["id"])

    def tasks(self, project: int) -> list[dict[str, Any]]:
        """Every task of ``project`` with its annotations (Label Studio's JSON export)."""
        return self._call("GET", f"/api/projects/{project}/export", params={"exportType": "JSON", "download_all_tasks": "true"})

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> None:
        if tasks:
            self._call("POST", f"/api/projects/{project}/import", json=tasks)

    def add_webhook(self, project: int, url: str, secret: str) -> None:
        hooks = self._call("GET", "/api/webhooks", params={"project": project})
        if any(h.get("url") == url for h in hooks or []):
            return
        self._call("POST", "/api/webhooks", json={
            "project": project, "url": url, "send_payload": True, "send_for_all_actions": False,
            "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"], "headers": {SECRET_HEADER: secret}})


def sync(store: Store, ls: LabelStudio, project: str, model: str, kinds: tuple[str, ...] = (
        "deferred", "audit"), limit: int = 1000) -> SyncReport:
    """Pull finished annotations as feedback, then push pending items of ``model`` as tasks."""
    pending = {kind: store.queue(kind, limit, model) for kind in kinds}
    items = [i for rows in pending.values() for i in rows]
    sample = items[0] if items else None
    classes = None
    if sample is not None:
        classes = epoch_info(store, sample["model"], sample["version"],
                             sample["calibration_sha256"]).get("class_names")
    if classes is None:
        epochs = [e for e in store.epochs() if e[0] == model] or []
        classes = next((c for e in epochs if (c := epoch_info(store, *e).get("class_names"))), None)
    if not classes and not project.isdigit():
        raise AbstainError(f"no recorded traffic of model {model!r} in the store: serve it with a "
                           "state dir and send traffic before creating its Label Studio project")
    pid = ls.project(project, classes or [])
    report = SyncReport(pid)
    existing = ls.tasks(pid)
    for task in existing:
        for ann in task.get("annotations") or []:
            try:
                fb = feedback_from(task.get("data") or {}, ann)
            except ReviewError:
                report.pulled["invalid"] = report.pulled.get("invalid", 0) + 1
                break
            if fb is None:
                continue
            status, body = apply_feedback(store, fb)
            key = {200: "unchanged", 201: "new", 404: "unknown", 409: "conflicting",
                   422: "invalid"}.get(status, str(status))
            report.pulled[key] = report.pulled.get(key, 0) + 1
            break
    have = {(t.get("data") or {}).get("key") for t in existing}
    fresh = []
    seen: set[str] = set()
    for kind, rows in pending.items():
        for item in rows:
            key = f"{item['request_id']}/{item['idx']}"
            if key in seen:
                continue
            seen.add(key)
            if key in have:
                report.already += 1
                continue
            fresh.append(task_for(item, kind, classes or []))
    for start in range(0, len(fresh), 200):
        ls.import_tasks(pid, fresh[start:start + 200])
    report.pushed = len(fresh)
    return report


def webhook_router(store: Store, secret: str, max_body_bytes: int = 1 << 20) -> APIRouter:
    """``POST /v1/review/labelstudio``: Label Studio's annotation webhook, secret-checked before
    its body is read."""
    router = APIRouter(tags=["review"], route_class=guarded_route(
        lambda request: check_secret(request, SECRET_HEADER, secret, "--review-webhook-secret")))

    def handle(raw: bytes) -> tuple[int, dict[str, Any]]:
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise ReviewError(f"the body is not JSON: {err}", 422, "invalid_body") from None
        if not isinstance(payload, dict):
            raise ReviewError("the body must be a JSON object (a Label Studio webhook event)",
                              422, "invalid_body")
        action = payload.get("action")
        if action not in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            return 200, {"status": "ignored",
                         "action": action if isinstance(action, str) else None}
        task = payload.get("task") or {}
        if not isinstance(task, dict):
            raise _bad("task must be a JSON object")
        with store_errors(store):
            fb = feedback_from(task.get("data") or {}, payload.get("annotation") or {})
            if fb is None:
                return 200, {"status": "ignored"}
            return apply_feedback(store, fb)

    @router.post("/v1/review/labelstudio", responses={201: {"description": "a new label"}, **ERRORS},
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": {"type": "object"}}}}})
    async def labelstudio_webhook(request: Request) -> Any:
        """An ANNOTATION_CREATED/UPDATED event from Label Studio becomes feedback."""
        raw = await read_body(request, max_body_bytes)
        status, body = await run_in_threadpool(handle, raw)
        return JSONResponse(body, status)

    return router
