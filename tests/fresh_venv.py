"""One fresh serving install (`pip install '<copy of the checkout>[cpu,data]'`, no torch) per test run.

The venv is built from a copy of the package (as the Dockerfile does) with the real pip; pip's
wheel cache makes this take ~40 s on the 2-core CI machine. Under pytest-xdist every worker that
asks for it gets the same venv: the first builds it under a file lock in the run's shared
temporary directory, the others wait and reuse it (so test_serve_only_install.py and
test_readme_commands.py pay for one install together).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the checkout's PYTHONPATH, an active venv or ABSTAIN_ settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("ABSTAIN_")}
    return env | extra


def _build(tmp: Path) -> Path:
    src = tmp / "src"
    if src.exists():                                  # a half-built one from a failed attempt
        shutil.rmtree(tmp)
    src.mkdir(parents=True)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    for pkg in ("serve", "training"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"{src}[cpu,data]"],
                       capture_output=True, text=True, timeout=800, env=clean_env(), cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    return venv


def serve_only_venv(factory: pytest.TempPathFactory) -> Path:
    """The shared serve-only venv (its bin/abstain, bin/python); built on first use."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent                            # shared by the run's workers
    tmp = base / "serve-only-venv"
    with open(base / "serve-only-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = tmp / "built"
        if not done.exists():
            _build(tmp)
            done.touch()
    return tmp / "venv"
