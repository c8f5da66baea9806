"""Shared fixtures: paths and small helpers. Every test uses real files, sessions and servers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="module")
def pg_cluster():
    """A throw-away PostgreSQL cluster for one test module (tests/loop_support.py)."""
    from loop_support import postgres_cluster

    with postgres_cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path) -> str:
    """A decision store, once for each kind: a SQLite state dir or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state")
    from loop_support import fresh_database

    return fresh_database(request.getfixturevalue("pg_cluster"))


@pytest.fixture
def store_env(location: str) -> dict[str, str]:
    """The server environment naming ``location`` (``ABSTAIN_STATE_DIR`` or ``..._DATABASE_URL``)."""
    key = "ABSTAIN_DATABASE_URL" if location.startswith("postgresql") else "ABSTAIN_STATE_DIR"
    return {key: location}
