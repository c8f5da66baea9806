"""Multiprocess mode: two worker processes share a directory; a scrape aggregates both.

Each worker runs in its own interpreter (prometheus-client's value class is process-global), the
way `abstain serve --workers N` runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

from prometheus_client.parser import text_string_to_metric_families

WORKER = textwrap.dedent("""
    import sys, numpy as np
    from serve.calibration.artifact import new_calibration
    from serve.monitoring.monitor import Monitor, setup_multiprocess
    n_acc, n_def, inflight, close, setup = (int(a) for a in sys.argv[1:6])
    if setup:   # what the parent of the workers does before starting them
        setup_multiprocess(sys.argv[6])
    cal = new_calibration(model_sha256="ab" * 32, score="msp", temperature=1.0, threshold=0.5,
                          target_risk=0.05, delta=0.05, method="ltt", n_tune=100, n_cert=100,
                          coverage=0.8, risk=0.03, risk_upper_bound=0.049, data_fingerprint="f",
                          score_quantiles=[0.25, 0.5, 0.75])
    mon = Monitor(drift_window=10, drift_every=1)
    assert mon.multiprocess
    mon.model_loaded("m", "1", "CPUExecutionProvider", cal, "ab" * 32)
    scores = np.r_[np.full(n_acc, 0.9), np.full(n_def, 0.1)]
    mon.decisions("m", "1", np.zeros(scores.size, int), ["a", "b"], scores, scores < 0.5)
    mon.batch("m", "1", scores.size, [0.001] * scores.size, 0.002)
    for _ in range(inflight):
        mon.request_started()
    mon.queue_depth("m", "1", 3)
    if close:
        mon.close()
    else:
        sys.stdout.buffer.write(mon.render()[0])
""")


def run_worker(tmp_path, *args: int, setup: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if not setup:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    res = subprocess.run([sys.executable, "-c", WORKER, *map(str, args), str(int(setup)), str(tmp_path)],
                         env=env,
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()


def test_two_workers_are_aggregated_on_scrape(tmp_path) -> None:
    (tmp_path / "counter_999.db").write_bytes(b"stale")    # from a previous run: must go
    # worker A: sets the directory up (no env var before), 3 accepted, 7 deferred, exits cleanly
    run_worker(tmp_path, 3, 7, 2, 1, setup=True)
    assert not (tmp_path / "counter_999.db").exists()
    body = run_worker(tmp_path, 10, 0, 5, 0)  # worker B: 10 accepted, 5 requests still in flight
    got: dict[tuple[str, frozenset], float] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            got[(s.name, frozenset(s.labels.items()))] = s.value
    mv = {"model": "m", "version": "1"}

    def v(name: str, **labels: str) -> float:
        return got[(name, frozenset(labels.items()))]

    # counters and histograms: summed over both workers, dead or alive
    assert v("abstain_predictions_total", decision="accepted", **mv) == 13
    assert v("abstain_predictions_total", decision="deferred", **mv) == 7
    assert v("abstain_confidence_score_bucket", le="0.25", **mv) == 7
    assert v("abstain_confidence_score_bucket", le="+Inf", **mv) == 20
    assert v("abstain_batch_size_count", **mv) == 2
    assert v("abstain_queue_wait_seconds_count", **mv) == 20
    # livesum gauges: only the live worker B counts (A marked itself dead on close)
    assert v("abstain_inflight_requests") == 5
    assert v("abstain_queue_depth", **mv) == 3
    # most-recent gauges: one series, no pid
    assert v("abstain_threshold", **mv) == 0.5
    # drift is per worker: B's window is full (10 of 10 accepted vs 0.8) and carries its pid
    drift = {dict(k)["pid"]: val for (n, k), val in got.items() if n == "abstain_window_coverage"}
    assert list(drift.values()) == [1.0]
    info = [dict(k) for (n, k), val in got.items() if n == "abstain_model_info" and val == 1]
    assert len(info) == 1 and info[0]["provider"] == "CPUExecutionProvider"
    promtool = shutil.which("promtool")
    if promtool:
        res = subprocess.run([promtool, "check", "metrics"], input=body.encode(), capture_output=True,
                             timeout=30)
        assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
