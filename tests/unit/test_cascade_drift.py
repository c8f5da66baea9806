"""The per-stage deferral-drift test of a cascade (serve/monitoring/cascade_metrics.py), on a real
Prometheus registry: each stage's acceptance among the samples reaching it, against the share
its certification measured there."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from serve.monitoring.cascade_metrics import CascadeMetrics

# 2000 certification samples: stage 1 accepts 400 of 2000 (0.2), stage 2 accepts 1440 of the
# 1600 that reach it (0.9).
ROWS = [{"stage": 1, "reach_share": 1.0, "accepted": 400},
        {"stage": 2, "reach_share": 0.8, "accepted": 1440}]


def _value(reg: CollectorRegistry, name: str, stage: int, **labels: str) -> float:
    for fam in reg.collect():
        for s in fam.samples:
            if s.name == name and s.labels["stage"] == str(stage) and \
                    all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"{name} stage {stage} {labels} not exported")


def _requests(hook, rng, n: int, p1: float, p2: float, size: int = 10) -> None:
    """``n`` samples in batches of ``size``: stage 1 accepts each with p1, stage 2 with p2."""
    for _ in range(n // size):
        a1 = rng.random(size) < p1
        hook(1, a1, [0.001] * size)
        if not a1.all():
            hook(2, rng.random(int((~a1).sum())) < p2, [0.002])


def test_routing_as_certified_is_quiet_and_a_shifted_stage_is_flagged_alone() -> None:
    reg = CollectorRegistry()
    metrics = CascadeMetrics(reg)
    hook = metrics.hook("casc", "1", ROWS, 2000, (500, 0.001, 50))
    assert np.isnan(_value(reg, "abstain_cascade_stage_drift_p_value", 2))
    rng = np.random.default_rng(0)
    _requests(hook, rng, 3000, 0.2, 0.9)
    assert np.isnan(_value(reg, "abstain_cascade_stage_drift_p_value", 2))   # queued, not applied
    metrics.flush()
    for k in (1, 2):
        assert _value(reg, "abstain_cascade_stage_drift_p_value", k) > 0.001
        assert _value(reg, "abstain_cascade_stage_drift_detected", k) == 0
    cov2 = _value(reg, "abstain_cascade_stage_window_coverage", 2)
    assert abs(cov2 - 0.9) < 0.05
    # Stage 2 now accepts 75 % of what reaches it (harder inputs): only stage 2 is flagged.
    _requests(hook, rng, 3000, 0.2, 0.75)
    metrics.flush()
    assert _value(reg, "abstain_cascade_stage_drift_detected", 2) == 1
    assert _value(reg, "abstain_cascade_stage_drift_p_value", 2) < 1e-6
    assert _value(reg, "abstain_cascade_stage_drift_detected", 1) == 0
    assert "abstain_cascade_stage_window_coverage" in generate_latest(reg).decode()


def test_without_a_calibration_there_is_no_drift_test() -> None:
    reg = CollectorRegistry()
    metrics = CascadeMetrics(reg)
    hook = metrics.hook("casc", "1")
    hook(1, np.array([True] * 2 + [False] * 8), [0.001] * 10)
    hook(2, np.array([True] * 7 + [False]), [0.001, 0.002])
    metrics.flush()
    assert "abstain_cascade_stage_drift_p_value{" not in generate_latest(reg).decode()
    # One call per batch of a stage (applied at the flush): its samples answered and deferred,
    # one duration per request.
    total = "abstain_cascade_stage_samples_total"
    assert [_value(reg, total, k, outcome=o) for k in (1, 2) for o in ("answered", "deferred")] \
        == [2, 8, 7, 1]
    count = "abstain_cascade_stage_duration_seconds_count"
    assert [_value(reg, count, k) for k in (1, 2)] == [10, 2]
    assert _value(reg, "abstain_cascade_stage_duration_seconds_sum", 2) == pytest.approx(0.003)
