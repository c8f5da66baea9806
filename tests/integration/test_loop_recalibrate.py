"""`abstain calibrate MODEL --from-feedback STORE`: audited labels of the current epoch only, a dry
run unless --write, .bak and probe kept, unusable flags refused, unlabelled audits counted."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from server_support import make_version

from serve.calibration import probe
from serve.calibration.artifact import load_calibration, save_calibration
from serve.cli.main import main
from serve.feedback.gauges import LoopMetrics
from serve.feedback.recorder import Recorder
from serve.feedback.store import Store
from serve.server.model_version import load_version
from serve.server.runtime import OnnxModel


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., SimpleNamespace]:
    """`abstain calibrate ARGS` in this process (the console script's main, its exit code and
    output): the same code path as the command, without a 3 s interpreter start per call."""
    def run(*args: str) -> SimpleNamespace:
        capsys.readouterr()
        code = main(["calibrate", *args])
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)
    return run


def _traffic(store_dir: Path, sha: str, n: int, seed: int, unlabelled: float = 0.0) -> int:
    """n served samples whose error probability falls with the score; 40% audited, and each
    audit labelled unless it falls in the ``unlabelled`` share. Every deferred-only sample is
    labelled WRONG: if they leaked into certification, the certified risk would explode.
    Returns the number of audits."""
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
    skip = rng.random(n) < unlabelled
    for i in range(n):
        if audit[i] and not skip[i]:
            store.add_feedback(ids[i], 0, int(truth[i]), "test", None)
        elif reject[i] and not audit[i]:
            store.add_feedback(ids[i], 0, int((pred[i] + 1) % 4), "test", None)
    store.close()
    return int(audit.sum())


def _tree_hash(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _with_probe(vdir: Path) -> bytes:
    """Give the test calibration a real probe batch (the model's own logits on 256 inputs)."""
    x = np.random.default_rng(0).normal(1, 0.8, (probe.N_PROBE, 8)).astype(np.float32)
    sha = probe.write_probe(vdir, x, OnnxModel(vdir / "model.onnx", device="cpu").logits(x))
    save_calibration(dataclasses.replace(load_calibration(vdir), provider="CPUExecutionProvider",
                                         precision="float32", probe_sha256=sha), vdir)
    return (vdir / probe.FILENAME).read_bytes()


def test_dry_run_changes_no_file_and_write_keeps_bak_and_probe(tmp_path: Path, cli) -> None:
    vdir = make_version(tmp_path / "models", "clf", 1, seed=1)
    probe_bytes = _with_probe(vdir)
    old = dataclasses.replace(load_calibration(vdir), probability_temperature=0.5)
    save_calibration(old, vdir)                     # probabilities at their own T: kept as well
    state = tmp_path / "state"
    n_audits = _traffic(state, old.sha256, 6000, seed=2)
    before = _tree_hash(vdir)
    res = cli(str(vdir), "--from-feedback", str(state))
    assert res.returncode == 0, res.stderr
    assert _tree_hash(vdir) == before                        # a dry run: no file changed
    out = res.stdout
    assert "in force" in out and "proposed" in out and "dry run" in out and "--write" in out
    assert "deferrals per 1,000" in out and "live status" in out and "not written" in out
    assert f"{n_audits} audits" in out and "seed" not in out

    res = cli(str(vdir), "--from-feedback", str(state), "--write")
    assert res.returncode == 0, res.stderr
    assert json.loads((vdir / "calibration.json.bak").read_text())["threshold"] == old.threshold
    assert load_calibration(vdir / "calibration.json.bak").sha256 == old.sha256
    new = load_calibration(vdir)
    assert (vdir / probe.FILENAME).read_bytes() == probe_bytes
    assert new.probe_sha256 == old.probe_sha256 and new.provider == old.provider
    mv = load_version(vdir, "clf", 1, "cpu", 1)               # the probe check runs, and passes
    assert mv.calibration.sha256 == new.sha256 and mv.calibration.threshold == new.threshold
    assert new.sha256 != old.sha256 and new.threshold is not None
    assert (new.score, new.temperature, new.target_risk, new.delta) == (old.score, old.temperature,
                                                                        old.target_risk, old.delta)
    assert new.probability_temperature == 0.5
    assert new.data["source"] == "feedback" and new.data["lineage"] == [old.sha256]
    assert new.data["n"] == n_audits and new.data["deferred_labels_ignored"] > 1000
    assert new.data["window"]["rule"] == "current epoch"
    assert new.risk_upper_bound <= new.target_risk
    # the true risk of the new threshold on this traffic: P(wrong | s ≥ θ), by integration
    s = np.linspace(new.threshold, 1.0, 100_001)
    assert float(np.mean(0.6 * (1 - s) ** 2)) <= new.target_risk


def test_the_default_window_is_the_current_epoch_and_pooling_is_checked(tmp_path: Path, cli) -> None:
    vdir = make_version(tmp_path / "models", "clf", 1, seed=1)
    old = load_calibration(vdir)
    state = tmp_path / "state"
    _traffic(state, old.sha256, 6000, seed=2)
    assert cli(str(vdir), "--from-feedback", str(state), "--write").returncode == 0
    new = load_calibration(vdir)
    n_new = _traffic(state, new.sha256, 3000, seed=3)        # the new epoch's audits
    # pooled on request: same traffic in both epochs, so the exchangeability tests pass
    res = cli(str(vdir), "--from-feedback", str(state), "--pool-epochs")
    assert res.returncode == 0, res.stderr
    assert "pool check: Kolmogorov–Smirnov" in res.stdout and "REJECTED" not in res.stdout
    res = cli(str(vdir), "--from-feedback", str(state), "--write")
    assert res.returncode == 0, res.stderr
    newer = load_calibration(vdir)
    assert newer.data["lineage"] == [old.sha256, new.sha256]
    assert newer.data["n"] == n_new and newer.data["epochs"] == [new.sha256]
    # the epoch in force now is newer's, with no audits yet: nothing to recertify or pool on
    for extra in ((), ("--pool-epochs",)):
        res = cli(str(vdir), "--from-feedback", str(state), *extra)
        assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "no audited samples of clf/1 in the epoch of the calibration in force" in cli(
        str(vdir), "--from-feedback", str(state)).stderr
    assert "has no audits in the window" in res.stderr
    # --since (a time before either epoch) takes every epoch's audits from then on
    res = cli(str(vdir), "--from-feedback", str(state), "--since", "2000-01-01T00:00Z")
    assert res.returncode == 0, res.stderr


def test_unlabelled_audits_refuse_or_count_as_errors(tmp_path: Path, cli) -> None:
    vdir = make_version(tmp_path / "models", "clf", 1, seed=1)
    old = load_calibration(vdir)
    state = tmp_path / "state"
    n_audits = _traffic(state, old.sha256, 6000, seed=2, unlabelled=0.1)
    before = _tree_hash(vdir)
    res = cli(str(vdir), "--from-feedback", str(state), "--write")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "unlabelled, more than --max-pending 0.05" in res.stderr
    assert f"of the window's {n_audits} audits" in res.stderr and "label " in res.stderr
    assert _tree_hash(vdir) == before
    # counting 10% unlabelled audits as errors leaves no threshold below r* = 0.1: refused
    res = cli(str(vdir), "--from-feedback", str(state), "--write", "--max-pending", "0.2")
    assert res.returncode == 2 and "unlabelled counted as errors" in res.stderr
    assert _tree_hash(vdir) == before
    # 3% unlabelled: within the default share, each counted as an error
    state = tmp_path / "state3"
    n_audits = _traffic(state, old.sha256, 6000, seed=4, unlabelled=0.03)
    assert "more than --max-pending 0.01" in cli(str(vdir), "--from-feedback", str(state),
                                                  "--max-pending", "0.01").stderr
    res = cli(str(vdir), "--from-feedback", str(state), "--write")
    assert res.returncode == 0, res.stderr
    new = load_calibration(vdir)
    counted = new.data["window"]["unlabelled_counted_as_errors"]
    assert 0.015 * n_audits < counted < 0.045 * n_audits
    assert new.n_cert == n_audits
    rows = Store(state).audits("clf", "1", [old.sha256])
    unlabelled_accepted = sum(r["human_label"] is None and r["score"] >= new.threshold for r in rows)
    wrong_accepted = sum(r["human_label"] is not None and r["human_label"] != r["label"]
                         and r["score"] >= new.threshold for r in rows)
    assert unlabelled_accepted > 0
    assert new.score_params["n_errors"] == wrong_accepted + unlabelled_accepted


def test_unusable_flags_exit_2_naming_them_and_change_nothing(tmp_path: Path, cli) -> None:
    vdir = make_version(tmp_path / "models", "clf", 1, seed=1)
    old = load_calibration(vdir)
    state = tmp_path / "state"
    _traffic(state, old.sha256, 2000, seed=2)
    before = _tree_hash(vdir)
    res = cli(str(vdir), "--from-feedback", str(state), "--write", "--target-risk", "0.05",
               "--seed", "7", "--tune-fraction", "0.5", "--data", "mnist1d:calibration")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    for flag in ("--target-risk 0.05", "--seed", "--tune-fraction", "--data"):
        assert flag in res.stderr, flag
    assert "another --seed" not in res.stderr and _tree_hash(vdir) == before
    # the same r* as the calibration in force is no conflict; an explicit default seed still is
    assert cli(str(vdir), "--from-feedback", str(state), "--target-risk", "0.1").returncode == 0
    res = cli(str(vdir), "--from-feedback", str(state), "--seed", "0")
    assert res.returncode == 2 and "--seed" in res.stderr
    res = cli(str(vdir), "--from-feedback", str(state), "--since", "yesterday")
    assert res.returncode == 2 and "'yesterday' is not a time" in res.stderr
    res = cli(str(vdir), "--write", "--logits", str(tmp_path / "none.npz"))
    assert res.returncode == 2 and "--write only apply with --from-feedback" in res.stderr
    assert _tree_hash(vdir) == before


def test_recalibrate_without_audited_labels_is_a_clear_error(tmp_path: Path, cli) -> None:
    vdir = make_version(tmp_path / "models", "clf", 1, seed=1)
    before = (vdir / "calibration.json").read_text()
    Store(tmp_path / "state").close()                       # a store, but nothing audited
    res = cli(str(vdir), "--from-feedback", str(tmp_path / "state"))
    assert res.returncode == 2
    assert "no audited samples of clf/1" in res.stderr and "Traceback" not in res.stderr
    assert (vdir / "calibration.json").read_text() == before
    assert json.loads(before)["threshold"] == 0.6


def test_a_mistyped_store_path_creates_nothing(tmp_path: Path, cli) -> None:
    vdir = make_version(tmp_path / "models", "clf", 1, seed=1)
    res = cli(str(vdir), "--from-feedback", str(tmp_path / "stat"))
    assert res.returncode == 2 and "no decision store at" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "stat").exists()


def test_impossible_scores_in_the_store_certify_nothing(tmp_path: Path, cli) -> None:
    """A row whose score no served model can produce (1e308 for an msp calibration) must not
    become a certified threshold of 1e308: exit 2, calibration.json untouched."""
    vdir = make_version(tmp_path / "models", "clf", 1, seed=1)
    before = (vdir / "calibration.json").read_text()
    sha = load_calibration(vdir).sha256
    state = tmp_path / "state"
    _traffic(state, sha, 3000, seed=1)
    store = Store(state)
    with store._tx(write=True) as cur:
        cur.execute("UPDATE records SET score = 1e308 WHERE audit = 1")
    store.close()
    res = cli(str(vdir), "--from-feedback", str(state), "--write")
    assert res.returncode == 2 and "impossible score" in res.stderr, res.stderr
    assert (vdir / "calibration.json").read_text() == before
