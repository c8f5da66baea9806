"""`make serve` stops cleanly: Ctrl-C (SIGINT to the terminal's process group) or a SIGTERM sent to
make alone ends with exit status 0 from the recipe and no `make: *** [...] Terminated` line.

The real Makefile recipe runs against a stand-in virtualenv whose `bin/abstain` is this
interpreter's `abstain` (so nothing is installed), serving the shipped model on a free port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from server_support import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _venv(tmp: Path) -> Path:
    venv = tmp / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "bin" / "abstain").write_text(f'#!/bin/sh\nexec {sys.executable} -m serve.cli.main "$@"\n')
    (venv / "bin" / "abstain").chmod(0o755)
    (venv / ".serve").touch()                         # newer than pyproject.toml: no pip run
    return venv


def _start(tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ABSTAIN_", "MAKE"))}
    env["ABSTAIN_POLL_INTERVAL_S"] = "0"
    proc = subprocess.Popen(["make", "--no-print-directory", "-C", str(ROOT), "serve",
                             f"VENV={_venv(tmp)}", f"PORT={port}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "make serve did not become ready"
        time.sleep(0.2)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm-to-make"])
def test_make_serve_stops_without_a_make_error(how: str, tmp_path: Path) -> None:
    proc, url = _start(tmp_path)
    try:
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)      # what the terminal does on Ctrl-C
        else:
            proc.send_signal(signal.SIGTERM)        # make alone (e.g. a supervisor stopping it)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "make: ***" not in out and "Error" not in out, out[-2000:]
    assert "Application shutdown complete" in out, out[-2000:]     # drained, not killed
    # make itself re-raises the signal it got; the recipe (the server) ended cleanly
    assert proc.returncode in (0, -signal.SIGINT, -signal.SIGTERM), proc.returncode
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=1)
