"""The Dockerfile: hadolint-clean and faithful to the deployment contract (contract 7)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint"
    r = subprocess.run([exe, "--no-color", str(ROOT / "Dockerfile")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_follows_the_contract():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:" in text and "cudnn-runtime" in text
    assert '".[gpu]"' in text and "torch" not in text.replace("no torch", "")
    assert "--uid 10001" in text and "USER 10001" in text
    assert "EXPOSE 8000" in text and "/v2/health/ready" in text and "HEALTHCHECK" in text
    assert ('ENTRYPOINT ["abstain", "serve", "/models", "--host", "0.0.0.0", "--port", "8000", '
            '"--grpc-port", "8001"]') in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "training" in ignored
