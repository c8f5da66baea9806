"""A real Prometheus server scrapes a real abstain server (uvicorn on loopback) under load.

The model is a small linear ONNX classifier built here with its calibration measured on
in-distribution samples, so the test knows which inputs are "familiar" (mostly accepted) and which
are shifted (noise near the decision boundaries: mostly deferred).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from serve.calibration.artifact import new_calibration, save_calibration
from serve.scores import create_score
from serve.server.runtime import OnnxModel

D, K = 8, 3
QS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
CENTRES = np.random.default_rng(0).normal(0.0, 1.0, (K, D)).astype(np.float32)  # (K, D)


def in_distribution(rng: np.random.Generator, n: int) -> np.ndarray:
    y = rng.integers(0, K, n)
    return (CENTRES[y] + rng.normal(0.0, 0.9, (n, D))).astype(np.float32)   # (n, D)


def shifted(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(0.0, 0.05, (n, D)).astype(np.float32)                 # near the origin


def build_model(model_dir: Path) -> float:
    """Write model.onnx + calibration.json; return the certified coverage."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model_dir.mkdir(parents=True)
    w = (CENTRES.T * 3.0).astype(np.float32)                       # (D, K): nearest-centre logits
    b = (-1.5 * (CENTRES ** 2).sum(axis=1)).astype(np.float32)     # (K,)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["z"]), helper.make_node("Add", ["z", "b"], ["logits"])],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", D])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", K])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"class_names": json.dumps(["a", "b", "c"]), "input_shape": json.dumps([D]),
            "input_dtype": "float32", "preprocessing": json.dumps({"kind": "none"}), "loss": "ce",
            "alpha": "0", "model": "linear", "data_spec": "synthetic", "data_fingerprint": "0" * 64,
            "abstain_version": "0.1.0", "config": "{}"}
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(model_dir / "model.onnx"))
    ort_model = OnnxModel(model_dir / "model.onnx", device="cpu")
    x = in_distribution(np.random.default_rng(1), 6000)             # the certification sample
    s = create_score("msp")(ort_model.logits(x).astype(np.float64))
    threshold = float(np.quantile(s, 0.3))
    coverage = float((s >= threshold).mean())
    save_calibration(new_calibration(
        model_sha256=ort_model.sha256, score="msp", temperature=1.0, threshold=threshold,
        target_risk=0.1, delta=0.05, method="ltt", n_tune=0, n_cert=s.size, coverage=coverage,
        risk=0.05, risk_upper_bound=0.09, data_fingerprint="0" * 64,
        score_quantiles=[float(q) for q in np.quantile(s, QS)]), model_dir)
    return coverage


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str):
    end = time.monotonic() + timeout
    while True:
        try:
            got = check()
            if got:
                return got
        except (httpx.HTTPError, KeyError, IndexError):
            pass
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def stack(tmp_path: Path):
    """(abstain base URL, Prometheus base URL, certified coverage), both servers running."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("the prometheus binary is not installed: run `make sysdeps`")
    import uvicorn

    from serve.server.app import create_app
    from serve.server.settings import ServerSettings

    coverage = build_model(tmp_path / "models" / "lin" / "1")
    port, prom_port = free_port(), free_port()
    settings = ServerSettings(model_repository=tmp_path / "models", port=port, device="cpu",
                              poll_interval_s=0, warmup_batch_sizes=(1,), drift_window=200,
                              drift_alpha=0.001, max_batch_size=32)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n  - job_name: abstain\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{port}']\n")
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base, prom = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}"
    try:
        wait_until(lambda: httpx.get(base + "/readyz").status_code == 200, 30, "abstain /readyz")
        wait_until(lambda: httpx.get(prom + "/-/ready").status_code == 200, 30, "Prometheus /-/ready")
        yield base, prom, coverage
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        server.should_exit = True
        thread.join(15)


def query(prom: str, expr: str) -> float | None:
    r = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    res = r.json()["data"]["result"]
    return float(res[0]["value"][1]) if res else None


def send(base: str, batches: list[np.ndarray]) -> tuple[int, int]:
    """POST each batch concurrently; return (predictions, deferred) seen in the responses."""
    with httpx.Client(timeout=30) as client:
        def one(x: np.ndarray) -> list[bool]:
            r = client.post(base + "/v1/models/lin/predict", json={"instances": x.tolist()})
            assert r.status_code == 200, r.text
            return [p["reject"] for p in r.json()["predictions"]]

        with ThreadPoolExecutor(8) as pool:
            rejects = [r for batch in pool.map(one, batches) for r in batch]
    return len(rejects), sum(rejects)


def test_prometheus_sees_the_deferral_ratio_and_the_drift(stack) -> None:
    base, prom, coverage = stack
    rng = np.random.default_rng(7)
    # 300 requests of 1–4 instances: in-distribution with 3 % shifted inputs mixed in
    batches = []
    for _ in range(300):
        n = int(rng.integers(1, 5))
        x = in_distribution(rng, n)
        noisy = rng.random(n) < 0.03
        x[noisy] = shifted(rng, int(noisy.sum()))
        batches.append(x)
    total, deferred = send(base, batches)
    assert 0.15 < deferred / total < 0.5

    # a scrape after the load has completed: Prometheus holds the final counts
    wait_until(lambda: query(prom, "sum(abstain_predictions_total)") == total, 20,
               f"Prometheus to scrape all {total} predictions")
    ratio = query(prom, 'sum(abstain_predictions_total{decision="deferred"}) '
                        "/ sum(abstain_predictions_total)")
    assert ratio == pytest.approx(deferred / total, rel=1e-12, abs=0)
    assert query(prom, 'abstain_certified_coverage{model="lin", version="1"}') == pytest.approx(coverage)
    assert query(prom, 'max(abstain_drift_detected{model="lin"})') == 0
    assert query(prom, "sum(abstain_requests_total{code=\"200\", endpoint=\"/v1/models/{model_name}/predict\"})") == 300
    assert query(prom, "sum(abstain_batch_size_count)") >= 1
    assert query(prom, "abstain_inflight_requests") == 0

    # the real /metrics body passes promtool's linter
    promtool = shutil.which("promtool")
    if promtool:
        body = httpx.get(base + "/metrics").content
        res = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()

    # shifted inputs: the deferral rate jumps, the window test flags it, Prometheus sees the flag
    n_shift, d_shift = send(base, [shifted(rng, 5) for _ in range(60)])
    assert d_shift / n_shift > 0.9
    wait_until(lambda: query(prom, 'max(abstain_drift_detected{model="lin", version="1"})') == 1, 20,
               "abstain_drift_detected to reach Prometheus")
    assert query(prom, 'max(abstain_window_coverage{model="lin"})') < 0.1
    assert query(prom, 'min(abstain_drift_p_value{model="lin"})') < 0.001


def test_workers_share_metrics_aggregated_on_scrape(tmp_path: Path) -> None:
    """`abstain serve --workers 2`: any worker's /metrics holds every worker's counts."""
    import os
    import sys

    build_model(tmp_path / "models" / "lin" / "1")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ABSTAIN_", "PROMETHEUS_"))}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prom-mp")
    abstain = str(Path(sys.executable).with_name("abstain"))
    proc = subprocess.Popen([abstain, "serve", str(tmp_path / "models"), "--port", str(port),
                             "--workers", "2", "--device", "cpu", "--poll-interval-s", "0",
                             "--log-level", "warning"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(base + "/readyz").status_code == 200, 60, "workers to be ready")
        rng = np.random.default_rng(3)
        total = deferred = 0
        for _ in range(40):   # a new connection each time: the workers share the accepts
            x = in_distribution(rng, 3)
            r = httpx.post(base + "/v1/models/lin/predict", json={"instances": x.tolist()},
                           headers={"connection": "close"})
            assert r.status_code == 200, r.text
            rej = [p["reject"] for p in r.json()["predictions"]]
            total, deferred = total + len(rej), deferred + sum(rej)

        def scrape() -> dict[tuple[str, frozenset], float]:
            from prometheus_client.parser import text_string_to_metric_families
            body = httpx.get(base + "/metrics", headers={"connection": "close"}).text
            return {(s.name, frozenset(s.labels.items())): s.value
                    for fam in text_string_to_metric_families(body) for s in fam.samples}

        for _ in range(6):    # whichever worker answers, it reports the sum over both
            got = scrape()
            mv = {"model": "lin", "version": "1"}
            acc = got[("abstain_predictions_total", frozenset({**mv, "decision": "accepted"}.items()))]
            dfr = got[("abstain_predictions_total", frozenset({**mv, "decision": "deferred"}.items()))]
            assert (acc + dfr, dfr) == (total, deferred)
            pids = {dict(k)["pid"] for (n, k) in got if n == "abstain_window_samples"}
            assert len(pids) == 2        # both workers' drift gauges, each with its pid
            assert sum(v for (n, k), v in got.items() if n == "abstain_window_samples") == total
            assert got[("abstain_inflight_requests", frozenset())] == 0
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode in (0, -15), err.decode()[-2000:]
