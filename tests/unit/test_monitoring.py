"""Monitor: counts, vectorised histograms, per-version score buckets, drift gauges, exposition."""

from __future__ import annotations

import logging
import math
import shutil
import subprocess

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serve.calibration.artifact import Calibration, new_calibration
from serve.monitoring.model_series import score_buckets
from serve.monitoring.monitor import Monitor

CLASSES = ["zero", "one", "two", "three"]


def make_cal(threshold: float | None = 0.6, coverage: float = 0.8,
             quantiles: tuple[float, ...] = (0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)) -> Calibration:
    return new_calibration(model_sha256="ab" * 32, score="msp", temperature=1.3, threshold=threshold,
                           target_risk=0.05, delta=0.05, method="ltt", n_tune=500, n_cert=500,
                           coverage=coverage, risk=0.03, risk_upper_bound=0.049,
                           data_fingerprint="f" * 64, score_quantiles=list(quantiles))


def samples(mon: Monitor) -> dict[tuple[str, frozenset], float]:
    body, ctype = mon.render()
    assert ctype.startswith("text/plain; version=0.0.4")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(smp: dict, name: str, **labels: str) -> float:
    return smp[(name, frozenset(labels.items()))]


@pytest.fixture
def mon() -> Monitor:
    m = Monitor(drift_window=200, drift_alpha=0.001, drift_every=20)
    m.model_loaded("digits", "1", "CPUExecutionProvider", make_cal(), "ab" * 32)
    return m


def test_decision_and_class_counts_equal_the_batches(mon: Monitor) -> None:
    rng = np.random.default_rng(1)
    total_acc = total_def = 0
    per_class = np.zeros(4, dtype=int)
    for n in (1, 7, 64, 300):
        scores = rng.random(n)
        labels = rng.integers(0, 4, n)
        reject = scores < 0.6
        mon.decisions("digits", "1", labels, CLASSES, scores, reject)
        total_def += int(reject.sum())
        total_acc += int((~reject).sum())
        per_class += np.bincount(labels, minlength=4)
    s = samples(mon)
    mv = {"model": "digits", "version": "1"}
    assert value(s, "abstain_predictions_total", decision="accepted", **mv) == total_acc
    assert value(s, "abstain_predictions_total", decision="deferred", **mv) == total_def
    for k, name in enumerate(CLASSES):
        got = s.get(("abstain_predicted_class_total", frozenset({**mv, "class_name": name}.items())), 0)
        assert got == per_class[k]


def test_score_histogram_uses_calibration_quantiles_and_equals_reference_observe(mon: Monitor) -> None:
    rng = np.random.default_rng(2)
    scores = np.concatenate([rng.random(500), [0.6, 0.2, 0.99, 1.0, -3.0]])  # bounds hit exactly
    mon.decisions("digits", "1", np.zeros(scores.size, int), CLASSES, scores, scores < 0.6)
    ref = Histogram("ref", "", buckets=score_buckets(make_cal()), registry=(reg := CollectorRegistry()))
    for x in scores:
        ref.observe(x)
    want = {s.labels["le"]: s.value for fam in text_string_to_metric_families(generate_latest(reg).decode())
            for s in fam.samples if s.name == "ref_bucket"}
    s = samples(mon)
    got = {dict(k)["le"]: v for (n, k), v in s.items() if n == "abstain_confidence_score_bucket"}
    assert got == want
    assert set(got) == {"0.2", "0.35", "0.5", "0.6", "0.7", "0.8", "0.9", "0.95", "0.99", "+Inf"}
    assert value(s, "abstain_confidence_score_count", model="digits", version="1") == scores.size
    assert value(s, "abstain_confidence_score_sum", model="digits", version="1") == pytest.approx(scores.sum())


