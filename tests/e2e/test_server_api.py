"""The real server (uvicorn on a loopback port) on real ONNX models: v1, v2, images, bad input."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image
from server_support import IMAGE_CLASSES, VECTOR_CLASSES, make_repository, running_server

from serve.calibration.artifact import load_calibration
from serve.decision import DecisionRule
from serve.server.runtime import OnnxModel
from serve.server.settings import load_settings


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def server(repo):
    s = load_settings(model_repository=repo, poll_interval_s=0, max_instances=64,
                      max_body_bytes=200_000, warmup_batch_sizes=(1, 4))
    with running_server(s) as (url, app):
        yield url, app


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c


def reference(repo, name, version, x):
    """What the deployed rule says for x, computed without the server."""
    vdir = repo / name / str(version)
    m = OnnxModel(vdir / "model.onnx", device="cpu")
    rule = DecisionRule(load_calibration(vdir, m.sha256))
    z = m.run(np.asarray(x, np.float32))
    return z, rule(z, probabilities=True)


def png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def test_v1_json_matches_the_rule(client, repo):
    x = np.random.default_rng(0).normal(1, 0.6, (8, 8)).round(3)
    r = client.post("/v1/models/clf/predict", json={"instances": x.tolist(), "top_k": 2, "id": "r1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["id"], body["model_name"], body["model_version"]) == ("r1", "clf", "2")
    _, d = reference(repo, "clf", 2, x)
    preds = body["predictions"]
    assert [p["label"] for p in preds] == d.label.tolist()
    assert [p["class_name"] for p in preds] == [VECTOR_CLASSES[i] for i in d.label]
    np.testing.assert_allclose([p["score"] for p in preds], d.score, rtol=1e-6)
    assert [p["reject"] for p in preds] == d.reject.tolist()
    assert any(d.reject) and not all(d.reject), "test data should exercise both decisions"
    for p, probs in zip(preds, d.probabilities, strict=True):
        assert len(p["probabilities"]) == 2
        top = np.argsort(-probs)[:2]
        assert list(p["probabilities"]) == [VECTOR_CLASSES[i] for i in top]
        np.testing.assert_allclose(list(p["probabilities"].values()), probs[top], rtol=1e-6)
    assert r.headers["x-request-id"]


def test_v1_addresses_versions_and_default(client, repo):
    x = [[3.0, -1, 0, 2, 5, 1, 0, -2]]
    v1 = client.post("/v1/models/clf/versions/1/predict", json={"instances": x}).json()
    assert v1["model_version"] == "1"
    assert v1["predictions"][0]["label"] == int(reference(repo, "clf", 1, x)[1].label[0])
    assert "probabilities" not in v1["predictions"][0]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_v1_image_upload(client, repo, fmt):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (16, 16), dtype=np.uint8), np.full((8, 8), 250, np.uint8)]
    files = [("file", (f"i{i}.{fmt.lower()}", png(a, fmt), f"image/{fmt.lower()}"))
             for i, a in enumerate(imgs)]
    r = client.post("/v1/models/img/predict", files=files, data={"top_k": "3"})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    # The same preprocessing by hand: decode, grey, resize to 8×8 bilinear, × 1/255, NCHW.
    x = np.stack([np.asarray(Image.open(io.BytesIO(png(a, fmt))).convert("L").resize(
        (8, 8), Image.Resampling.BILINEAR), np.float32)[None] / 255.0 for a in imgs])
    _, d = reference(repo, "img", 1, x)
    assert [p["label"] for p in preds] == d.label.tolist()
    np.testing.assert_allclose([p["score"] for p in preds], d.score, rtol=1e-5)
    assert set(preds[0]["probabilities"]) == set(IMAGE_CLASSES)
    raw = client.post("/v1/models/img/predict", content=png(imgs[1]),
                      headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.json()["predictions"][0]["label"] == d.label[1]


def _v2_body(x, **extra):
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}], **extra}


def test_v2_json_roundtrip_and_missing_content_type(client, repo):
    x = np.random.default_rng(2).normal(0, 3, (3, 8)).astype(np.float32)
    body = orjson.dumps(_v2_body(x, id="abc"))
    for headers in ({"content-type": "application/json"}, {}):
        r = client.post("/v2/models/clf/infer", content=body, headers=headers)
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert r.json()["id"] == "abc"
        z, d = reference(repo, "clf", 2, x)
        assert set(out) == {"logits", "label", "score", "reject"}
        assert out["logits"]["shape"] == [3, 4] and out["logits"]["datatype"] == "FP32"
        np.testing.assert_allclose(np.reshape(out["logits"]["data"], (3, 4)), z, rtol=1e-6)
        assert out["label"]["data"] == d.label.tolist() and out["label"]["datatype"] == "INT64"
        assert out["reject"]["data"] == d.reject.tolist() and out["reject"]["datatype"] == "BOOL"
        np.testing.assert_allclose(out["score"]["data"], d.score, rtol=1e-12)


def test_v2_binary_roundtrip(client, repo):
    x = np.random.default_rng(3).normal(0, 3, (4, 8)).astype(np.float32)
    header = orjson.dumps({"id": "bin", "inputs": [{"name": "input", "shape": [4, 8],
                          "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}],
                          "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                                      {"name": "reject", "parameters": {"binary_data": True}},
                                      {"name": "class_name", "parameters": {"binary_data": True}},
                                      {"name": "label"}]})
    r = client.post("/v2/models/clf/versions/1/infer", content=header + x.tobytes(),
                    headers={"Inference-Header-Content-Length": str(len(header)),
                             "content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    hlen = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:hlen])
    assert meta["id"] == "bin" and meta["model_version"] == "1"
    blob, pos, outs = r.content[hlen:], 0, {}
    for o in meta["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            outs[o["name"]] = o["data"]
            continue
        outs[o["name"]] = blob[pos:pos + size]
        pos += size
    assert pos == len(blob)
    _, d = reference(repo, "clf", 1, x)
    probs = np.frombuffer(outs["probabilities"], "<f8").reshape(4, 4)
    np.testing.assert_allclose(probs, d.probabilities, rtol=1e-6)
    assert np.frombuffer(outs["reject"], np.bool_).tolist() == d.reject.tolist()
    names, b = [], outs["class_name"]
    while b:
        n = int.from_bytes(b[:4], "little")
        names.append(b[4:4 + n].decode())
        b = b[4 + n:]
    assert names == [VECTOR_CLASSES[i] for i in d.label] and outs["label"] == d.label.tolist()


def test_metadata_health_and_docs(client):
    meta = client.get("/v2/models/clf").json()
    assert meta["versions"] == ["1", "2"] and meta["inputs"][0]["shape"] == [-1, 8]
    assert meta["calibration"]["threshold"] == 0.6 and meta["provider"] == "CPUExecutionProvider"
    assert meta["calibration"]["certified_coverage"] == 0.7
    assert client.get("/v2/models/clf/versions/1/ready").json()["ready"] is True
    assert client.get("/v2").json()["extensions"][0] == "binary_tensor_data"
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/docs",
                 "/openapi.json", "/metrics"):
        assert client.get(path).status_code == 200, path
    assert client.get("/readyz").json()["models"][0]["provider"] == "CPUExecutionProvider"


V = [[0.0] * 8]
BIN_HDR = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32",
                                    "parameters": {"binary_data_size": 32}}]})
BAD = [  # (path, request kwargs, status, words the error must contain)
    ("/v1/models/clf/predict", {"json": {"instances": [[0.0] * 7]}}, 422, "wrong shape"),
    ("/v1/models/clf/predict", {"json": {"instances": [0.0] * 8}}, 422, "wrapped in a list"),
    ("/v1/models/clf/predict", {"json": {"instances": [["a"] * 8]}}, 422, "numbers only"),
    ("/v1/models/clf/predict", {"json": {"instances": [[0.0] * 8, [0.0] * 7]}}, 422, "ragged"),
    ("/v1/models/clf/predict", {"json": {"instances": []}}, 422, "empty batch"),
    ("/v1/models/clf/predict", {"json": {"instances": V * 65}}, 413, "too many samples"),
    ("/v1/models/clf/predict", {"content": b'{"instances": [[NaN,0,0,0,0,0,0,0]]}'}, 422, "NaN"),
    ("/v1/models/clf/predict", {"json": {"instances": [[1e39] + [0.0] * 7]}}, 422, "infinite"),
    ("/v1/models/clf/predict", {"content": b'{"instances": [[0,'}, 400, "not valid JSON"),
    ("/v1/models/clf/predict", {"json": {"data": V}}, 422, 'missing "instances"'),
    ("/v1/models/clf/predict", {"json": {"instances": V, "top_k": -1}}, 422, "top_k"),
    ("/v1/models/clf/predict", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported media type"),
    ("/v1/models/clf/predict", {"files": {"file": ("a.png", b"\x89PNG", "image/png")}}, 415,
     "takes feature vectors, not images"),
    ("/v1/models/img/predict", {"files": {"file": ("a.png", b"not an image", "image/png")}}, 422,
     "not a readable PNG or JPEG"),
    ("/v1/models/img/predict", {"files": {"file": ("a.gif", b"GIF89a\x01\x00", "image/gif")}}, 422,
     "not a readable PNG or JPEG"),
    ("/v1/models/img/predict", {"data": {"top_k": "1"}, "files": {}}, 415, "unsupported media"),
    ("/v1/models/nope/predict", {"json": {"instances": V}}, 404, "no model named 'nope'"),
    ("/v1/models/clf/versions/9/predict", {"json": {"instances": V}}, 404, "no version '9'"),
    ("/v1/models/clf/versions/..%2F..%2Fetc/predict", {"json": {"instances": V}}, 404, ""),
    ("/v1/models/clf/versions/-1/predict", {"json": {"instances": V}}, 404, "positive integers"),
    ("/v2/models/clf/infer", {"json": _v2_body(np.zeros((1, 7), np.float32))}, 422, "wrong shape"),
    ("/v2/models/clf/infer", {"json": {"inputs": [{"name": "input", "shape": [1, 8],
                                                   "datatype": "FP64", "data": [0] * 8}]}},
     422, "wrong dtype"),
    ("/v2/models/clf/infer", {"json": {"inputs": [{"name": "input", "shape": [2, 8],
                                                   "datatype": "FP32", "data": [0] * 8}]}},
     422, "wrong count"),
    ("/v2/models/clf/infer", {"json": {"inputs": [{"name": "x", "shape": [1, 8],
                                                   "datatype": "FP32", "data": [0] * 8}]}},
     422, "unknown input 'x'"),
    ("/v2/models/clf/infer", {"json": _v2_body(np.zeros((0, 8), np.float32))}, 422, "empty batch"),
    ("/v2/models/clf/infer", {"json": _v2_body(np.zeros((65, 8), np.float32))}, 413, "too many"),
    ("/v2/models/clf/infer", {"json": {"inputs": []}}, 422, "non-empty list"),
    ("/v2/models/clf/infer", {"json": {**_v2_body(np.zeros((1, 8), np.float32)),
                                       "outputs": [{"name": "bogus"}]}}, 422, "unknown output"),
    ("/v2/models/clf/infer", {"content": BIN_HDR + np.full(8, np.nan, np.float32).tobytes(),
                              "headers": {"Inference-Header-Content-Length": str(len(BIN_HDR))}},
     422, "NaN"),
    ("/v2/models/clf/infer", {"content": BIN_HDR + b"\0" * 31,
                              "headers": {"Inference-Header-Content-Length": str(len(BIN_HDR))}},
     400, "binary_data_size is 32 but 31 bytes"),
    ("/v2/models/clf/infer", {"content": BIN_HDR,
                              "headers": {"Inference-Header-Content-Length": "99999"}}, 400,
     "the body has only"),
    ("/v2/models/clf/infer", {"content": b"[1, 2"}, 400, "not valid JSON"),
    ("/v2/models/clf/infer", {"content": b""}, 400, "empty"),
    ("/v2/models/clf/infer", {"json": _v2_body(np.zeros((1, 8), np.float32)),
                              "headers": {"x-deadline-ms": "soon"}}, 400, "X-Deadline-Ms"),
    ("/v2/models/ghost/versions/1/infer", {"json": {}}, 404, "no model named 'ghost'"),
    ("/v1/admin/reload", {}, 404, "admin endpoints are off"),
]


@pytest.mark.parametrize(("path", "kwargs", "status", "words"), BAD,
                         ids=[f"{i}-{b[3][:24] or b[0]}" for i, b in enumerate(BAD)])
def test_bad_input_is_a_clear_4xx(client, path, kwargs, status, words):
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert words in r.json()["error"]


def test_body_limit_is_enforced_while_reading(client):
    big = b'{"instances": [' + b"[0,0,0,0,0,0,0,0]," * 20_000 + b"[0,0,0,0,0,0,0,0]]}"
    r = client.post("/v1/models/clf/predict", content=big)
    assert r.status_code == 413 and "exceeds the limit of 200000 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the limit must trip while streaming
        yield b'{"instances": ['
        for _ in range(20_000):
            yield b"[0,0,0,0,0,0,0,0],"
        yield b"[0,0,0,0,0,0,0,0]]}"

    r = client.post("/v1/models/clf/predict", content=chunks())
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]


def test_unknown_route_and_method_are_json(client):
    r = client.get("/v3/whatever")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/v1/models/clf/predict")
    assert r.status_code == 405 and "error" in r.json()
