"""Concurrency, batching, overload (503) and deadlines (504) on the real server."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import orjson
import pytest
from server_support import make_repository, running_server

from serve.server.settings import load_settings


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repository(tmp_path_factory.mktemp("models"))


def _requests(n: int) -> list[tuple[str, dict]]:
    """Mixed v1 / v2 JSON / v2 binary requests with distinct inputs and sizes."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        x = rng.normal(1, 0.8, (1 + i % 5, 8)).astype(np.float32)
        kind = i % 3
        if kind == 0:
            out.append(("/v1/models/clf/predict",
                        {"json": {"instances": x.tolist(), "top_k": 2, "id": f"q{i}"}}))
        elif kind == 1:
            out.append((f"/v2/models/clf/versions/{1 + i % 2}/infer", {"json": {
                "id": f"q{i}", "inputs": [{"name": "input", "shape": list(x.shape),
                                           "datatype": "FP32", "data": x.ravel().tolist()}]}}))
        else:
            h = orjson.dumps({"id": f"q{i}", "inputs": [{"name": "input", "shape": list(x.shape),
                              "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}],
                              "parameters": {"binary_data_output": True}})
            out.append(("/v2/models/clf/infer", {"content": h + x.tobytes(), "headers": {
                "Inference-Header-Content-Length": str(len(h))}}))
    return out


def _decode(r: httpx.Response) -> dict:
    if "inference-header-content-length" not in r.headers:
        return r.json()
    hlen = int(r.headers["inference-header-content-length"])
    meta, blob, pos = orjson.loads(r.content[:hlen]), r.content[hlen:], 0
    dt = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "BOOL": "?"}
    for o in meta["outputs"]:
        size = o["parameters"]["binary_data_size"]
        o["data"] = np.frombuffer(blob[pos:pos + size], dt[o["datatype"]]).tolist()
        pos += size
    return meta


def _assert_same(a: dict, b: dict) -> None:
    assert a.get("id") == b.get("id")
    if "predictions" in a:
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        assert [p["reject"] for p in a["predictions"]] == [p["reject"] for p in b["predictions"]]
        np.testing.assert_allclose([p["score"] for p in a["predictions"]],
                                   [p["score"] for p in b["predictions"]], rtol=1e-5)
    else:
        for oa, ob in zip(a["outputs"], b["outputs"], strict=True):
            assert (oa["name"], oa["shape"]) == (ob["name"], ob["shape"])
            np.testing.assert_allclose(np.asarray(oa["data"], float), np.asarray(ob["data"], float),
                                       rtol=1e-5, atol=1e-6)


def test_200_concurrent_mixed_requests_equal_their_solo_answers(repo):
    s = load_settings(model_repository=repo, poll_interval_s=0, max_batch_size=32,
                      warmup_batch_sizes=(1,))
    reqs = _requests(200)
    with running_server(s) as (url, app):
        with httpx.Client(base_url=url, timeout=60) as c:
            solo = [_decode(c.post(p, **kw)) for p, kw in reqs]
        repo_ = app.state.repository
        before = {v: repo_.get("clf", v).batcher.stats.runs for v in (1, 2)}

        async def burst():
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as ac:
                return await asyncio.gather(*(ac.post(p, **kw) for p, kw in reqs))

        together = asyncio.run(burst())
        assert [r.status_code for r in together] == [200] * 200
        for a, r in zip(solo, together, strict=True):
            _assert_same(a, _decode(r))
        stats = {v: repo_.get("clf", v).batcher.stats for v in (1, 2)}
        runs = sum(stats[v].runs - before[v] for v in (1, 2))
        samples = sum(sum(1 + i % 5 for i, (p, _) in enumerate(reqs) if f"/versions/{v}/" in p
                          or (v == 2 and "/versions/" not in p)) for v in (1, 2))
        assert runs < 200, "concurrent requests must be coalesced into fewer session runs"
        assert max(max(stats[v].sizes) for v in (1, 2)) > 5, "some batch must hold several requests"
        assert max(max(stats[v].sizes) for v in (1, 2)) <= 32
        print(f"200 requests, {samples} samples → {runs} session runs "
              f"(mean batch {samples / runs:.1f})")


def test_overload_503_and_deadline_504(repo):
    s = load_settings(model_repository=repo, poll_interval_s=0, max_queue_size=4,
                      max_batch_size=2, warmup_batch_sizes=(1,))
    body = {"instances": [[0.5] * 8, [1.0] * 8]}
    with running_server(s) as (url, app):
        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=60) as ac:
                return await asyncio.gather(*(ac.post("/v1/models/slow/predict", json=body)
                                              for _ in range(12)))

        rs = asyncio.run(burst())
        codes = [r.status_code for r in rs]
        assert 503 in codes and 200 in codes, codes
        shed = [r for r in rs if r.status_code == 503]
        assert all(r.headers["retry-after"] == "1" for r in shed)
        assert "queued" in shed[0].json()["error"] and "retry" in shed[0].json()["error"]
        assert app.state.repository.get("slow").batcher.stats.rejected_full == len(shed)
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post("/v1/models/slow/predict", json=body, headers={"X-Deadline-Ms": "1"})
            assert r.status_code == 504 and "deadline" in r.json()["error"]
            # the server is still healthy and answers the next request
            assert c.post("/v1/models/slow/predict", json=body).status_code == 200