def test_each_version_keeps_its_own_score_buckets(mon: Monitor) -> None:
    mon.model_loaded("digits", "2", "CPUExecutionProvider", make_cal(threshold=1.5, quantiles=(1.0, 2.0)),
                     "cd" * 32)
    mon.decisions("digits", "2", np.array([0, 1]), CLASSES, np.array([0.5, 1.7]), np.array([True, False]))
    s = samples(mon)
    les = {dict(k)["version"]: set() for (n, k) in s if n == "abstain_confidence_score_bucket"}
    for (n, k) in s:
        if n == "abstain_confidence_score_bucket":
            les[dict(k)["version"]].add(dict(k)["le"])
    assert les["2"] == {"1.0", "1.5", "2.0", "+Inf"}
    assert "0.35" in les["1"]
    assert value(s, "abstain_confidence_score_bucket", model="digits", version="2", le="1.5") == 1


def test_gauges_and_info_describe_the_deployed_rule(mon: Monitor) -> None:
    mon.model_loaded("nothing", "3", "CUDAExecutionProvider", make_cal(threshold=None, coverage=0.0),
                     "ef" * 32)
    s = samples(mon)
    assert value(s, "abstain_threshold", model="digits", version="1") == 0.6
    assert value(s, "abstain_threshold", model="nothing", version="3") == math.inf   # defer all
    assert value(s, "abstain_target_risk", model="digits", version="1") == 0.05
    assert value(s, "abstain_certified_coverage", model="digits", version="1") == 0.8
    info = [dict(k) for (n, k) in s if n == "abstain_model_info"]
    d1 = next(i for i in info if i["model"] == "digits")
    assert d1["provider"] == "CPUExecutionProvider" and d1["model_sha256"] == "ab" * 32
    assert d1["calibration_sha256"] == make_cal().sha256 and d1["score"] == "msp"


def test_unload_removes_version_gauges_but_keeps_counters(mon: Monitor) -> None:
    mon.decisions("digits", "1", np.array([1]), CLASSES, np.array([0.9]), np.array([False]))
    mon.model_unloaded("digits", "1")
    s = samples(mon)
    names = {n for (n, k) in s if dict(k).get("version") == "1"}
    assert "abstain_threshold" not in names and "abstain_model_info" not in names
    assert "abstain_confidence_score_bucket" not in names
    assert value(s, "abstain_predictions_total", model="digits", version="1", decision="accepted") == 1


def test_requests_latency_inflight_errors_shed_batches(mon: Monitor) -> None:
    for _ in range(3):
        mon.request_started()
    mon.request_finished("/v1/models/{model}/predict", "POST", 200, 0.004, "digits", "1")
    mon.request_finished("/v1/models/{model}/predict", "POST", 503, 0.2, "digits", "1")
    mon.request_finished("/healthz", "GET", 200, 0.0001)          # not an inference request
    assert value(samples(mon), "abstain_inflight_requests") == 1
    mon.request_finished("/v1/models/{model}/predict", "POST", 200, 0.003, "digits", "1")
    mon.request_finished("/v1/models/{model}/predict", "POST", 404, 0.001, "digits", "1")  # extra
    mon.error("bad_shape", "digits", "1")
    mon.shed("digits", "1", 503)
    mon.queue_depth("digits", "1", 17)
    mon.batch("digits", "1", 5, [0.001, 0.002, 0.0021, 0.03, 7.0], 0.0015)
    s = samples(mon)
    mv = {"model": "digits", "version": "1"}
    assert value(s, "abstain_inflight_requests") == 0       # never negative
    ep = "/v1/models/{model}/predict"
    assert value(s, "abstain_requests_total", endpoint=ep, method="POST", code="200", **mv) == 2
    assert value(s, "abstain_requests_total", endpoint="/healthz", method="GET", code="200",
                 model="", version="") == 1
    assert value(s, "abstain_request_duration_seconds_count", endpoint=ep, code="200", **mv) == 2
    assert value(s, "abstain_request_duration_seconds_bucket", endpoint=ep, code="200", le="0.005",
                 **mv) == 2
    assert value(s, "abstain_request_duration_seconds_bucket", endpoint=ep, code="503", le="0.005",
                 **mv) == 0
    assert value(s, "abstain_errors_total", reason="bad_shape", **mv) == 1
    assert value(s, "abstain_requests_shed_total", code="503", **mv) == 1
    assert value(s, "abstain_queue_depth", **mv) == 17
    assert value(s, "abstain_batch_size_bucket", le="4.0", **mv) == 0
    assert value(s, "abstain_batch_size_bucket", le="8.0", **mv) == 1
    assert value(s, "abstain_queue_wait_seconds_count", **mv) == 5
    assert value(s, "abstain_queue_wait_seconds_bucket", le="0.002", **mv) == 2   # ≤ bound
    assert value(s, "abstain_queue_wait_seconds_bucket", le="5.0", **mv) == 4
    assert value(s, "abstain_queue_wait_seconds_sum", **mv) == pytest.approx(7.0351)
    assert value(s, "abstain_inference_duration_seconds_bucket", le="0.002", **mv) == 1


