"""The study's convergence statement and the index's train-error column (issue 30)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.study_report import (
    CONVERGED_TRAIN_ERROR,
    VERDICT_RULES,
    convergence_note,
    max_train_error,
    write_index,
)


def _run(errors: int | None, n: int = 2400) -> dict[str, Any]:
    r: dict[str, Any] = {"loss": "ce", "seed": 0}
    if errors is not None:
        r |= {"train_errors": errors, "n_train": n}
    return r


def test_converged_only_when_every_run_is_at_or_below_the_threshold() -> None:
    limit = round(CONVERGED_TRAIN_ERROR * 2400)                      # 12 of 2,400
    assert max_train_error([_run(0), _run(limit)]) == limit / 2400
    assert "**converged**" in convergence_note([_run(0), _run(limit)])
    note = convergence_note([_run(0), _run(limit + 1)])
    assert "**not converged**" in note and "at most 0.54% over the 2 runs" in note


def test_runs_without_a_recorded_training_error_are_not_called_converged() -> None:
    assert max_train_error([_run(0), _run(None)]) is None
    assert max_train_error([]) is None
    note = convergence_note([_run(None)])
    assert "not recorded" in note and "**converged**" not in note


def _study(root: Path, name: str, runs: list[dict[str, Any]]) -> None:
    (root / name).mkdir(parents=True)
    res = {"meta": {"regime": {"data": "mnist1d?n=4000", "model": "cnn1d", "epochs": 200},
                    "seeds": [0], "runtime_seconds": 60.0, "runs_seconds": 60.0,
                    "verdict_rules": VERDICT_RULES},
           "aggregate": {"ce": {"accuracy": {"mean": 0.9}}}, "runs": runs,
           "claims": [{"verdict": "inconclusive"}] * 4}
    (root / name / "results.json").write_text(json.dumps(res))


def test_index_shows_the_largest_training_error_or_not_recorded(tmp_path: Path) -> None:
    _study(tmp_path, "converged", [_run(0), _run(3)])
    _study(tmp_path, "early", [_run(None)])
    text = write_index(tmp_path).read_text()
    assert "| max train error (%) |" in text
    assert "| [converged](converged/README.md) | `mnist1d?n=4000` | cnn1d | 200 | 1 | 90.0–90.0 | 0.12 |" in text
    assert "| [early](early/README.md) | `mnist1d?n=4000` | cnn1d | 200 | 1 | 90.0–90.0 | not recorded |" in text


def test_index_carries_the_hand_written_findings_after_the_table(tmp_path: Path) -> None:
    _study(tmp_path, "converged", [_run(0)])
    assert "## What the regimes show" not in write_index(tmp_path).read_text()
    (tmp_path / "FINDINGS.md").write_text("## What the regimes show\n\nClaim 1 holds nowhere.\n")
    text = write_index(tmp_path).read_text()
    assert text.index("| [converged](") < text.index("## What the regimes show\n\nClaim 1 holds nowhere.")
    assert text.index("Claim 1 holds nowhere.") < text.index("Claims (METHODS.md §6)")
