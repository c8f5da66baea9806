"""The README's first request and response are the real ones.

`abstain serve models` (a real process, the shipped model, output to a pipe as under Docker or
k8s) prints a start-up table with full values and example `curl` lines for v1 and v2; the README
shows exactly those lines (port 8000) and exactly what they return. When the shipped model or its
calibration changes, this test fails and prints the README block; to refresh it in place:

    ABSTAIN_UPDATE_README=1 pytest tests/e2e/test_readme_example.py
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from server_support import server_process

from serve.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
START, END = "<!-- example: start -->", "<!-- example: end -->"
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


def _banner(proc: subprocess.Popen) -> list[str]:
    lines: list[str] = []
    while not (lines and lines[-1].startswith("score: ")):
        line = proc.stdout.readline()
        assert line, "the server printed no example: " + "".join(lines)
        lines.append(line.rstrip("\n"))
    return lines


def _normalised(body: str) -> str:
    """The server's exact bytes, but for the request id, which is fresh every time."""
    json.loads(body)
    out, n = re.subn(r'"id":"[^"]*"', '"id":"…"', body.strip(), count=1)
    assert n == 1, body
    return out


def test_banner_example_requests_return_what_the_readme_shows() -> None:
    with server_process(ROOT / "models", env={"ABSTAIN_POLL_INTERVAL_S": "0",
                                              "COLUMNS": "80"}) as (url, proc):
        banner = _banner(proc)
        port = url.rsplit(":", 1)[1]
        rows = [ln for ln in banner if "│" in ln]
        header = next(ln for ln in banner if "┃ model" in ln)
        # not a terminal: full values, one line per row and header (no 80-column cut)
        assert any("│ mnist1d-maxsup │" in r and "│ CPUExecutionProvider │" in r for r in rows), banner
        assert "target risk" in header and "coverage" in header and "…" not in "".join(rows)
        curls = [ln.split("try: ", 1)[1] for ln in banner if ln.startswith("try: curl")]
        assert len(curls) == 2 and "/v1/" in curls[0] and "/v2/" in curls[1]
        expected = [next(ln for ln in banner if ln.startswith("example requests for"))]
        for cmd in curls:
            r = subprocess.run(shlex.split(cmd), capture_output=True, text=True, timeout=30)
            assert r.returncode == 0 and r.stdout, r.stderr
            expected += [cmd.replace(f":{port}/", ":8000/"), f"# → {_normalised(r.stdout)}"]
        expected.append(banner[-1])
    readme = README.read_text()
    block = "\n".join(expected)
    start, end = readme.index(START) + len(START), readme.index(END)
    if os.environ.get("ABSTAIN_UPDATE_README") == "1":
        readme = readme[:start] + f"\n```text\n{block}\n```\n" + readme[end:]
        atomic_write_text(README, readme)
        end = readme.index(END)
    assert f"```text\n{block}\n```" in readme[start:end], (
        "the README's example is stale: rerun with ABSTAIN_UPDATE_README=1 or paste\n" + block)
    assert banner[-1].startswith("score: the calibrated confidence score (")
    assert ("not a probability" in banner[-1]) == ("(msp;" not in banner[-1])