def test_monitors_have_separate_registries() -> None:
    a, b = Monitor(), Monitor()
    a.error("nan")
    assert value(samples(a), "abstain_errors_total", reason="nan", model="", version="") == 1
    assert ("abstain_errors_total", frozenset({"reason": "nan", "model": "", "version": ""}.items())) \
        not in samples(b)


def test_shifted_inputs_raise_the_drift_flag_and_log_once(mon: Monitor, caplog) -> None:
    rng = np.random.default_rng(3)
    mv = {"model": "digits", "version": "1"}

    def feed(p_accept: float, n: int = 40) -> None:
        s = rng.random(n)
        mon.decisions("digits", "1", rng.integers(0, 4, n), CLASSES, s, rng.random(n) >= p_accept)

    for _ in range(10):                    # 400 samples at the certified 80 %
        feed(0.8)
    s = samples(mon)
    assert value(s, "abstain_drift_detected", **mv) == 0
    assert value(s, "abstain_shift_detected", **mv) == 0
    assert value(s, "abstain_drift_p_value", **mv) > 0.001
    assert value(s, "abstain_window_samples", **mv) == 200
    with caplog.at_level(logging.INFO, logger="serve.monitoring"):
        for _ in range(10):                # noise inputs: most are deferred
            feed(0.2)
        s = samples(mon)
        assert value(s, "abstain_drift_detected", **mv) == 1
        assert value(s, "abstain_drift_p_value", **mv) < 1e-10
        assert value(s, "abstain_window_coverage", **mv) < 0.4
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        drift = [m for m in warnings if m.startswith("deferral-rate drift")]
        shift = [m for m in warnings if m.startswith("label-free shift")]
        assert len(drift) == 1 and "digits/1" in drift[0]
        assert len(shift) == 1 and "fewer accepted than certified" in shift[0]
        assert value(s, "abstain_shift_detected", **mv) == 1
        assert value(s, "abstain_shift_log_e", **mv) >= value(s, "abstain_shift_log_threshold", **mv)
        for _ in range(10):
            feed(0.8)
        s = samples(mon)
        assert value(s, "abstain_drift_detected", **mv) == 0
        assert value(s, "abstain_shift_detected", **mv) == 1     # anytime-valid: it stays
        assert any(r.levelno == logging.INFO and "cleared" in r.getMessage() for r in caplog.records)


def test_promtool_accepts_the_exposition(mon: Monitor, tmp_path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed: run `make sysdeps`")
    rng = np.random.default_rng(4)
    mon.model_loaded("nothing", "3", "CPUExecutionProvider", make_cal(threshold=None, coverage=0.0), "ef" * 32)
    mon.request_started()
    mon.request_finished("/v2/models/{model}/infer", "POST", 200, 0.01, "digits", "1")
    mon.batch("digits", "1", 3, [0.001, 0.002, 0.003], 0.001)
    mon.error("bad_shape", "digits", "1")
    mon.shed("digits", "1", 504)
    mon.queue_depth("digits", "1", 0)
    s = rng.random(300)
    mon.decisions("digits", "1", rng.integers(0, 4, 300), CLASSES, s, s < 0.6)
    body, _ = mon.render()
    res = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
