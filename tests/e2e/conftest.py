"""Fixtures the review loop's end-to-end tests share: a throw-away PostgreSQL cluster per module,
and a store (SQLite state dir or a fresh PostgreSQL database) as server environment."""

from __future__ import annotations

import pytest
from loop_support import fresh_database, postgres_cluster


@pytest.fixture(scope="module")
def pg_cluster():
    with postgres_cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_env(request, tmp_path) -> dict[str, str]:
    """``ABSTAIN_STATE_DIR`` or ``ABSTAIN_DATABASE_URL``, once for each store."""
    if request.param == "sqlite":
        return {"ABSTAIN_STATE_DIR": str(tmp_path / "state")}
    return {"ABSTAIN_DATABASE_URL": fresh_database(request.getfixturevalue("pg_cluster"))}

