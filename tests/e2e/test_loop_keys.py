"""Issue 28, High 2 and Medium 4 on real `abstain serve` processes (SQLite and PostgreSQL).

The store's key is the server's random request id; the client's id (HTTP X-Request-Id or body
"id", gRPC body id or metadata) is cleaned and kept beside it. A gRPC id with a NUL no longer
stops PostgreSQL recording; 200 requests with one client id are 200 rows; a client that
pre-claims ids cannot take other clients' records; records_written_total equals the rows.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from loop_support import store_location
from server_support import free_port, make_version, server_process

from serve.feedback.store import Store
from serve.server.protocol.grpc_v2 import ModelInferRequest, ModelInferResponse

KEY = {"Authorization": "Bearer k"}
METHOD = "/inference.GRPCInferenceService/ModelInfer"
HEX32 = re.compile("[0-9a-f]{32}")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_version(root, "clf", 1, seed=1)
    return root





def _env(store_env: dict[str, str], **extra: str) -> dict[str, str]:
    return {"ABSTAIN_API_KEY": "k", "ABSTAIN_AUDIT_RATE": "1.0", "ABSTAIN_STORE_INPUTS": "true",
            **store_env, **extra}


def _rows_when(store: Store, n: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while (got := store.count()) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return got


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def _grpc_infer(port: int, rid: str, x: np.ndarray, metadata=()) -> tuple[ModelInferResponse, dict]:
    req = ModelInferRequest(model_name="clf", id=rid)
    req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype("<f4").tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(METHOD, request_serializer=ModelInferRequest.SerializeToString,
                              response_deserializer=ModelInferResponse.FromString)
        resp, info = call.with_call(req, metadata=(("authorization", "Bearer k"), *metadata),
                                    timeout=30)
    return resp, dict(info.trailing_metadata())


def test_a_grpc_id_with_nul_does_not_stop_recording(repo: Path, store_env) -> None:
    """High 2: `id="evil\\x00"` used to make every later PostgreSQL write fail, uncounted."""
    port = free_port()
    x = np.random.default_rng(0).normal(1, 2, (3, 8)).astype(np.float32)
    with server_process(repo, "--grpc-port", str(port), env=_env(store_env)) as (url, _):
        resp, trailer = _grpc_infer(port, "evil\x00é" + "x" * 300, x)
        server_id = trailer["x-request-id"]
        assert HEX32.fullmatch(server_id) and resp.id == "evil" + "x" * 124   # cleaned, bounded
        with httpx.Client() as c:
            for i in range(50):
                r = c.post(f"{url}/v1/models/clf/predict", headers={**KEY, "X-Request-Id": f"h{i}"},
                           json={"instances": x[:2].tolist()}, timeout=10)
                assert r.status_code == 200
        store = Store(store_location(store_env))
        assert _rows_when(store, 3 + 100) == 103
        rows = store.request(server_id)
        assert [r["client_id"] for r in rows] == ["evil" + "x" * 124] * 3
        assert rows[0]["input"] == x[0].tolist()                 # raw float32 bytes, exact
        deadline = time.monotonic() + 10                  # the counter follows the commit
        while _metric(url, "abstain_records_written_total") < 103 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _metric(url, "abstain_records_dropped_total") == 0
        assert _metric(url, "abstain_records_written_total") == store.count() == 103
        store.close()


def test_one_client_id_200_times_is_200_rows(repo: Path, store_env) -> None:
    """Medium 4: duplicates were silently dropped (200 requests → 1 row)."""
    env = _env(store_env, ABSTAIN_AUDIT_RATE="0.0", ABSTAIN_REVIEWER_KEY="rev")
    with server_process(repo, env=env) as (url, _), httpx.Client() as c:
        server_ids = set()
        for i in range(200):
            body = {"instances": [[float(i)] * 8]} | ({"id": "same"} if i % 2 else {})
            r = c.post(f"{url}/v1/models/clf/predict", json=body, timeout=10,
                       headers={**KEY, "X-Request-Id": "same"})
            assert r.status_code == 200 and r.json()["id"] == "same"
            server_ids.add(r.headers["x-request-id"])
        assert len(server_ids) == 200 and all(HEX32.fullmatch(s) for s in server_ids)
        store = Store(store_location(store_env))
        assert _rows_when(store, 200) == 200
        assert set(store.by_client_id("same", 1000)) == server_ids
        found = c.get(f"{url}/v1/requests", params={"client_id": "same", "limit": 1000},
                      headers={"Authorization": "Bearer rev"}, timeout=10)
        assert found.status_code == 200 and set(found.json()["request_ids"]) == server_ids
        assert c.get(f"{url}/v1/requests", params={"client_id": "same"}, headers=KEY,
                     timeout=10).status_code in (401, 403)      # clients predict, nothing else
        one = c.get(f"{url}/v1/requests/{found.json()['request_ids'][0]}",
                    headers={"Authorization": "Bearer rev"}, timeout=10).json()["samples"][0]
        assert one["client_id"] == "same"
        deadline = time.monotonic() + 10
        while _metric(url, "abstain_records_written_total") < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _metric(url, "abstain_records_written_total") == store.count() == 200
        assert _metric(url, "abstain_records_dropped_total") == 0
        store.close()


def test_pre_claimed_ids_cannot_take_the_victims_records(repo: Path, tmp_path: Path) -> None:
    """Medium 4: with a prefix + counter, an attacker that sent the next ids first had its own
    input stored under the victims' ids. Now every request is keyed by its own random id."""
    env = _env({"ABSTAIN_STATE_DIR": str(tmp_path / "state")})
    with server_process(repo, env=env) as (url, _), httpx.Client() as c:
        probe = c.post(f"{url}/v1/models/clf/predict", json={"instances": [[0.0] * 8]},
                       headers=KEY, timeout=10).headers["x-request-id"]
        guesses = [f"{int(probe, 16) + k:032x}" for k in range(1, 6)]   # the old scheme's next
        for g in guesses:                                    # pre-claimed by the attacker
            for claim in ({"X-Request-Id": g}, {}):
                body = {"instances": [[9.0] * 8]} | ({} if claim else {"id": g})
                assert c.post(f"{url}/v1/models/clf/predict", json=body, timeout=10,
                              headers={**KEY, **claim}).status_code == 200
        victims = {}
        for v in range(5):
            x = [float(v)] * 8
            r = c.post(f"{url}/v1/models/clf/predict", json={"instances": [x]}, headers=KEY,
                       timeout=10)
            victims[r.headers["x-request-id"]] = x
        store = Store(tmp_path / "state")
        assert _rows_when(store, 16) == 16
        for rid, x in victims.items():
            assert rid not in guesses
            (row,) = store.request(rid)
            assert row["input"] == x and row["client_id"] is None
        for g in guesses:
            assert store.request(g) == []                    # a client id is never a key
            assert len(store.by_client_id(g)) == 2
        store.close()


