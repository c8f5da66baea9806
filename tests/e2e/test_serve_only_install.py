"""A serving install (`pip install 'abstain[cpu,data]'`, no torch) calibrates and evaluates the
shipped model from an empty data cache, and its CLI offers only what it can run.

A real virtual environment is created from a copy of the package (as the Dockerfile does) with
the real pip; pip's wheel cache makes this take ~40 s on the 2-core CI machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("ABSTAIN_")}
    return env | extra


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("serve-only")
    src = tmp / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    for pkg in ("serve", "training"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"{src}[cpu,data]"],
                       capture_output=True, text=True, timeout=800, env=_env(), cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    return venv


def _abstain(venv: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "abstain"), *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=_env(**env))


def test_calibrate_and_evaluate_from_an_empty_cache_without_torch(venv, tmp_path) -> None:
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr
    model = tmp_path / "models" / "mnist1d-maxsup" / "1"
    shutil.copytree(ROOT / "models" / "mnist1d-maxsup" / "1", model)
    (model / "calibration.json").unlink()
    cache = tmp_path / "cache"                       # empty: mnist1d must be generated here
    r = _abstain(venv, "calibrate", str(model), "--target-risk", "0.01", cwd=tmp_path,
                 ABSTAIN_CACHE_DIR=str(cache))
    assert r.returncode == 0, r.stderr
    assert "generating mnist1d" in r.stderr             # said before the seconds of work
    cal = json.loads((model / "calibration.json").read_text())
    assert cal["data"]["spec"] == "mnist1d" and cal["data"]["split"] == "calibration"
    assert cal["threshold"] is not None
    r = _abstain(venv, "evaluate", str(model), "--json", cwd=tmp_path, ABSTAIN_CACHE_DIR=str(cache))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["data"]["spec"] == "mnist1d" and rep["data"]["split"] == "test"
    assert rep["metrics"]["n"] == 3000 and rep["metrics"]["coverage"] > 0.8
    code = ("from serve.data import load_split; x, y, _ = load_split('digits:test'); "
            "print(x.shape[1:], len(y))")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env=_env(ABSTAIN_CACHE_DIR=str(cache)))
    assert r.returncode == 0 and r.stdout.split() == ["(1,", "8,", "8)", "269"], r.stdout + r.stderr


def test_help_offers_only_runnable_commands_and_refusals_name_the_need(venv, tmp_path) -> None:
    r = _abstain(venv, "--help", cwd=tmp_path)
    assert r.returncode == 0
    commands = r.stdout.split("positional arguments:")[1].split("options:")[0]
    listed = {line.split()[0] for line in commands.splitlines()[2:] if line.startswith("    ")}
    assert listed == {"calibrate", "evaluate", "serve"}, r.stdout
    r = _abstain(venv, "train", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2 and "needs the 'train' extra" in r.stderr, r.stderr
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu, then pip install " \
        "'abstain[train]'" in r.stderr and not (tmp_path / "run").exists()
    r = _abstain(venv, "bench", cwd=tmp_path)      # a development script now: python -m bench
    assert r.returncode == 2 and "invalid choice: 'bench'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
