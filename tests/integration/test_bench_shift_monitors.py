"""bench/shift_monitors.py end to end at a tiny size: every section is reported, with intervals.

The numbers at full size (500 repetitions, 10⁶ predictions) are in docs/METHODS.md §9; here only
that the script runs, reports each measurement with its 95% interval and refuses bad flags."""

from __future__ import annotations

import re

import pytest

from bench.shift_monitors import main


def test_tiny_run_reports_every_section(capsys) -> None:
    assert main(["--reps", "8", "--horizon", "2000"]) == 0
    out = capsys.readouterr().out
    assert "## Label-free shift monitor" in out and "## Risk-change detector" in out
    assert len(re.findall(r"any alarm within 2,000 predictions: \d+/8 = [\d.]+ \[[\d.]+, [\d.]+\]",
                          out)) == 2
    assert len(re.findall(r"then [\d.]+ r\*: detector median", out)) == 3
    assert "live-risk sequence median" in out


def test_bad_flags_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--reps", "0"])
    assert e.value.code == 2 and "--reps" in capsys.readouterr().err
