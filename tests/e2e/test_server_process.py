"""`abstain serve` as a real process: start-up validation, curl example, auth, SIGTERM drain."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from server_support import make_repository, make_version, server_process

ABSTAIN = str(Path(sys.executable).parent / "abstain")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repository(tmp_path_factory.mktemp("models"))


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    return subprocess.run([ABSTAIN, "serve", *args], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})})


@pytest.mark.parametrize(("args", "env", "words"), [
    (["/nonexistent/models"], {}, "is not a directory"),
    (["{repo}", "--port", "70000"], {}, "--port / ABSTAIN_PORT = 70000 is invalid"),
    (["{repo}"], {"ABSTAIN_MAX_BATCH_SIZE": "0"}, "--max-batch-size / ABSTAIN_MAX_BATCH_SIZE = '0'"),
    (["{repo}", "--device", "tpu"], {}, "--device / ABSTAIN_DEVICE = 'tpu' is invalid"),
    (["{empty}"], {}, "no model in"),
    (["{broken}"], {}, "no servable model: m/1: "),
])
def test_bad_settings_exit_2_with_a_fix(repo, tmp_path, args, env, words):
    (tmp_path / "empty").mkdir()
    make_version(tmp_path / "broken", "m", 1)
    (tmp_path / "broken" / "m" / "1" / "calibration.json").unlink()
    args = [a.format(repo=repo, empty=tmp_path / "empty", broken=tmp_path / "broken") for a in args]
    r = _serve(*args, env=env)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("abstain serve: error:") and words in line, r.stderr
    assert "Traceback" not in r.stderr


def test_device_cuda_without_cuda_refuses_to_start(repo):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the refusal is for machines without it")
    r = _serve(str(repo), "--device", "cuda")
    assert r.returncode == 2 and "--device cuda" in r.stderr and "--device cpu" in r.stderr


def test_curl_example_works_and_auth_is_enforced(repo):
    env = {"ABSTAIN_API_KEY": "k3y", "ABSTAIN_POLL_INTERVAL_S": "0"}
    with server_process(repo, env=env) as (url, proc):
        for path in ("/v1/models/clf/predict", "/v2/models/clf/infer", "/v2/models/clf"):
            r = httpx.post(url + path, json={}) if "models/clf/" in path else httpx.get(url + path)
            assert r.status_code == 401 and "Bearer" in r.json()["error"], path
            assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(url + "/v2/health/ready").status_code == 200    # health stays open
        line, seen = "", []
        while "try: curl" not in line:
            line = proc.stdout.readline()
            assert line, "the server printed no curl example"
            seen.append(line)
        assert any(ln.startswith("decision store: off") for ln in seen), seen   # no loop: says so
        assert any(ln.startswith("review API: off") for ln in seen), seen
        cmd = line.split("try: ", 1)[1].strip().replace("$ABSTAIN_API_KEY", "k3y")
        assert url + "/v1/models/clf/predict" in cmd
        r = subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=30)
        assert '"predictions":[{"label":' in r.stdout, r.stdout + r.stderr


def test_start_up_names_the_loop_and_gives_every_example_model_a_curl_line(tmp_path):
    make_version(tmp_path / "models", "clf", 1, seed=1)
    vdir = make_version(tmp_path / "models", "other", 1, seed=5)
    (vdir / "example.json").write_text('{"source": "a row", "instances": [[0.5, 0, 0, 0, 0, 0, 0, 1]]}')
    args = ("--state-dir", str(tmp_path / "state"), "--audit-rate", "0.1",
            "--poll-interval-s", "0")
    with server_process(tmp_path / "models", *args, env={"ABSTAIN_REVIEWER_KEY": "rev"}) as (url, proc):
        lines: list[str] = []
        while sum(ln.startswith("score: ") for ln in lines) < 2:
            line = proc.stdout.readline()
            assert line, "the server stopped printing: " + "".join(lines)
            lines.append(line.rstrip("\n"))
        assert (f"decision store: SQLite under {tmp_path / 'state'} (every decision recorded; kept "
                "until deleted (no --retention-days))") in lines
        assert any(ln.startswith("audits: 10% of samples") for ln in lines), lines
        review = next(ln for ln in lines if ln.startswith("review API: "))
        assert review.startswith("review API: on") and "with the reviewer key as Bearer" in review
        assert "example requests for other/1 (a row):" in lines
        cmd = next(ln for ln in lines if ln.startswith("try: curl") and "/v1/models/other/" in ln)
        r = subprocess.run(shlex.split(cmd.split("try: ", 1)[1]), capture_output=True, text=True,
                           timeout=30)
        assert '"predictions":[{"label":' in r.stdout, r.stdout + r.stderr
        queue = httpx.get(url + "/v1/review/queue", headers={"Authorization": "Bearer rev"})
        assert queue.status_code == 200                         # what the line said is on, is on


def test_sigterm_drains_in_flight_requests(repo):
    with server_process(repo, "--max-batch-size", "1", "--poll-interval-s", "0") as (url, proc):
        results: list[int] = []

        def call():
            r = httpx.post(url + "/v1/models/slow/predict", json={"instances": [[0.5] * 8]},
                           timeout=60)
            results.append(r.status_code)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        # Wait until all four are queued or running in the server (each run takes ~0.2 s), so
        # the signal arrives with four requests in flight however loaded the machine is.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = httpx.get(url + "/v2/models/slow/stats", timeout=5).json()["model_stats"][0]
            if stats["requests"] >= 4:
                break
            time.sleep(0.01)
        assert stats["requests"] == 4 and stats["runs"] < 4, stats
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/healthz", timeout=2)        # no new connections while draining
        for t in threads:
            t.join(60)
        assert proc.wait(60) in (0, -signal.SIGTERM)   # uvicorn re-raises the signal it handled
        assert results == [200] * 4
