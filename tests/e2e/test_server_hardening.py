"""Hostile requests against a real server on loopback: none may stall it, crash it or leak."""

from __future__ import annotations

import asyncio
import io
import re
import socket
import threading
import time

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from server_support import make_repository, running_server, server_process

from serve.server.settings import load_settings

V = [[0.5] * 8]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repository(tmp_path_factory.mktemp("models"))


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def test_image_bomb_neither_stalls_the_loop_nor_runs_unbounded(repo):
    big = _png(6000, 6000)                                   # 36 Mpx in a few KiB
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                      max_image_pixels=400_000_000, max_image_pixels_per_s=2_000_000_000)
    with running_server(s) as (url, _):
        files = [("file", (f"{i}.png", big, "image/png")) for i in range(8)]   # 288 Mpx: decoded
        result: dict = {}

        def bomb() -> None:
            result["r"] = httpx.post(url + "/v1/models/img/predict", files=files, timeout=120)

        t = threading.Thread(target=bomb)
        t.start()
        slowest, probes = 0.0, 0
        with httpx.Client(base_url=url, timeout=5) as c:
            time.sleep(0.2)
            while t.is_alive():
                t0 = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                slowest = max(slowest, time.perf_counter() - t0)
                probes += 1
                time.sleep(0.02)
        t.join()
        assert result["r"].status_code == 200, result["r"].text
        assert probes >= 3 and slowest < 0.1, (probes, slowest)
        # 100 such images (3.6 Gpx) are refused from their headers, before any decoding
        t0 = time.perf_counter()
        r = httpx.post(url + "/v1/models/img/predict", timeout=60,
                       files=[("file", (f"{i}.png", big, "image/png")) for i in range(100)])
        assert r.status_code == 413 and "pixels" in r.json()["error"], r.text
        assert time.perf_counter() - t0 < 5


def test_per_second_pixel_budget_answers_503(repo):
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                      max_image_pixels_per_s=50_000_000)
    big = _png(6000, 6000)
    with running_server(s) as (url, _):
        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=60) as c:
                rs = await asyncio.gather(*(c.post(url + "/v1/models/img/predict",
                                                   files=[("file", ("a.png", big, "image/png"))])
                                            for _ in range(4)))
            return [r.status_code for r in rs]

        codes = asyncio.run(burst())            # 4 × 36 Mpx at once against 50 Mpx/s
        assert 200 in codes and 503 in codes, codes


