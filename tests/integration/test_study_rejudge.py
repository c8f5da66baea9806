"""Re-judging a committed study from its saved logits reproduces the committed report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from training.study_analysis import StudyError
from training.study_rejudge import rejudge

DIGITS = Path(__file__).resolve().parents[2] / "docs" / "study" / "digits"


def test_rejudge_reproduces_the_committed_digits_study(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    shutil.copytree(DIGITS, out)
    before = json.loads((out / "results.json").read_text())
    after = rejudge(out)
    assert [c["verdict"] for c in after["claims"]] == [c["verdict"] for c in before["claims"]]
    assert [c["evidence"] for c in after["claims"]] == [c["evidence"] for c in before["claims"]]
    assert json.dumps(after["aggregate"]) == json.dumps(before["aggregate"])     # NaN-safe
    assert not list(out.glob("runs/*/run.json"))                  # temporary files removed
    assert "study_rejudge" in (out / "README.md").read_text()


def test_rejudge_refuses_a_folder_without_runs(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="results.json not found"):
        rejudge(tmp_path)
