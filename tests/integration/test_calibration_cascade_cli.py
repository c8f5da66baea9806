"""`abstain calibrate CASCADE_DIR` end to end: real ONNX stages, real files, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serve.calibration.cascade_artifact import (
    CALIBRATION_FILE,
    StageRef,
    load_cascade_calibration,
    read_spec,
    write_spec,
)
from serve.cli.main import main
from serve.server.runtime import sha256_file
from tests.integration.test_calibration_cli import K, _draw, _write_model


@pytest.fixture()
def repo(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    means = rng.normal(scale=1.1, size=(K, 8))
    x, y = _draw(12000, means, 1)
    data = tmp_path / "cal.npz"
    np.savez(data, x=x, y=y)
    root = tmp_path / "models"
    # Stage 1 sees the class means through noise (weaker), stage 2 sees them exactly.
    _write_model(root / "small" / "1" / "model.onnx", means + rng.normal(scale=0.5, size=means.shape),
                 1.0, f"npz:{data}")
    _write_model(root / "large" / "1" / "model.onnx", means, 1.0, f"npz:{data}")
    cascade = root / "both" / "1"
    cascade.mkdir(parents=True)
    write_spec(cascade, [StageRef(m, 1, sha256_file(root / m / "1" / "model.onnx"))
                         for m in ("small", "large")])
    return {"root": root, "cascade": cascade, "data": data}


def _calibrate(repo: dict[str, Path], *extra: str) -> int:
    return main(["calibrate", str(repo["cascade"]), "--data", f"npz:{repo['data']}:calibration",
                 "--target-risk", "0.05", "--delta", "0.1", *extra])


def test_certifies_the_cascade_and_writes_its_calibration(repo, capsys):
    assert _calibrate(repo) == 0
    out = capsys.readouterr().out
    assert "certified system risk ≤ 0.05 with probability ≥ 0.9" in out
    assert "expected cost per sample" in out and "person" in out
    cal = load_cascade_calibration(repo["cascade"], read_spec(repo["cascade"]))
    assert [r.model for r in cal.stages] == ["small", "large"]
    assert cal.risk <= 0.05 and 0.0 < cal.human_share < 0.6
    rows = cal.stage_rows
    assert rows[0]["reach_share"] == 1.0 and 0.0 < rows[1]["reach_share"] < 1.0
    assert abs(sum(r["accepted_share"] for r in rows) + cal.human_share - 1.0) < 1e-9
    assert cal.data["split"] == "calibration" and cal.n_cert + cal.n_tune == cal.data["n"] == 1798


def test_budgets_are_honoured_or_refused_with_numbers(repo, capsys):
    assert _calibrate(repo, "--max-stage-share", "2=0.9", "--costs", "1,10,100") == 0
    cal = load_cascade_calibration(repo["cascade"], read_spec(repo["cascade"]))
    assert cal.stage_rows[1]["reach_upper"] <= 0.9
    assert cal.budgets["max_stage_share"] == {"2": 0.9}
    assert "(--costs 1,10,100)" in capsys.readouterr().out
    before = (repo["cascade"] / CALIBRATION_FILE).read_bytes()
    assert _calibrate(repo, "--max-defer", "0.001") == 2
    err = capsys.readouterr().err
    assert "--max-defer 0.001: the lowest human share certified at r* = 0.05 is 0." in err
    assert "upper 0.9 bound" in err
    assert (repo["cascade"] / CALIBRATION_FILE).read_bytes() == before    # nothing half-written


def test_a_changed_stage_or_misplaced_flag_is_refused(repo, capsys):
    spec = json.loads((repo["cascade"] / "cascade.json").read_text())
    spec["stages"][1]["model_sha256"] = "0" * 64
    (repo["cascade"] / "cascade.json").write_text(json.dumps(spec))
    assert _calibrate(repo) == 2
    assert "stage 2 (large/1)" in capsys.readouterr().err
    assert main(["calibrate", str(repo["root"] / "large" / "1"), "--data",
                 f"npz:{repo['data']}:calibration", "--max-defer", "0.1"]) == 2
    assert "apply to a cascade" in capsys.readouterr().err
    assert main(["calibrate", str(repo["cascade"]), "--max-stage-share", "1=0.5"]) == 2
    assert "STAGE ≥ 2" in capsys.readouterr().err
    assert main(["calibrate", str(repo["cascade"]), "--allow-defer-all"]) == 2
    assert "does not apply to a cascade" in capsys.readouterr().err
