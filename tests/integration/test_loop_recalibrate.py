"""`abstain calibrate MODEL --from-feedback STORE`: audited labels only, provenance, new epoch."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry
from server_support import ROOT, make_version

from serve.calibration.artifact import load_calibration, save_calibration
from serve.feedback.gauges import LoopMetrics
from serve.feedback.recorder import Recorder
from serve.feedback.store import Store


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serve.cli.main", "calibrate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _traffic(store_dir: Path, sha: str, n: int, seed: int) -> None:
    """n served samples whose error probability falls with the score; 40% audited and labelled.
    Every deferred-only sample is labelled WRONG: if they leaked into certification, the
    certified risk would explode."""
    rng = np.random.default_rng(seed)
    rec = Recorder(Store(store_dir), audit_rate=0.4, seed=seed + 1000, metrics=LoopMetrics(CollectorRegistry()))
    rec.start()
    scores = rng.uniform(0.25, 1.0, n)
    pred = rng.integers(0, 4, n)
    wrong = rng.random(n) < 0.6 * (1 - scores) ** 2
    truth = np.where(wrong, (pred + 1) % 4, pred)
    reject = scores < 0.6
    audit = rec.audit(n)
    ids = [f"q{seed}-{i}" for i in range(n)]
    rec.submit("clf", "1", sha, ids, np.zeros(n, np.int64), pred, scores, reject, audit,
               class_names=["ant", "bee", "cat", "dog"], target_risk=0.1)
    assert rec.flush(30)
    rec.close()
    store = Store(store_dir)
    for i in range(n):
        if audit[i]:
            store.add_feedback(ids[i], 0, int(truth[i]), "test", None)
        elif reject[i]:
            store.add_feedback(ids[i], 0, int((pred[i] + 1) % 4), "test", None)
    store.close()


def test_recalibrate_from_audited_feedback_writes_a_new_calibration(tmp_path: Path) -> None:
    vdir = make_version(tmp_path / "models", "clf", 1, seed=1)
    old = dataclasses.replace(load_calibration(vdir), probability_temperature=0.5)
    save_calibration(old, vdir)                     # probabilities at their own T: kept as well
    state = tmp_path / "state"
    _traffic(state, old.sha256, 6000, seed=2)
    res = _cli(str(vdir), "--from-feedback", str(state))
    assert res.returncode == 0, res.stderr
    assert "labelled audited samples" in res.stdout and "deferred-only labels ignored" in res.stdout
    new = load_calibration(vdir)
    assert new.sha256 != old.sha256 and new.threshold is not None
    assert (new.score, new.temperature, new.target_risk, new.delta) == (old.score, old.temperature,
                                                                        old.target_risk, old.delta)
    assert new.probability_temperature == 0.5
    assert new.data["source"] == "feedback" and new.data["lineage"] == [old.sha256]
    assert 2000 < new.data["n"] < 2800 and new.data["deferred_labels_ignored"] > 1000
    assert new.risk_upper_bound <= new.target_risk
    # the true risk of the new threshold on this traffic: P(wrong | s ≥ θ), by integration
    s = np.linspace(new.threshold, 1.0, 100_001)
    assert float(np.mean(0.6 * (1 - s) ** 2)) <= new.target_risk
    # a second recalibration follows the lineage: samples of both epochs count
    _traffic(state, new.sha256, 1000, seed=3)
    assert _cli(str(vdir), "--from-feedback", str(state)).returncode == 0
    newer = load_calibration(vdir)
    assert newer.data["lineage"] == [old.sha256, new.sha256] and newer.data["n"] > new.data["n"]


def test_recalibrate_without_audited_labels_is_a_clear_error(tmp_path: Path) -> None:
    vdir = make_version(tmp_path / "models", "clf", 1, seed=1)
    before = (vdir / "calibration.json").read_text()
    res = _cli(str(vdir), "--from-feedback", str(tmp_path / "state"))
    assert res.returncode == 2
    assert "no labelled audited samples of clf/1" in res.stderr and "Traceback" not in res.stderr
    assert (vdir / "calibration.json").read_text() == before
    assert json.loads(before)["threshold"] == 0.6
