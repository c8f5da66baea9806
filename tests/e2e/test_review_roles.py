"""Who may do what: every HTTP endpoint × no key / API key / reviewer key / admin key, on a real
server, and gRPC — which only does inference — with the same keys.

The table is checked against the server's own OpenAPI document, so a new endpoint fails here
until its row says who may call it. Roles (docs/loop.md): inference clients (API key) predict
and read metadata; reviewers read the queues, the records and live risk and post labels; the
admin key reloads and reviews; the webhook takes only its own secret; /metrics its own key.
"""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
from server_support import make_version, running_server, wait_recorded

from serve.server.settings import load_settings

service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")

API, REVIEWER, ADMIN, METRICS, HOOK = "client-key", "reviewer-key", "admin-key", "metrics-key", "hook"
ROLES = {"none": None, "api": API, "reviewer": REVIEWER, "admin": ADMIN}
V = [[0.5] * 8]
V2 = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": V[0]}]}
OPEN = {"none": 200, "api": 200, "reviewer": 200, "admin": 200}
CLIENT = {"none": 401, "api": 200, "reviewer": 401, "admin": 401}
REVIEW = {"none": 401, "api": 403, "reviewer": 200, "admin": 200}
# (method, OpenAPI path, expected status by role); "{rid}" is a recorded request of this server
MATRIX = [
    ("GET", "/healthz", OPEN), ("GET", "/readyz", OPEN), ("GET", "/v2/health/live", OPEN),
    ("GET", "/v2/health/ready", OPEN), ("GET", "/v2", OPEN),
    ("GET", "/v2/models/{model_name}", CLIENT),
    ("GET", "/v2/models/{model_name}/versions/{model_version}", CLIENT),
    ("GET", "/v2/models/{model_name}/ready", CLIENT),
    ("GET", "/v2/models/{model_name}/versions/{model_version}/ready", CLIENT),
    ("GET", "/v2/models/{model_name}/stats", CLIENT),
    ("GET", "/v2/models/{model_name}/versions/{model_version}/stats", CLIENT),
    ("GET", "/v1/models", CLIENT),
    ("POST", "/v1/models/{model_name}/predict", CLIENT),
    ("POST", "/v1/models/{model_name}/versions/{model_version}/predict", CLIENT),
    ("POST", "/v2/models/{model_name}/infer", CLIENT),
    ("POST", "/v2/models/{model_name}/versions/{model_version}/infer", CLIENT),
    ("GET", "/metrics", {"none": 401, "api": 401, "reviewer": 401, "admin": 401}),
    ("POST", "/v1/admin/reload", {"none": 401, "api": 401, "reviewer": 401, "admin": 200}),
    ("GET", "/v1/review/queue", REVIEW),
    ("GET", "/v1/requests/{request_id}", REVIEW),
    ("GET", "/v1/requests", REVIEW),                       # ?client_id=: search by the client's id
    ("GET", "/v1/monitor/risk", REVIEW),
    ("POST", "/v1/feedback", {**REVIEW, "reviewer": 201}),   # the first label; then 200, same again
    ("POST", "/v1/review/labelstudio", {"none": 401, "api": 401, "reviewer": 401, "admin": 401}),
]


def _url(path: str, rid: str) -> str:
    if path == "/v1/requests":
        return path + "?client_id=c-1"
    return (path.replace("{model_name}", "clf").replace("{model_version}", "1")
            .replace("{request_id}", rid))


def _body(method: str, path: str, rid: str) -> dict | None:
    if method != "POST":
        return None
    if path.endswith("/predict"):
        return {"instances": V}
    if path.endswith("/infer"):
        return V2
    if path == "/v1/feedback":
        return {"request_id": rid, "index": 0, "label": "ant"}
    if path == "/v1/review/labelstudio":
        return {"action": "ANNOTATION_CREATED", "task": {"data": {"request_id": rid, "index": 0}},
                "annotation": {"result": [{"type": "choices", "value": {"choices": ["ant"]}}]}}
    return None


def _settings(repo, state, **kw):
    return load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                         state_dir=state, audit_rate=1.0, **kw)


def _recorded(c: httpx.Client, headers: dict) -> str:
    r = c.post("/v1/models/clf/predict", json={"instances": V}, headers={"Authorization": f"Bearer {API}"})
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    wait_recorded(c, rid, headers, 10)
    return rid


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_version(root, "clf", 1, seed=1)
    return root


