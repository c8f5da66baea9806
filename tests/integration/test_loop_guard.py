"""The risk guard on a real SQLite store: the change detector's stream in label-arrival order, an
alarm from the live-risk bound or from a jump after calm, keep vs defer, and retired epochs."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from loop_support import submit_batch
from prometheus_client import CollectorRegistry, generate_latest

from serve.feedback.gauges import LoopMetrics
from serve.feedback.guard import PREFIX, RiskGuard, active_alarms
from serve.feedback.recorder import Recorder
from serve.feedback.store import Store

SHA, NEW = "c" * 64, "d" * 64


def _store_with(tmp_path, errors: list[int], target: float = 0.1, sha: str = SHA) -> Store:
    """Accepted, audited samples labelled in order; ``errors[i]`` = 1: the i-th label is wrong."""
    rec = Recorder(Store(tmp_path / "state"), metrics=LoopMetrics(CollectorRegistry()),
                   flush_interval_s=0.02).start()
    n = len(errors)
    ids = submit_batch(rec, n, rejects=np.zeros(n, bool), audit=np.ones(n, bool), sha=sha,
                       target_risk=target, prefix=f"{sha[:2]}-")
    assert rec.flush(10)
    rec.close()
    store = Store(tmp_path / "state")
    for i, (rid, e) in enumerate(zip(ids, errors, strict=True)):
        label = store.record(rid, 0)["label"]
        store.add_feedback(rid, 0, (label + e) % 4, "test", None, now=1000.0 + i)
    return store


def _guard(store: Store, policy: str, served: dict) -> tuple[RiskGuard, LoopMetrics]:
    metrics = LoopMetrics(CollectorRegistry())
    rec = Recorder(store, metrics=metrics)
    guard = RiskGuard(store, metrics, policy, rules=lambda: served)
    rec.served, rec.on_risk = guard.served, guard.check
    rec.maintain()
    return guard, metrics


def test_audit_outcomes_follow_label_arrival_not_sample_order(tmp_path) -> None:
    store = _store_with(tmp_path, [0, 1, 0, 0, 1])
    assert store.audit_outcomes("clf", "1", SHA) == [0, 1, 0, 0, 1]
    rid = "cc-0"                                   # re-label order: the first sample's label
    with store._tx(write=True) as cur:             # arrives last
        cur.execute("UPDATE feedback SET ts = 2000 WHERE request_id = ?", (rid,))
    assert store.audit_outcomes("clf", "1", SHA) == [1, 0, 0, 1, 0]
    assert store.audit_outcomes("clf", "1", NEW) == []


@pytest.mark.parametrize("policy", ["keep", "defer"])
def test_a_live_risk_alarm_defers_only_with_defer(tmp_path, policy, caplog) -> None:
    store = _store_with(tmp_path, [1] * 12 + [0] * 8, target=0.1)      # 60% wrong at r* = 0.1
    rule = SimpleNamespace(force_defer=False)
    with caplog.at_level(logging.WARNING, logger="serve.feedback.guard"):
        guard, metrics = _guard(store, policy, {("clf", "1", SHA): rule})
    assert rule.force_defer == (policy == "defer")
    text = generate_latest(metrics.registry).decode()
    assert 'abstain_risk_alarm_active{model="clf",version="1"} 1.0' in text
    (line,) = [r.getMessage() for r in caplog.records]
    assert "live-risk alarm on clf/1" in line and "lower bound" in line
    (alarm,) = active_alarms(store)
    assert alarm["policy"] == policy and alarm["calibration_sha256"] == SHA


def test_a_jump_after_calm_alarms_through_the_detector_before_the_bound(tmp_path) -> None:
    rng = np.random.default_rng(3)
    r = 0.02
    errors = np.r_[rng.random(2000) < 0.5 * r, rng.random(450) < 4 * r].astype(int).tolist()
    store = _store_with(tmp_path, errors, target=r)
    rule = SimpleNamespace(force_defer=False)
    guard, metrics = _guard(store, "defer", {("clf", "1", SHA): rule})
    (alarm,) = active_alarms(store)
    assert rule.force_defer and len(alarm["reasons"]) == 1
    assert alarm["reasons"][0].startswith("risk-change detector fired at labelled audit")
    at = int(alarm["reasons"][0].split("audit ")[1].split()[0])
    assert 2000 < at <= 2450
    text = generate_latest(metrics.registry).decode()
    assert f'abstain_risk_change_detected{{calibration="{SHA[:12]}",model="clf",version="1"}} 1.0' in text
    assert 'abstain_live_risk_status{calibration="cccccccccccc",model="clf",version="1"} 3.0' not in text


def test_a_new_calibration_clears_the_alarm_and_retires_the_old_series(tmp_path) -> None:
    store = _store_with(tmp_path, [1] * 12 + [0] * 8, target=0.1)
    old_rule, new_rule = SimpleNamespace(force_defer=False), SimpleNamespace(force_defer=False)
    served = {("clf", "1", SHA): old_rule}
    guard, metrics = _guard(store, "defer", served)
    assert old_rule.force_defer and active_alarms(store)
    served.clear()
    served[("clf", "1", NEW)] = new_rule                    # hot reload: a new calibration
    guard.rules = lambda: served
    rec = Recorder(store, metrics=metrics)
    rec.served, rec.on_risk = guard.served, guard.check
    rec.maintain()
    assert not new_rule.force_defer and active_alarms(store) == []
    text = generate_latest(metrics.registry).decode()
    assert f'calibration="{SHA[:12]}"' not in text             # the old epoch's series are gone
    assert 'abstain_risk_alarm_active{model="clf",version="1"} 0.0' in text
    stored = json.loads(store.get_value(f"{PREFIX}clf/1/{SHA}"))
    assert stored["active"] is False and "cleared" in stored
