"""deploy/prometheus and deploy/grafana: valid for the real tools, and only about metrics we export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve.calibration.artifact import new_calibration
from serve.feedback.gauges import LoopMetrics
from serve.feedback.risk import live_risk
from serve.monitoring.monitor import Monitor

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
DASHBOARD = ROOT / "deploy/grafana/abstain-dashboard.json"
METRIC = re.compile(r"\babstain_[a-z0-9_]+")


def exported_sample_names() -> set[str]:
    """Every sample name a Monitor exposes once each hook has been called."""
    cal = new_calibration(model_sha256="ab" * 32, score="msp", temperature=1.0, threshold=0.5,
                          target_risk=0.05, delta=0.05, method="ltt", n_tune=10, n_cert=10,
                          coverage=0.8, risk=0.0, risk_upper_bound=0.04, data_fingerprint="f",
                          score_quantiles=[0.1, 0.5, 0.9])
    mon = Monitor()
    mon.model_loaded("m", "1", "CPUExecutionProvider", cal, "ab" * 32)
    mon.request_started()
    mon.request_finished("/v1/models/{model}/predict", "POST", 200, 0.01, "m", "1")
    mon.error("bad_shape", "m", "1")
    mon.shed("m", "1", 503)
    mon.queue_depth("m", "1", 1)
    mon.batch("m", "1", 2, [0.001, 0.002], 0.001)
    mon.decisions("m", "1", np.array([0, 1]), ["a", "b"], np.array([0.2, 0.8]), np.array([True, False]))
    loop = LoopMetrics(mon.registry)                     # the feedback loop's series (serve/feedback)
    loop.set_risk(live_risk("m", "1", "ab" * 32, 0.05, 1, 100, 2, 0.05))
    loop.dropped.labels("queue_full").inc()
    loop.alarm_active.labels("m", "1").set(0)
    loop.change.labels("m", "1", "ab" * 6).set(0.0)
    loop.change_detected.labels("m", "1", "ab" * 6).set(0)
    names = set()
    for fam in text_string_to_metric_families(mon.render()[0].decode()):
        names |= {s.name for s in fam.samples}
    return names


def exprs_in_dashboard(node: object) -> list[str]:
    if isinstance(node, dict):
        out = [node["expr"]] if isinstance(node.get("expr"), str) else []
        for key in ("panels", "targets", "rows", "templating", "list", "query"):
            if key in node:
                out += exprs_in_dashboard(node[key])
        if isinstance(node.get("definition"), str):
            out.append(node["definition"])
        return out
    if isinstance(node, list):
        return [e for item in node for e in exprs_in_dashboard(item)]
    return []


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed: run `make sysdeps`")
    return path


def test_promtool_check_rules_passes() -> None:
    res = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, timeout=30)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    assert b"SUCCESS: 9 rules found" in res.stdout


def test_alerts_fire_on_synthetic_series(tmp_path: Path) -> None:
    """`promtool test rules`: drift, deferral and shed alerts fire when they should, and only then."""
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    (tmp_path / "test.yml").write_text(textwrap.dedent("""
        rule_files: [alerts.yml]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: 'abstain_drift_detected{model="m", version="1", pid="11"}'
                values: '0 0 1 1 1 1 1 1 1 1'
              - series: 'abstain_drift_detected{model="m", version="1", pid="12"}'
                values: '0x10'
              - series: 'abstain_certified_coverage{model="m", version="1"}'
                values: '0.8x40'
              - series: 'abstain_predictions_total{model="m", version="1", decision="accepted"}'
                values: '0+60x40'
              - series: 'abstain_predictions_total{model="m", version="1", decision="deferred"}'
                values: '0+40x40'
              - series: 'abstain_requests_total{model="m", version="1", endpoint="/v1/models/{model}/predict", method="POST", code="200"}'
                values: '0+90x40'
              - series: 'abstain_requests_total{model="m", version="1", endpoint="/v1/models/{model}/predict", method="POST", code="503"}'
                values: '0+10x40'
              - series: 'abstain_requests_shed_total{model="m", version="1", code="503"}'
                values: '0+10x40'
              - series: 'abstain_live_risk_status{model="m", version="1", calibration="abc"}'
                values: '0 0 2 2 3 3 3 3 3 3'
              - series: 'abstain_risk_alarm_active{model="m", version="1"}'
                values: '0 0 0 1 1 1 1 1 1 1'
              - series: 'abstain_shift_detected{model="m", version="1", pid="11"}'
                values: '0 1 1 1 1 1 1 1 1 1'
            alert_rule_test:
              - eval_time: 3m
                alertname: AbstainCoverageDrift
                exp_alerts: []
              - eval_time: 8m
                alertname: AbstainCoverageDrift
                exp_alerts:
                  - exp_labels: {severity: critical, model: m, version: "1"}
                    exp_annotations:
                      summary: "Coverage drift on m/1"
                      description: "The acceptance rate over the drift window differs from the certified coverage (binomial p below alpha) for 5 minutes. The selective-risk guarantee assumes the calibration distribution; re-calibrate on recent labelled data or investigate the shift."
              - eval_time: 4m
                alertname: AbstainLiveRiskAlarm
                exp_alerts: []
              - eval_time: 6m
                alertname: AbstainLiveRiskAlarm
                exp_alerts:
                  - exp_labels: {severity: critical, model: m, version: "1", calibration: abc}
                    exp_annotations:
                      summary: "Live selective risk of m/1 is above its target"
                      description: "The lower end of the live-risk confidence sequence (labelled audited accepted samples) exceeds the certified target risk. Defer more (raise the threshold) or recalibrate: abstain calibrate MODEL --from-feedback STORE."
              - eval_time: 2m
                alertname: AbstainRiskAlarmActive
                exp_alerts: []
              - eval_time: 3m
                alertname: AbstainRiskAlarmActive
                exp_alerts:
                  - exp_labels: {severity: critical, model: m, version: "1"}
                    exp_annotations:
                      summary: "Risk alarm on m/1"
                      description: "The served calibration's live risk alarms (bound above r* or a detected jump; the review queue's risk_alarms say which). Recalibrate on audits drawn since the change; a new calibration clears it."
              - eval_time: 0m
                alertname: AbstainLabelFreeShift
                exp_alerts: []
              - eval_time: 1m
                alertname: AbstainLabelFreeShift
                exp_alerts:
                  - exp_labels: {severity: warning, model: m, version: "1"}
                    exp_annotations:
                      summary: "Acceptance rate of m/1 shifted"
                      description: "The live acceptance rate is no longer the certified one (anytime-valid test, its false-alarm rate stated). Watch the live risk; audit more while labels accumulate."
              - eval_time: 30m
                alertname: AbstainHighDeferralRate
                exp_alerts:
                  - exp_labels: {severity: warning, model: m, version: "1"}
                    exp_annotations:
                      summary: "m/1 defers 40% of predictions"
                      description: "The deferral ratio over 10 minutes is more than 10 points above the certified deferral rate (1 − abstain_certified_coverage). Check the input distribution."
              - eval_time: 30m
                alertname: AbstainLoadShed
                exp_alerts:
                  - exp_labels: {severity: warning, model: m, version: "1"}
                    exp_annotations:
                      summary: "m/1 sheds 10% of requests"
                      description: "Scale out (more replicas or workers) or raise the queue size / deadline."
              - eval_time: 30m
                alertname: AbstainHigh5xxRatio
                exp_alerts:
                  - exp_labels: {severity: critical, model: m, version: "1"}
                    exp_annotations:
                      summary: "10% of requests to m/1 fail with 5xx"
    """))
    res = subprocess.run([promtool(), "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def test_rules_and_dashboard_reference_only_exported_metrics() -> None:
    exported = exported_sample_names()
    dash = json.loads(DASHBOARD.read_text())
    exprs = exprs_in_dashboard(dash)
    assert len(exprs) >= 15
    used_dash = {m for e in exprs for m in METRIC.findall(e)}
    used_alerts = set(METRIC.findall(ALERTS.read_text()))
    unknown = (used_dash | used_alerts) - exported
    assert not unknown, f"not exported by serve.monitoring.monitor: {sorted(unknown)}"
    # the panels the issue asks for
    for needed in ("abstain_predictions_total", "abstain_certified_coverage", "abstain_drift_p_value",
                   "abstain_drift_detected", "abstain_request_duration_seconds_bucket",
                   "abstain_batch_size_bucket", "abstain_queue_depth", "abstain_inflight_requests"):
        assert needed in used_dash, needed
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
