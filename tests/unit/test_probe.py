"""The probe batch: logits computed on another provider are detected, with the flips counted."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from server_support import make_version

from serve.calibration import probe
from serve.calibration.artifact import load_calibration, save_calibration
from serve.decision import DecisionRule
from serve.server.model_version import load_version
from serve.server.runtime import OnnxModel


def _calibrate_with_probe(vdir, perturb_row: int | None):
    model = OnnxModel(vdir / "model.onnx", device="cpu", intra_op_threads=1)
    x = np.random.default_rng(0).normal(1, 0.8, (probe.N_PROBE, 8)).astype(np.float32)
    z = model.logits(x)                                               # (256, 4) float64
    cal = load_calibration(vdir)
    rule = DecisionRule(cal)
    s = rule.score(z)
    row = int(np.argsort(s)[len(s) // 2]) if perturb_row is None else perturb_row
    cal = dataclasses.replace(cal, threshold=float(s[row]))         # a sample exactly at it
    stored = z.copy()
    if perturb_row is not None:                                      # last bits, as another
        k = int(np.argmax(z[row]))                                   # provider would differ
        # Scores are snapped to a 43-bit significand (serve.scores.snap_scores), which absorbs
        # a few ulps; step down ulp by ulp until this row's snapped score drops below threshold.
        for _ in range(1 << 16):
            stored[row, k] = np.nextafter(stored[row, k], -np.inf)
            if rule.score(stored[row:row + 1])[0] < s[row]:
                break
    sha = probe.write_probe(vdir, x, stored)
    cal = dataclasses.replace(cal, provider="CUDAExecutionProvider", precision="float32",
                              probe_sha256=sha)
    save_calibration(cal, vdir)
    return row


def test_same_provider_loads_silently(tmp_path):
    vdir = make_version(tmp_path, "clf", 1)
    _calibrate_with_probe(vdir, None)
    mv = load_version(vdir, "clf", 1, "cpu", 1)
    x, stored = probe.load_probe(vdir, mv.calibration.probe_sha256)
    report = probe.compare(mv.rule, stored, mv.model.logits(x))
    assert mv.calibration.probe_sha256 and report.flips == 0


def test_last_bit_differences_that_flip_a_decision_refuse_the_version(tmp_path, caplog):
    vdir = make_version(tmp_path, "clf", 1)
    row = _calibrate_with_probe(vdir, perturb_row=7)
    x, stored = probe.load_probe(vdir, load_calibration(vdir).probe_sha256)
    assert 0 < np.max(np.abs(stored[row] - OnnxModel(vdir / "model.onnx", "cpu").logits(x[row:row + 1]))) < 1e-12
    with pytest.raises(probe.ProbeMismatch) as err:
        load_version(vdir, "clf", 1, "cpu", 1)
    msg = str(err.value)
    assert f"1 of {probe.N_PROBE} probe decisions flip" in msg
    assert "calibrated on CUDAExecutionProvider" in msg and "served on CPUExecutionProvider" in msg
    caplog.set_level(logging.WARNING)
    mv = load_version(vdir, "clf", 1, "cpu", 1, on_probe_mismatch="warn")
    assert mv is not None
    assert any("CERTIFICATE MAY NOT HOLD" in r.getMessage() and "1 of 256" in r.getMessage()
               for r in caplog.records)


def test_a_tampered_probe_file_is_refused(tmp_path):
    vdir = make_version(tmp_path, "clf", 1)
    _calibrate_with_probe(vdir, None)
    (vdir / probe.FILENAME).write_bytes(b"other")
    with pytest.raises(Exception, match="does not match the probe_sha256"):
        load_version(vdir, "clf", 1, "cpu", 1)


def test_calibrate_cli_writes_a_probe_the_loader_accepts(tmp_path, caplog):
    from serve.cli.main import main

    vdir = make_version(tmp_path / "repo", "clf", 1, seed=5)
    model = OnnxModel(vdir / "model.onnx", device="cpu")
    x = np.random.default_rng(1).normal(size=(3000, *model.input_shape)).astype(np.float32)
    z = model.logits(x)
    y = z.argmax(1)
    margin = np.sort(z, 1)[:, -1] - np.sort(z, 1)[:, -2]
    unsure = np.argsort(margin)[:150]
    y[unsure] = (y[unsure] + 1) % model.num_classes                # 5 % errors, least confident
    np.savez(tmp_path / "cal.npz", x=x, y=y)
    (vdir / "calibration.json").unlink()
    assert main(["calibrate", str(vdir), "--data", f"npz:{tmp_path / 'cal.npz'}",
                 "--target-risk", "0.03", "--device", "cpu"]) == 0
    cal = load_calibration(vdir)
    assert cal.provider == "CPUExecutionProvider" and cal.precision == "float32"
    assert len(cal.probe_sha256) == 64
    with np.load(vdir / probe.FILENAME) as f:
        assert f["x"].shape == (probe.N_PROBE, *model.input_shape)
        assert f["logits"].shape == (probe.N_PROBE, model.num_classes)
    caplog.set_level(logging.INFO, "serve")
    mv = load_version(vdir, "clf", 1, device="cpu")
    assert mv.calibration.probe_sha256 == cal.probe_sha256
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