def _raw(port: int, data: bytes, wait: float) -> tuple[bytes, float]:
    """Send ``data``, then read until the server closes; (what it answered, seconds to close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        t0, got = time.monotonic(), b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            got += chunk
        return got, time.monotonic() - t0


def test_slow_headers_and_bodies_are_closed_with_408(repo):
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                      header_timeout_s=1, body_timeout_s=1)
    with running_server(s) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        got, took = _raw(port, b"POST /v1/models/clf/predict HTTP/1.1\r\nHost: x\r\n", 10)
        assert got.startswith(b"HTTP/1.1 408") and b"headers" in got and took < 3, (got, took)
        head = (b"POST /v1/models/clf/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/json\r\nContent-Length: 1000\r\n\r\n{\"instances\": ")
        got, took = _raw(port, head, 10)
        assert got.startswith(b"HTTP/1.1 408") and b"body" in got and took < 3, (got, took)
        got, took = _raw(port, b"", 10)                  # opened, never used
        assert got == b"" and took < 3
        # the server still serves
        assert httpx.post(url + "/v1/models/clf/predict", json={"instances": V}).status_code == 200


def test_header_size_is_capped_with_431(repo):
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                      max_header_bytes=8192)
    with running_server(s) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        got, _ = _raw(port, req, 10)
        assert got.startswith(b"HTTP/1.1 431"), got[:100]


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(ln for ln in f if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_stalled_bodies_are_bounded_in_memory_and_time(repo):
    """60 clients announce 15 MiB bodies and stall: the body budget refuses most at once, the body
    timeout closes the rest, and RSS stays within the budget plus a margin."""
    budget = 64 * 1024 * 1024
    with server_process(repo, "--poll-interval-s", "0", "--body-timeout-s", "2",
                        "--max-body-buffer-bytes", str(budget)) as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        base = _rss_mib(proc.pid)
        head = (b"POST /v1/models/clf/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/json\r\nContent-Length: 15728640\r\n\r\n")
        socks, peak = [], base
        for _ in range(60):
            sk = socket.create_connection(("127.0.0.1", port), timeout=10)
            sk.sendall(head + b" " * (1 << 20))
            socks.append(sk)
        for _ in range(10):
            time.sleep(0.2)
            peak = max(peak, _rss_mib(proc.pid))
        answers = []
        for sk in socks:
            data = b""
            try:
                while chunk := sk.recv(65536):
                    data += chunk
            except (TimeoutError, ConnectionResetError):
                pass
            answers.append(data[:12])
            sk.close()
        assert sum(a.startswith(b"HTTP/1.1 503") for a in answers) >= 40, answers
        assert all(a.startswith((b"HTTP/1.1 503", b"HTTP/1.1 408")) for a in answers), answers
        assert peak - base < budget / 2**20 + 100, (base, peak)
        assert httpx.post(url + "/v1/models/clf/predict", json={"instances": V}).status_code == 200


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(raw=st.one_of(st.text(max_size=12), st.integers(-10, 10**6).map(str),
                     st.just("9" * 5000), st.just("²"), st.just("٣")))
def _fuzz_top_k(url: str, raw: str) -> None:
    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, "PNG")
    r1 = httpx.post(url + "/v1/models/img/predict", params={"top_k": raw},
                    content=png.getvalue(), headers={"content-type": "image/png"})
    r2 = httpx.post(url + "/v1/models/img/predict", data={"top_k": raw},
                    files={"file": ("a.png", png.getvalue(), "image/png")})
    for r in (r1, r2):
        assert r.status_code in (200, 422), (raw, r.status_code, r.text)
        assert r.headers.get("x-request-id")


def test_top_k_fuzzing_never_yields_a_5xx(repo):
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,))
    with running_server(s) as (url, _):
        _fuzz_top_k(url)


def test_cosmetics_long_names_string_booleans_duplicate_keys(repo):
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,))
    with running_server(s) as (url, _), httpx.Client(base_url=url) as c:
        r = c.post("/v1/models/" + "m" * 60000 + "/predict", json={"instances": V})
        assert r.status_code == 404 and len(r.text) < 400, len(r.text)
        body = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32",
                            "data": V[0]}], "outputs": [{"name": "label",
                                                         "parameters": {"binary_data": "false"}}]}
        r = c.post("/v2/models/clf/infer", json=body)
        assert r.status_code == 422 and "JSON boolean" in r.json()["error"]
        dup = (b'{"inputs": [{"name": "input", "shape": [1, 8], "shape": [2, 4], '
               b'"datatype": "FP32", "data": [0,0,0,0,0,0,0,0]}]}')
        r = c.post("/v2/models/clf/infer", content=dup)
        assert r.status_code == 400 and "duplicate key 'shape'" in r.json()["error"]
        r = c.post("/v1/models/img/predict", content=b"GIF89a", headers={"content-type": "image/png"})
        assert r.status_code == 422 and "BytesIO" not in r.text


KEY, ADMIN, METRICS = "k-api", "k-admin", "k-metrics"


def test_key_matrix_for_health_ready_metadata_and_metrics(repo):
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                      api_key=KEY, admin_key=ADMIN, metrics_key=METRICS)
    auth = {"authorization": f"Bearer {KEY}"}
    with running_server(s) as (url, _), httpx.Client(base_url=url) as c:
        for path in ("/healthz", "/v2/health/live"):
            assert c.get(path).status_code == 200
        for path in ("/readyz", "/v2/health/ready"):
            open_, keyed = c.get(path).json(), c.get(path, headers=auth).json()
            assert open_ == {"status": "ready", "ready": True}, open_
            assert [m["name"] for m in keyed["models"]] == ["clf", "clf", "img", "slow"]
        for path in ("/v2/models/clf/ready", "/v2/models/nope/ready", "/v2/models/clf",
                     "/v2/models/clf/stats", "/v1/models"):
            r = c.get(path)
            assert r.status_code == 401 and "clf" not in r.text and "slow" not in r.text, path
        assert c.get("/v2/models/clf/ready", headers=auth).json()["ready"] is True
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=auth).status_code == 401
        r = c.get("/metrics", headers={"authorization": f"Bearer {METRICS}"})
        assert r.status_code == 200 and "abstain_requests_total" in r.text
        assert c.post("/v1/admin/reload", headers=auth).status_code == 401
        assert c.post("/v1/admin/reload",
                      headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200


def test_metrics_on_their_own_port(repo, tmp_path):
    from server_support import free_port
    mport = free_port()
    keyfile = tmp_path / "metrics.key"
    keyfile.write_text(METRICS + "\n")
    with server_process(repo, "--poll-interval-s", "0", "--metrics-port", str(mport),
                        "--metrics-key-file", str(keyfile)) as (url, _):
        assert httpx.post(url + "/v1/models/clf/predict", json={"instances": V}).status_code == 200
        assert httpx.get(url + "/metrics").status_code == 404
        murl = f"http://127.0.0.1:{mport}/metrics"
        assert httpx.get(murl).status_code == 401
        r = httpx.get(murl, headers={"authorization": f"Bearer {METRICS}"})
        assert r.status_code == 200
        assert 'abstain_requests_total{code="200",endpoint="/v1/models/{model_name}/predict"' in r.text


def test_api_key_flag_is_warned_against(repo):
    with server_process(repo, "--poll-interval-s", "0", "--api-key", "visible") as (url, proc):
        r = httpx.post(url + "/v1/models/clf/predict", json={"instances": V},
                       headers={"authorization": "Bearer visible"})
        assert r.status_code == 200
    out = proc.stdout.read()
    assert "visible to every user" in out and "--api-key-file" in out


def test_every_answer_carries_the_request_id(repo):
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,))
    with running_server(s) as (url, _), httpx.Client(base_url=url) as c:
        for r in (c.post("/v1/models/clf/predict", json={"instances": V}),
                  c.post("/v1/models/clf/predict", content=b"{"),
                  c.post("/v2/models/nope/infer", content=orjson.dumps({"inputs": []})),
                  c.get("/v1/models/clf/predict")):
            assert r.headers.get("x-request-id"), (r.status_code, r.text)
        assert np.isfinite(c.post("/v1/models/clf/predict",
                                  json={"instances": V}).json()["predictions"][0]["score"])


def test_pipelined_requests_get_their_own_one_write_answers_in_order(repo):
    """Answers go out in one write bound to their own request (serve/server/http_protocol.py ``respond``):
    three pipelined requests on one connection — 200, 400, 200 — come back whole, in order,
    each with its own server id; the client's id is echoed in the body, cleaned to printable
    ASCII."""
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,))

    def post(body: bytes, rid: bytes) -> bytes:
        return (b"POST /v1/models/clf/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/json\r\nX-Request-Id: " + rid + b"\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)

    good = orjson.dumps({"instances": V})
    with running_server(s) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        data = post(good, b"r-1") + post(b"{", b"r-2") + post(good, b"r-3\xe9x") + \
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        got, _ = _raw(port, data, 10)
    answers = got.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"400", b"200", b"200"], got[:400]
    ids = set()
    for a, client in zip(answers[:3], ("r-1", None, "r-3x"), strict=True):
        head, body = a.split(b"\r\n\r\n", 1)
        length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        assert len(body) == length and orjson.loads(body)
        rid = head.split(b"x-request-id: ")[1].split(b"\r\n")[0].decode()
        assert re.fullmatch("[0-9a-f]{32}", rid)            # the server's own random id
        ids.add(rid)
        if client:
            assert orjson.loads(body)["id"] == client       # "r-3\xe9x" cleaned to "r-3x"
    assert len(ids) == 3


def _answer(sock: socket.socket) -> tuple[int, float]:
    """Read one whole HTTP response from a raw socket: (status, seconds it took)."""
    t0, got = time.monotonic(), b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed; got {got[:200]!r}"
        got += chunk
    head, body = got.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(head.split(b" ", 2)[1]), time.monotonic() - t0


def test_the_hold_after_a_503_doubles_in_a_row_survives_keep_alive_and_resets_on_success(repo):
    """One request stalled mid-body keeps the only in-flight slot; a client firing again at once
    on another connection gets 503s, each after a longer hold (0.5–1.5× of 0.3 s, then 2×, 4×),
    although a hold outlasts the 0.2 s keep-alive; once served, its next request is not held."""
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                      max_inflight=1, shed_hold_s=0.3, keep_alive_s=0.2)
    good = orjson.dumps({"instances": V})
    req = (b"POST /v1/models/clf/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
           b"\r\nContent-Length: " + str(len(good)).encode() + b"\r\n\r\n" + good)
    with running_server(s) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stall, \
                socket.create_connection(("127.0.0.1", port), timeout=10) as flood:
            stall.sendall(req[:-5])                       # in flight until its last bytes come
            time.sleep(0.2)
            waits = []
            for _ in range(4):
                flood.sendall(req)
                status, took = _answer(flood)
                assert status == 503
                waits.append(took)
            stall.sendall(req[-5:])
            assert _answer(stall)[0] == 200
            flood.sendall(req)
            status, after_hold = _answer(flood)           # held 4× (strike 3), then served
            flood.sendall(req)
            status2, served = _answer(flood)
    assert waits[0] < 0.15                                # the first 503: at once
    assert 0.15 <= waits[1] <= 0.6 and 0.3 <= waits[2] <= 1.2 and 0.6 <= waits[3] <= 2.4, waits
    assert status == 200 and 1.2 <= after_hold <= 4.0 and status2 == 200 and served < 0.15
