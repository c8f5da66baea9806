"""Test support for the feedback loop: a throw-away PostgreSQL cluster and recorder helpers.

The cluster lives in a temporary folder, listens on a free loopback port and is stopped with
``pg_ctl stop -m immediate`` afterwards. initdb refuses to run as root, so as root the cluster
runs as the ``postgres`` user that Debian's package creates (``runuser``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from server_support import free_port, wait_until_ready


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """Start a PostgreSQL server on 127.0.0.1; yields its superuser URL (trust auth)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed: run `make sysdeps`")
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[loop]'")
    tmp = Path(tempfile.mkdtemp(prefix="abstain-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = tmp / "data", free_port()
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "-U", "abstain", "--auth=trust", "-E",
                        "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        opts = (f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(tmp / "log"), "-w",
                        "-t", "60", "start"], check=True, capture_output=True, timeout=90)
        yield f"postgresql://abstain@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


def fresh_database(url: str) -> str:
    """A new empty database on the cluster at ``url``; returns its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def submit_batch(recorder, n: int, *, model: str = "clf", version: str = "1", sha: str = "c" * 64,
                 prefix: str = "r", rejects: np.ndarray | None = None, audit: np.ndarray | None = None,
                 seed: int = 0, classes=("ant", "bee", "cat", "dog"), target_risk: float = 0.1,
                 inputs: np.ndarray | None = None) -> list[str]:
    """Submit one batch of ``n`` single-sample requests ``{prefix}{i}``; returns their ids."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(classes)), n)
    ids = [f"{prefix}{i}" for i in range(n)]
    recorder.submit(model, version, sha, ids, np.zeros(n, np.int64), probs.argmax(1),
                    probs.max(1), rng.random(n) < 0.3 if rejects is None else rejects,
                    recorder.audit(n) if audit is None else audit, probs, inputs,
                    class_names=list(classes), target_risk=target_risk)
    return ids


LS_TOKEN = "abstain0test0token0000000000000000000000"


@contextlib.contextmanager
def label_studio() -> Iterator[str]:
    """A real Label Studio (from the project's .venv-labelstudio) on loopback; yields its URL."""
    import subprocess as sp

    import httpx
    from server_support import ROOT

    exe = ROOT / ".venv-labelstudio" / "bin" / "label-studio"
    if not exe.exists():
        pytest.skip("Label Studio is not installed: `make test` creates .venv-labelstudio")
    data = Path(tempfile.mkdtemp(prefix="abstain-ls-"))
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(data),
           "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
           "SSRF_PROTECTION_ENABLED": "false", "LABEL_STUDIO_USERNAME": "admin@example.com",
           "LABEL_STUDIO_PASSWORD": "abstain-test-pass", "LABEL_STUDIO_USER_TOKEN": LS_TOKEN,
           "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"}
    log = open(data / "ls.log", "w")  # noqa: SIM115 - closed below
    proc = sp.Popen([str(exe), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port)],
                    stdout=log, stderr=sp.STDOUT, env=env, cwd=data, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, lambda: httpx.get(url + "/api/projects", timeout=5, headers={
            "Authorization": f"Token {LS_TOKEN}"}), 240, "Label Studio",
            lambda: (data / "ls.log").read_text()[-2000:], 1.0)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except sp.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)


def store_location(env: dict[str, str]) -> str:
    """What ``Store(...)`` opens for a server environment naming a store (a ``store_env``)."""
    return env.get("ABSTAIN_DATABASE_URL") or env["ABSTAIN_STATE_DIR"]
