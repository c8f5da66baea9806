"""The shipped default model's calibration is valid for the shipped model and holds on the test split."""

from __future__ import annotations

import json

from serve.calibration.artifact import load_calibration
from serve.cli.main import main
from serve.server.runtime import sha256_file


def test_default_model_calibration_holds_on_test(repo_root, capsys) -> None:
    md = repo_root / "models" / "mnist1d-maxsup" / "1"
    cal = load_calibration(md, sha256_file(md / "model.onnx"))   # refuses a stale calibration
    assert cal.threshold is not None and cal.method == "ltt"
    assert cal.data["spec"] == "mnist1d" and cal.data["split"] == "calibration"
    assert cal.risk_upper_bound <= cal.target_risk
    for png in ("risk_coverage.png", "reliability.png"):
        assert (md / png).stat().st_size > 10_000
    assert main(["evaluate", str(md), "--data", "mnist1d:test", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    m = rep["metrics"]
    assert rep["data"]["split"] == "test" and m["n"] == 3000
    assert m["under_target"] is True and m["selective_risk"] <= cal.target_risk
    assert m["coverage"] > 0.85                                  # useful, not defer-everything