def test_retention_on_a_real_server(repo: Path, tmp_path: Path) -> None:
    """--retention-days (here 3.5 s): accepted unaudited rows go; audited, labelled and pending
    review rows of the served calibration stay; abstain_records_deleted_total counts it."""
    state = tmp_path / "state"
    env = _env({"ABSTAIN_STATE_DIR": str(state)}, ABSTAIN_AUDIT_RATE="0.3",
               ABSTAIN_RETENTION_DAYS=str(3.5 / 86400))
    with server_process(repo, env=env) as (url, _), httpx.Client() as c:
        x = np.random.default_rng(3).normal(1, 2, (8, 8)).round(3).tolist()
        for _ in range(10):
            assert c.post(f"{url}/v1/models/clf/predict", json={"instances": x}, headers=KEY,
                          timeout=10).status_code == 200
        store = Store(state)
        assert _rows_when(store, 80) == 80
        review = store.count("audit = 1 OR reject = 1")
        assert 0 < review < 80
        (audited,) = store.queue("audit", 1)
        store.add_feedback(audited["request_id"], audited["idx"], 0, "test", None)
        deadline = time.monotonic() + 30               # old after 3.5 s, swept within 5 s
        while store.count() > review and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.count() == review == store.count("audit = 1 OR reject = 1")
        assert store.record(audited["request_id"], audited["idx"])["review"] == "labelled"
        assert _metric(url, "abstain_records_deleted_total") == 80 - review
        store.close()
