"""What the docs' commands write in the checkout (docs/loop.md, docs/packaging.md) is ignored by git."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs git and a checkout")
@pytest.mark.parametrize("path", ["state/decisions.sqlite", "decide.onnx",
                                  "triton-models/mnist1d-maxsup/1/model.onnx"])
def test_what_the_docs_commands_create_is_ignored(path) -> None:
    r = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT)
    assert r.returncode == 0, f"{path} is not ignored: add it to .gitignore"


def test_sources_named_alike_elsewhere_are_not_ignored() -> None:
    r = subprocess.run(["git", "check-ignore", "--no-index", "-q", "serve/feedback/state/x.py"],
                       cwd=ROOT)
    assert r.returncode == 1                  # the entries are anchored at the checkout's root
