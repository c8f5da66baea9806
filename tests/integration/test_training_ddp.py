"""DDP under torchrun: 2 CPU processes (gloo) match a single-process run with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from serve.cli.main import main

TRAIN = ["--data", "mnist1d?n=2000", "--model", "mlp", "--loss", "maxsup", "--alpha", "0.1:0.2",
         "--epochs", "2", "--batch-size", "64", "--seed", "3", "--device", "cpu"]


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ABSTAIN_CACHE_DIR", "off")
    out = tmp_path / "single"
    assert main(["train", *TRAIN, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(run_dir: Path, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    out = tmp_path / "ddp"
    env = {**os.environ, "ABSTAIN_CACHE_DIR": "off", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "serve.cli.main",
                        "train", *TRAIN, "--out", str(out)],
                       capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["resolved"]["world_size"] == 2
    a, b = _state(out), _state(run_dir)
    worst = max(float((a[k] - b[k]).abs().max()) for k in b)
    assert worst < 1e-4, worst
    ma = json.loads((out / "metrics.json").read_text())["final"]
    mb = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert ma["tune_acc"] == pytest.approx(mb["tune_acc"], abs=0.01)
    assert ma["train_loss"] == pytest.approx(mb["train_loss"], rel=1e-4)