def test_every_endpoint_answers_each_role_as_the_table_says(repo, tmp_path):
    s = _settings(repo, tmp_path / "state", api_key=API, reviewer_key=REVIEWER, admin_key=ADMIN,
                  metrics_key=METRICS, review_webhook_secret=HOOK, grpc_port=0)
    with running_server(s) as (url, app), httpx.Client(base_url=url, timeout=30) as c:
        documented = {(m.upper(), p) for p, item in c.get("/openapi.json").json()["paths"].items()
                      for m in item}
        assert documented == {(m, p) for m, p, _ in MATRIX}, "every endpoint needs its row"
        rid = _recorded(c, {"Authorization": f"Bearer {REVIEWER}"})
        got, want = {}, {}
        for method, path, expected in MATRIX:
            for role, key in ROLES.items():
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                r = c.request(method, _url(path, rid), json=_body(method, path, rid), headers=headers)
                got[(method, path, role)], want[(method, path, role)] = r.status_code, expected[role]
                assert r.headers["content-type"].startswith(("application/json", "text/plain")), path
                if r.status_code >= 400:
                    assert r.json()["error"], (method, path, role)
        assert got == want
        # what the first column of each role could not do, the right secret or key can
        assert c.get("/metrics", headers={"Authorization": f"Bearer {METRICS}"}).status_code == 200
        hook = c.post("/v1/review/labelstudio", json=_body("POST", "/v1/review/labelstudio", rid),
                      headers={"X-Abstain-Webhook-Secret": HOOK})
        assert hook.status_code == 200 and hook.json()["status"] == "same"   # the label stands
        # nothing a client receives says whether it was audited (here: every sample is)
        r = c.post("/v1/models/clf/predict", json={"instances": V},
                   headers={"Authorization": f"Bearer {API}"})
        assert "audit" not in r.text.lower() and "review" not in r.text.lower()
        assert set(r.headers) == {"content-type", "content-length", "x-request-id", "date", "server"}
        _grpc_roles(f"127.0.0.1:{app.grpc_port}")


def _grpc_roles(target: str) -> None:
    """gRPC serves inference (the API key) and nothing of the review API."""
    x = np.full((1, 8), 0.5, np.float32)
    req = service_pb2.ModelInferRequest(model_name="clf", inputs=[service_pb2.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 8])], raw_input_contents=[x.tobytes()])
    with grpc.insecure_channel(target) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        for role, key in ROLES.items():
            md = [("authorization", f"Bearer {key}")] if key else []
            if role == "api":
                out = stub.ModelInfer(req, metadata=md, timeout=10)
                assert [o.name for o in out.outputs][:1] == ["logits"]
                continue
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(req, metadata=md, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, role
        # KServe's repository and statistics RPCs, and any other name, are not served
        for name, msg in (("RepositoryIndex", service_pb2.RepositoryIndexRequest()),
                          ("ModelStatistics", service_pb2.ModelStatisticsRequest()),
                          ("RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest())):
            with pytest.raises(grpc.RpcError) as err:
                getattr(stub, name)(msg, metadata=[("authorization", f"Bearer {ADMIN}")], timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, name
        review = ch.unary_unary("/inference.GRPCInferenceService/ReviewQueue")
        with pytest.raises(grpc.RpcError) as err:
            review(b"", metadata=[("authorization", f"Bearer {REVIEWER}")], timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("keys, opened, status", [
    ({"api_key": API}, False, 404),                    # no reviewer or admin key: off
    ({}, False, 404),                                  # no key at all: off, not open
    ({"api_key": API}, True, 200),                     # --open-review-api: anyone
])
def test_without_a_reviewer_or_admin_key_the_review_api_is_off_unless_opened(repo, tmp_path, keys,
                                                                           opened, status):
    s = _settings(repo, tmp_path / "state", open_review_api=opened, **keys)
    with running_server(s) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        for key in ROLES.values():
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            for path in ("/v1/review/queue", "/v1/monitor/risk", "/v1/requests/x"):
                r = c.get(path, headers=headers)
                assert r.status_code == (404 if path == "/v1/requests/x" and opened else status)
                if not opened:
                    assert "review API is off" in r.json()["error"] and "--reviewer-key-file" in r.text
            r = c.post("/v1/feedback", json={"request_id": "x", "label": "ant"}, headers=headers)
            assert r.status_code == 404
            assert ("no recorded sample" if opened else "review API is off") in r.json()["error"]
