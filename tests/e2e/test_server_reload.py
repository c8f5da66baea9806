"""Hot reload on the real server: new versions, broken versions, wrong hashes, in-flight requests."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time

import httpx
import pytest
from server_support import build_onnx, make_version, running_server, write_calibration

from serve.server.settings import load_settings

AUTH = {"Authorization": "Bearer s3cret-admin"}
X = {"instances": [[0.5] * 8]}


@pytest.fixture()
def repo(tmp_path):
    make_version(tmp_path, "clf", 1, seed=1)
    return tmp_path


def test_reload_new_version_then_refuse_broken_ones(repo, caplog):
    s = load_settings(model_repository=repo, poll_interval_s=0, admin_key="s3cret-admin",
                      warmup_batch_sizes=(1,))
    with running_server(s) as (url, app), httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/v1/admin/reload").status_code == 401
        assert c.post("/v1/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
        make_version(repo, "clf", 2, seed=2)
        r = c.post("/v1/admin/reload", headers=AUTH).json()
        assert r["loaded"] == ["clf/2"] and r["failed"] == {}
        assert c.post("/v1/models/clf/predict", json=X).json()["model_version"] == "2"
        assert c.post("/v1/models/clf/versions/1/predict", json=X).status_code == 200

        # v3: a model whose calibration was made for another model file → refused, v2 serves.
        v3 = repo / "clf" / "3"
        build_onnx(v3 / "model.onnx", seed=3)
        write_calibration(v3, sha="ab" * 32)
        caplog.set_level(logging.ERROR, "serve.server.repository")
        r = c.post("/v1/admin/reload", headers=AUTH).json()
        assert "clf/3" in r["failed"] and "made for a model with sha256 abababab" in r["failed"]["clf/3"]
        assert any("refused clf/3" in m for m in caplog.messages)
        assert c.post("/v1/models/clf/predict", json=X).json()["model_version"] == "2"
        assert c.post("/v1/models/clf/versions/3/predict", json=X).status_code == 404

        # v2 replaced by a corrupt file: refused, the loaded v2 keeps serving.
        (repo / "clf" / "2" / "model.onnx").write_bytes(b"garbage")
        r = c.post("/v1/admin/reload", headers=AUTH).json()
        assert "not a valid ONNX model" in r["failed"]["clf/2"]
        assert c.post("/v1/models/clf/predict", json=X).json()["model_version"] == "2"

        # fixing v3's calibration makes it go live; a malformed calibration on v4 is refused.
        write_calibration(v3)
        make_version(repo, "clf", 4, seed=4)
        (repo / "clf" / "4" / "calibration.json").write_text("{not json")
        r = c.post("/v1/admin/reload", headers=AUTH).json()
        assert r["loaded"] == ["clf/3"] and "not valid JSON" in r["failed"]["clf/4"]
        assert c.post("/v1/models/clf/predict", json=X).json()["model_version"] == "3"

        shutil.rmtree(repo / "clf" / "1")
        r = c.post("/v1/admin/reload", headers=AUTH).json()
        assert r["unloaded"] == ["clf/1"]
        assert c.post("/v1/models/clf/versions/1/predict", json=X).status_code == 404


def test_poll_loop_picks_up_a_new_model(repo):
    s = load_settings(model_repository=repo, poll_interval_s=0.2, warmup_batch_sizes=(1,))
    with running_server(s) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        make_version(repo, "other", 1, seed=9)
        deadline = time.monotonic() + 20
        while c.post("/v1/models/other/predict", json=X).status_code != 200:
            assert time.monotonic() < deadline, "poll loop did not load the new model"
            time.sleep(0.1)


def test_in_flight_requests_finish_on_the_version_they_started_with(tmp_path):
    make_version(tmp_path, "slow", 1, "slow", seed=1)
    s = load_settings(model_repository=tmp_path, poll_interval_s=0, admin_key="s3cret-admin",
                      warmup_batch_sizes=(1,), max_batch_size=1)
    with running_server(s) as (url, app):
        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=60) as ac:
                inflight = [asyncio.create_task(ac.post("/v1/models/slow/predict", json=X))
                            for _ in range(3)]
                await asyncio.sleep(0.15)
                await asyncio.to_thread(make_version, tmp_path, "slow", 2, "vector", 2)
                await asyncio.to_thread(shutil.rmtree, tmp_path / "slow" / "1")
                reload = await ac.post("/v1/admin/reload", headers=AUTH)
                after = await ac.post("/v1/models/slow/predict", json=X)
                return await asyncio.gather(*inflight), reload, after

        old, reload, after = asyncio.run(scenario())
        assert reload.json()["loaded"] == ["slow/2"] and reload.json()["unloaded"] == ["slow/1"]
        assert [r.status_code for r in old] == [200] * 3
        assert [r.json()["model_version"] for r in old] == ["1"] * 3
        assert after.json()["model_version"] == "2"


def test_empty_repository_becomes_ready_when_a_model_arrives(tmp_path):
    # The app itself tolerates an empty repository (a Kubernetes pod whose volume fills later);
    # it reports not-ready until the poll loop finds a servable model, then ready, no restart.
    s = load_settings(model_repository=tmp_path, poll_interval_s=0.2, warmup_batch_sizes=(1,))
    with running_server(s) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        r = c.get("/v2/health/ready")
        assert r.status_code == 503 and r.json()["ready"] is False
        make_version(tmp_path, "clf", 1, seed=1)
        deadline = time.monotonic() + 20
        while c.get("/v2/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json()["models"][0]["name"] == "clf"
        assert c.post("/v1/models/clf/predict", json=X).status_code == 200
