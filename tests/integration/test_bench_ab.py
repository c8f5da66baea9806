"""`python -m bench.ab` end to end, tiny: two real servers, real wrk, both sides one checkout."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


def test_ab_interleaves_rounds_and_reports_paired_ratios(capsys):
    from bench.ab import main

    side = f"{sys.executable}:{ROOT}:serve.cli.main"
    assert main(["--a", side, "--b", side, "--rounds", "2", "--duration", "1",
                 "--concurrency", "1,4", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "mnist1d-maxsup: 1" in out.split("A: threads ")[1].splitlines()[0]
    assert "mnist1d-maxsup: 1" in out.split("B: threads ")[1].splitlines()[0]
    rounds = re.findall(r"^round (\d) ([AB]) c=(\d+): ([\d,]+) req/s .* errors (\d+)$", out, re.M)
    assert len(rounds) == 2 * 2 * 2                             # rounds × concurrencies × sides
    first = [(r[1], r[2]) for r in rounds if r[0] == "1"]
    second = [(r[1], r[2]) for r in rounds if r[0] == "2"]
    assert first == [("A", "1"), ("B", "1"), ("A", "4"), ("B", "4")]
    assert second == [("B", "1"), ("A", "1"), ("B", "4"), ("A", "4")]   # the order alternates
    assert all(int(r[3].replace(",", "")) > 0 and r[4] == "0" for r in rounds)
    rows = re.findall(r"^\| c=(\d+) (req/s|p50) \| .* \| ([\d.]+) \[([\d.]+), ([\d.]+)\] \|$",
                      out, re.M)
    assert [(c, what) for c, what, *_ in rows] == [("1", "req/s"), ("1", "p50"), ("4", "req/s"),
                                                    ("4", "p50")]
    for *_, gm, lo, hi in rows:          # the range is printed to 2 decimals, the mean to 3
        assert float(lo) - 0.005 <= float(gm) <= float(hi) + 0.005
