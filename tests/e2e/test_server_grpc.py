"""The v2 gRPC endpoint against the unchanged ``tritonclient.grpc`` client, on a real server.

One uvicorn server on loopback with ``--grpc-port``: health, metadata, inference with raw and
typed contents, every error mapped to its status code with the HTTP message, 200 concurrent
requests each equal to the same request sent alone, answers equal to the HTTP v2 answers, and
the requests counted in /metrics under ``grpc:ModelInfer``.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import numpy as np
import pytest
from server_support import VECTOR_CLASSES, make_repository, running_server

from serve.server.settings import load_settings

grpcclient = pytest.importorskip("tritonclient.grpc")
aioclient = pytest.importorskip("tritonclient.grpc.aio")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

KEY = "grpc-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
OUTPUTS = ("logits", "label", "score", "reject", "probabilities", "class_name")
MAX_BODY = 200_000
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = make_repository(tmp_path_factory.mktemp("models"))
    s = load_settings(model_repository=repo, poll_interval_s=0, max_instances=64,
                      max_body_bytes=MAX_BODY, warmup_batch_sizes=(1, 4), api_key=KEY, grpc_port=0)
    with running_server(s) as (url, app):
        yield url, app, f"127.0.0.1:{app.grpc_port}"


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server[2]) as c:
        yield c


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server[0], timeout=30, headers=AUTH) as c:
        yield c


def _inputs(x: np.ndarray, datatype: str = "FP32", name: str = "input") -> list:
    t = grpcclient.InferInput(name, list(x.shape), datatype)
    t.set_data_from_numpy(x)
    return [t]


def _outs(names=OUTPUTS) -> list:
    return [grpcclient.InferRequestedOutput(n) for n in names]


def _http_answer(http, model: str, x: np.ndarray, names=OUTPUTS) -> dict[str, np.ndarray]:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}], "outputs": [{"name": n} for n in names]}
    r = http.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    dt = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_,
          "BYTES": object}
    return {o["name"]: np.asarray([s.encode() for s in o["data"]] if o["datatype"] == "BYTES"
                                  else o["data"], dt[o["datatype"]]).reshape(o["shape"])
            for o in r.json()["outputs"]}


def _http_error(http, model: str, x: np.ndarray, **inp) -> tuple[int, str]:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist(), **inp}]}
    r = http.post(f"/v2/models/{model}/infer", json=body)
    return r.status_code, r.json()["error"]


def _batch(seed: int, n: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).normal(1, 0.6, (n, 8)).astype(np.float32)


def test_health_and_metadata_equal_http(client, http):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("clf", headers=AUTH) and client.is_model_ready("clf", "1", AUTH)
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "abstain" and "binary_tensor_data" in meta["extensions"]
    for version in ("", "1"):
        ours = client.get_model_metadata("clf", version, headers=AUTH, as_json=True)
        ref = http.get("/v2/models/clf" + (f"/versions/{version}" if version else "")).json()
        assert ours["name"] == ref["name"] and ours["versions"] == ref["versions"] == ["1", "2"]
        assert ours["platform"] == ref["platform"]
        for side in ("inputs", "outputs"):
            assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in ours[side]] \
                == [(t["name"], t["datatype"], t["shape"]) for t in ref[side]]


@pytest.mark.parametrize("model,version", [("clf", ""), ("clf", "1"), ("img", "")])
def test_raw_contents_equal_http_v2(client, http, model, version):
    x = _batch(1) if model == "clf" else np.random.default_rng(2).random((3, 1, 8, 8), np.float32)
    r = client.infer(model, _inputs(x), version, outputs=_outs(), request_id="req-9",
                     headers=AUTH)
    resp = r.get_response()
    assert (resp.model_name, resp.model_version, resp.id) == (model, version or
                                                              ("2" if model == "clf" else "1"), "req-9")
    assert len(resp.raw_output_contents) == len(OUTPUTS)
    path = model if not version else f"{model}/versions/{version}"
    ref = _http_answer(http, path, x)
    for name in OUTPUTS:
        got = r.as_numpy(name)
        assert got.dtype == ref[name].dtype or name == "class_name", name
        np.testing.assert_array_equal(got, ref[name], err_msg=name)
    if model == "clf":
        assert set(r.as_numpy("class_name").tolist()) <= {c.encode() for c in VECTOR_CLASSES}
        assert r.as_numpy("reject").any() and not r.as_numpy("reject").all()


def test_typed_contents_in_typed_contents_out(server, http):
    x = _batch(3)
    req = service_pb2.ModelInferRequest(model_name="clf", id="typed")
    t = req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(x.ravel().tolist())
    for n in OUTPUTS:
        req.outputs.add(name=n)
    with grpc.insecure_channel(server[2]) as channel:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            req, metadata=tuple(AUTH.items()), timeout=30)
    assert not resp.raw_output_contents and resp.id == "typed"
    ref = _http_answer(http, "clf", x)
    field = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
             "BOOL": "bool_contents", "BYTES": "bytes_contents"}
    for o in resp.outputs:
        got = np.asarray(list(getattr(o.contents, field[o.datatype])), ref[o.name].dtype)
        np.testing.assert_array_equal(got.reshape(list(o.shape)), ref[o.name], err_msg=o.name)


def _code(fn) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as err:
        fn()
    return err.value.status(), err.value.message()


def test_errors_map_to_status_codes_with_the_http_messages(server, client, http):
    x = _batch(4, 2)
    cases = [  # (gRPC call, expected code, the HTTP (status, message) of the same fault)
        (lambda: client.infer("nope", _inputs(x), headers=AUTH), "StatusCode.NOT_FOUND",
         _http_error(http, "nope", x)),
        (lambda: client.infer("clf", _inputs(x), "9", headers=AUTH), "StatusCode.NOT_FOUND",
         _http_error(http, "clf/versions/9", x)),
        (lambda: client.infer("clf", _inputs(x.astype(np.float64), "FP64"), headers=AUTH),
         "StatusCode.INVALID_ARGUMENT", _http_error(http, "clf", x, datatype="FP64")),
        (lambda: client.infer("clf", _inputs(x[:, :4]), headers=AUTH),
         "StatusCode.INVALID_ARGUMENT", _http_error(http, "clf", x[:, :4])),
        (lambda: client.infer("clf", _inputs(x, name="pixels"), headers=AUTH),
         "StatusCode.INVALID_ARGUMENT", _http_error(http, "clf", x, name="pixels")),
        (lambda: client.infer("clf", _inputs(np.full((2, 8), np.nan, np.float32)), headers=AUTH),
         "StatusCode.INVALID_ARGUMENT", (422, None)),
        (lambda: client.infer("clf", _inputs(_batch(5, 65)), headers=AUTH),
         "StatusCode.RESOURCE_EXHAUSTED", _http_error(http, "clf", _batch(5, 65))),
        (lambda: client.infer("clf", _inputs(x)), "StatusCode.UNAUTHENTICATED",
         (401, httpx.post(server[0] + "/v2/models/clf/infer", json={}).json()["error"])),
        (lambda: client.infer("clf", _inputs(x), headers={"authorization": "Bearer wrong"}),
         "StatusCode.UNAUTHENTICATED", (401, None)),
        (lambda: client.get_model_metadata("nope", headers=AUTH), "StatusCode.NOT_FOUND",
         (404, http.get("/v2/models/nope").json()["error"])),
        (lambda: client.is_model_ready("clf"), "StatusCode.UNAUTHENTICATED", (401, None)),
    ]
    for i, (call, code, (status, message)) in enumerate(cases):
        got_code, got_message = _code(call)
        assert got_code == code, (i, got_message)
        if message is not None:
            assert got_message == message, i
        assert status in (401, 404, 413, 422), i
    # Over --max-body-bytes, under grpc's own cap: admission's 413 message, RESOURCE_EXHAUSTED.
    big = _batch(6, 6500)
    code, message = _code(lambda: client.infer("clf", _inputs(big), headers=AUTH))
    assert code == "StatusCode.RESOURCE_EXHAUSTED"
    assert message.startswith(f"request body exceeds the limit of {MAX_BODY} bytes")
    code, _ = _code(lambda: client.infer("clf", _inputs(_batch(6, 20000)), headers=AUTH))
    assert code == "StatusCode.RESOURCE_EXHAUSTED"                # refused by grpc itself


def test_overload_deadline_and_not_ready(server, client, http):
    _, app, _ = server
    x = _batch(7, 2)
    app.admission.max_inflight = 0                      # every request is over the in-flight cap
    try:
        call = client._client_stub.ModelInfer.with_call
        req = service_pb2.ModelInferRequest(model_name="clf")
        t = req.inputs.add(name="input", datatype="FP32", shape=[2, 8])
        req.raw_input_contents.append(x.tobytes())
        with pytest.raises(grpc.RpcError) as err:
            call(req, metadata=tuple(AUTH.items()), timeout=10)
        status, message = _http_error(http, "clf", x)
    finally:
        app.admission.max_inflight = 4096
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and status == 503
    assert err.value.details() == message and "server busy" in message
    assert dict(err.value.trailing_metadata())["retry-after"] == "1"
    del t
    # The slow model (~0.1 s a run): three calls with a 30 ms gRPC deadline; the server takes
    # the deadline from the call, so the two that wait in the queue expire there, unrun.
    stats = app.repo.get("slow").batcher.stats
    expired, samples = stats.expired, stats.samples

    async def late() -> list:
        async with aioclient.InferenceServerClient(server[2]) as c:
            async def one():
                t = aioclient.InferInput("input", [64, 8], "FP32")
                t.set_data_from_numpy(_batch(8, 64))
                try:
                    await c.infer("slow", [t], headers=AUTH, client_timeout=0.03)
                except InferenceServerException as e:
                    return e.status()
            return await asyncio.gather(*(one() for _ in range(3)))

    assert asyncio.run(late()) == ["StatusCode.DEADLINE_EXCEEDED"] * 3
    # At least two never ran: they expire in the queue (counted there) or, on a loaded machine,
    # while the handler still reads them (gRPC cancels the call before it reaches the batcher).
    deadline = time.monotonic() + 10
    while stats.expired < expired + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stats.samples - samples <= 64, (stats.samples - samples, stats.expired - expired)
    app.repo.ready = False                              # as while starting or draining
    try:
        code, message = _code(lambda: client.infer("clf", _inputs(x), headers=AUTH))
    finally:
        app.repo.ready = True
    assert code == "StatusCode.UNAVAILABLE" and "retry" in message
    deadline = time.monotonic() + 10
    while app.admission.inflight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.admission.inflight == 0 and app.admission.buffered == 0


def test_200_concurrent_requests_equal_each_alone(server):
    _, app, target = server
    xs = [_batch(100 + i, 1 + i % 4) for i in range(200)]

    async def run() -> tuple[list, list, tuple[int, int]]:
        async with aioclient.InferenceServerClient(target) as c:
            async def one(x):
                t = aioclient.InferInput("input", list(x.shape), "FP32")
                t.set_data_from_numpy(x)
                r = await c.infer("clf", [t], outputs=[aioclient.InferRequestedOutput(n)
                                                       for n in OUTPUTS], headers=AUTH)
                return {n: r.as_numpy(n) for n in OUTPUTS}
            alone = [await one(x) for x in xs]
            stats = app.repo.get("clf").batcher.stats
            before = (stats.requests, stats.samples)
            together = await asyncio.gather(*(one(x) for x in xs))
            return alone, together, (stats.requests - before[0], stats.samples - before[1])

    alone, together, counted = asyncio.run(run())
    for a, b in zip(alone, together, strict=True):
        for n in OUTPUTS:
            np.testing.assert_array_equal(a[n], b[n], err_msg=n)
    # Every one went through the model's batcher (the one HTTP uses), row for row.
    assert counted == (200, sum(len(x) for x in xs))


def test_grpc_requests_are_counted_in_metrics(server, client, http):
    client.infer("clf", _inputs(_batch(9, 1)), headers=AUTH)
    deadline = time.monotonic() + 10
    while True:
        text = http.get("/metrics").text
        ok = [ln for ln in text.splitlines() if ln.startswith("abstain_requests_total{")
              and 'endpoint="grpc:ModelInfer"' in ln and 'code="200"' in ln]
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ok and float(ok[0].rsplit(" ", 1)[1]) >= 1
    assert 'endpoint="grpc:ModelInfer"' in text and 'code="404"' in text



def test_load_generator_reports_one_row_per_point(server, capsys, monkeypatch):
    """bench/grpc_load.py against this server: a header, then a parseable row per load point."""
    import importlib.util

    from server_support import ROOT

    spec = importlib.util.spec_from_file_location("grpc_load", ROOT / "bench" / "grpc_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("ABSTAIN_API_KEY", KEY)
    assert bench.main(["--target", server[2], "--model", "clf", "--concurrency", "1", "4",
                       "--contents", "raw", "typed", "--duration", "0.5", "--warmup", "0.1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[:2] == bench.HEADER.splitlines()
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert [(r[0], r[2]) for r in rows] == [("gRPC raw", "1"), ("gRPC raw", "4"),
                                            ("gRPC typed", "1"), ("gRPC typed", "4")]
    for r in rows:
        assert r[1] == "clf" and float(r[3].replace(",", "")) > 0 and r[6] == "0", r
        assert 0 < float(r[4]) <= float(r[5])


def test_an_immediate_retry_after_resource_exhausted_is_held_as_an_http_one_is(server):
    """After a 503 (RESOURCE_EXHAUSTED) the same gRPC connection's next call waits out the shed
    hold (0.5–1.5× of 0.3 s, then 2×, 4×) before admission, as the same HTTP connection's next
    request does; another connection is not held, and once served the strikes start over."""
    repo = server[1].settings.model_repository
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                      api_key=KEY, grpc_port=0, shed_hold_s=0.3)
    x = _batch(10, 2)
    req = service_pb2.ModelInferRequest(model_name="clf")
    req.inputs.add(name="input", datatype="FP32", shape=[2, 8])
    req.raw_input_contents.append(x.tobytes())
    md = tuple(AUTH.items())

    def grpc_call(stub) -> tuple[grpc.StatusCode, float, float]:
        """(code, seconds it took, when it ended)."""
        t0 = time.monotonic()
        try:
            stub.ModelInfer(req, metadata=md, timeout=10)
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
        return code, time.monotonic() - t0, time.monotonic()

    def http_call(c) -> tuple[int, float]:
        t0 = time.monotonic()
        status = c.post("/v2/models/clf/infer", content=x.tobytes(), headers={
            "inference-header-content-length": "0"}).status_code
        return status, time.monotonic() - t0

    with running_server(s) as (url, app), \
            grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}") as held_channel, \
            grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}",   # its own connection
                                  [("grpc.use_local_subchannel_pool", 1)]) as other_channel, \
            httpx.Client(base_url=url, timeout=10, headers=AUTH) as http:
        held = service_pb2_grpc.GRPCInferenceServiceStub(held_channel)
        other = service_pb2_grpc.GRPCInferenceServiceStub(other_channel)
        assert grpc_call(held)[0] == grpc_call(other)[0] == grpc.StatusCode.OK   # connected
        app.admission.max_inflight = 0                  # every request is over the in-flight cap
        try:
            http_refused = [http_call(http) for _ in range(2)]
            refused = [grpc_call(held)]
            other_first = grpc_call(other)              # while the first connection is held
            refused += [grpc_call(held) for _ in range(2)]
        finally:
            app.admission.max_inflight = 4096
        served_after_hold = grpc_call(held)            # held 4× (third strike), then served
        served_at_once = grpc_call(held)
    assert [st for st, _ in http_refused] == [503, 503]
    assert http_refused[0][1] < 0.15 and 0.15 <= http_refused[1][1] <= 0.6, http_refused
    assert [c for c, _, _ in refused] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    assert other_first[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and other_first[1] < 0.15
    ends = [end for _, _, end in [*refused, served_after_hold]]
    holds = [b - a for a, b in zip(ends, ends[1:], strict=False)]   # refusal → next answer
    assert refused[0][1] < 0.15 and 0.15 <= holds[0] <= 0.6 and 0.3 <= holds[1] <= 1.2, holds
    assert served_after_hold[0] == grpc.StatusCode.OK and 0.6 <= holds[2] <= 2.4, holds
    assert served_at_once[0] == grpc.StatusCode.OK and served_at_once[1] < 0.15
