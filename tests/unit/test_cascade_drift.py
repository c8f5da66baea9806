"""The per-stage deferral-drift test of a cascade (serve/monitoring/cascade_metrics.py), on a real
Prometheus registry: each stage's acceptance among the samples reaching it, against the share
its certification measured there."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from serve.monitoring.cascade_metrics import CascadeMetrics

# 2000 certification samples: stage 1 accepts 400 of 2000 (0.2), stage 2 accepts 1440 of the
# 1600 that reach it (0.9).
ROWS = [{"stage": 1, "reach_share": 1.0, "accepted": 400},
        {"stage": 2, "reach_share": 0.8, "accepted": 1440}]


def _value(reg: CollectorRegistry, name: str, stage: int) -> float:
    for fam in reg.collect():
        for s in fam.samples:
            if s.name == name and s.labels["stage"] == str(stage):
                return s.value
    raise AssertionError(f"{name} stage {stage} not exported")


def _requests(hook, rng, n: int, p1: float, p2: float, size: int = 10) -> None:
    for _ in range(n // size):
        a1 = int(rng.binomial(size, p1))
        a2 = int(rng.binomial(size - a1, p2))
        hook([size, size - a1], [a1, a2], [size - a1, size - a1 - a2], [0.001, 0.002])


def test_routing_as_certified_is_quiet_and_a_shifted_stage_is_flagged_alone() -> None:
    reg = CollectorRegistry()
    hook = CascadeMetrics(reg).hook("casc", "1", ROWS, 2000, (500, 0.001, 50))
    assert np.isnan(_value(reg, "abstain_cascade_stage_drift_p_value", 2))
    rng = np.random.default_rng(0)
    _requests(hook, rng, 3000, 0.2, 0.9)
    for k in (1, 2):
        assert _value(reg, "abstain_cascade_stage_drift_p_value", k) > 0.001
        assert _value(reg, "abstain_cascade_stage_drift_detected", k) == 0
    cov2 = _value(reg, "abstain_cascade_stage_window_coverage", 2)
    assert abs(cov2 - 0.9) < 0.05
    # Stage 2 now accepts 75 % of what reaches it (harder inputs): only stage 2 is flagged.
    _requests(hook, rng, 3000, 0.2, 0.75)
    assert _value(reg, "abstain_cascade_stage_drift_detected", 2) == 1
    assert _value(reg, "abstain_cascade_stage_drift_p_value", 2) < 1e-6
    assert _value(reg, "abstain_cascade_stage_drift_detected", 1) == 0
    assert "abstain_cascade_stage_window_coverage" in generate_latest(reg).decode()


def test_without_a_calibration_there_is_no_drift_test() -> None:
    reg = CollectorRegistry()
    hook = CascadeMetrics(reg).hook("casc", "1")
    hook([10, 8], [2, 7], [8, 1], [0.001, 0.001])
    assert "abstain_cascade_stage_drift_p_value{" not in generate_latest(reg).decode()
