"""cascade.json and cascade_calibration.json: validated on read, matched to the pinned stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from serve.calibration.cascade_artifact import (
    CALIBRATION_FILE,
    SPEC_FILE,
    CascadeError,
    StageRef,
    load_cascade_calibration,
    read_spec,
    write_spec,
)

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "mnist1d-cascade" / "1"


@pytest.fixture()
def cascade(tmp_path: Path) -> Path:
    d = tmp_path / "c" / "1"
    shutil.copytree(SHIPPED, d)
    return d


def test_the_shipped_cascade_reads_and_matches_its_pins(cascade):
    stages = read_spec(cascade)
    assert [s.label for s in stages] == ["mnist1d-mlp/1", "mnist1d-maxsup/1"]
    cal = load_cascade_calibration(cascade, stages)
    assert [r.model_sha256 for r in cal.stages] == [s.model_sha256 for s in stages]
    assert cal.risk <= cal.target_risk and 0 < cal.human_share < cal.human_share_upper < 1


@pytest.mark.parametrize(("spec", "message"), [
    ({"stages": [{"model": "a", "version": 1, "model_sha256": "0" * 64}]}, "at least 2"),
    ({"stages": [{"model": "a", "version": 1, "model_sha256": "xyz"},
                 {"model": "b", "version": 1, "model_sha256": "0" * 64}]}, "model_sha256"),
    ({"stages": [{"model": "../a", "version": 1, "model_sha256": "0" * 64},
                 {"model": "b", "version": 1, "model_sha256": "0" * 64}]}, "stages.0.model"),
    ({"stages": [{"model": "a", "version": "1", "model_sha256": "0" * 64},
                 {"model": "b", "version": 1, "model_sha256": "0" * 64}]}, "stages.0.version"),
    ({"stages": [{"model": "a", "version": 1, "model_sha256": "0" * 64}] * 2}, "appears twice"),
    ([1, 2], "must hold a JSON object"),
])
def test_a_bad_spec_is_refused_with_the_field(tmp_path, spec, message):
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(CascadeError, match=message):
        read_spec(tmp_path)


def test_missing_or_broken_files_say_how_to_fix(tmp_path, cascade):
    with pytest.raises(CascadeError, match="not found"):
        read_spec(tmp_path)
    (tmp_path / SPEC_FILE).write_text("{not json")
    with pytest.raises(CascadeError, match="not valid JSON"):
        read_spec(tmp_path)
    (cascade / CALIBRATION_FILE).unlink()
    with pytest.raises(CascadeError, match="run `abstain calibrate"):
        load_cascade_calibration(cascade, read_spec(cascade))


def test_a_calibration_made_for_other_pins_is_refused(cascade):
    stages = read_spec(cascade)
    other = [stages[0], StageRef(stages[1].model, 1, "a" * 64)]
    write_spec(cascade, other)
    with pytest.raises(CascadeError, match=r"was made for the stages .*but cascade.json pins"):
        load_cascade_calibration(cascade, read_spec(cascade))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("risk", 1.5, "risk"), ("schema_version", 2, "schema_version 2"),
    ("stages", [], "stages"), ("human_share", "0.1", "human_share"),
])
def test_a_malformed_calibration_is_refused(cascade, key, value, message):
    path = cascade / CALIBRATION_FILE
    raw = json.loads(path.read_text())
    raw[key] = value
    path.write_text(json.dumps(raw))
    with pytest.raises(CascadeError, match=message):
        load_cascade_calibration(cascade, read_spec(cascade))


def test_a_bad_stage_score_is_refused(cascade):
    path = cascade / CALIBRATION_FILE
    raw = json.loads(path.read_text())
    raw["stages"][1]["score"] = "no-such-score"
    path.write_text(json.dumps(raw))
    with pytest.raises(CascadeError, match="stage mnist1d-maxsup/1"):
        load_cascade_calibration(cascade, read_spec(cascade))
