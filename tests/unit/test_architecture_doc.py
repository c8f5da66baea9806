"""docs/ARCHITECTURE.md stays a short map that matches the tree: every path it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
# A path: a top-level folder of the project, then path characters; `serve/cli/X.py`-style
# placeholders (a capital X or `<...>`) are patterns, not paths.
PATH_RE = re.compile(r"(?<![\w/])((?:serve|training|bench|tests|docs|deploy|models|dataplane|"
                     r"protocol|cli)/[\w./-]*)")
# Short forms the page uses inside a package's own rows.
RELATIVE = {"dataplane/": "serve/server/", "protocol/": "serve/server/", "cli/": "serve/"}


def named_paths(text: str) -> list[str]:
    out = []
    for raw in PATH_RE.findall(text):
        path = raw.rstrip(".")
        if re.search(r"/X\b|<", path):
            continue
        prefix = next((p for p in RELATIVE if path.startswith(p)), None)
        out.append(RELATIVE[prefix] + path if prefix else path)
    return out


def test_architecture_doc_is_short_and_every_path_exists():
    text = DOC.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 80, "docs/ARCHITECTURE.md is a map, not a module list"
    paths = named_paths(text)
    assert len(paths) >= 10, "the map names the packages it describes"
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"


def test_a_renamed_path_is_caught():
    assert named_paths("see `serve/loop/store.py` and serve/cli/X.py.") == ["serve/loop/store.py"]
    assert named_paths("`dataplane/admit.py`, `cli/main.py`") == [
        "serve/server/dataplane/admit.py", "serve/cli/main.py"]
    assert not (ROOT / "serve/loop/store.py").exists()
