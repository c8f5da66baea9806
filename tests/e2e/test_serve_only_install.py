"""A serving install (`pip install 'abstain[cpu,data]'`, no torch) calibrates and evaluates the
shipped model from an empty data cache, and its CLI offers only what it can run.

The venv is the run's shared fresh serving install (tests/fresh_venv.py: a copy of the package,
the real pip, ~40 s).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from fresh_venv import clean_env, serve_only_venv

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    return serve_only_venv(tmp_path_factory)


def _abstain(venv: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "abstain"), *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=clean_env(**env))


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
                       cwd=tmp_path, env=clean_env(ABSTAIN_CACHE_DIR=str(cache)))
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
