"""The review loop's trust boundary, attacked on real servers (issue 28: High 1 and 3, Medium 7 and 8).

* An inference client (API key) tries to read which of its samples are audited and to label them
  "correct" — the attack that moved a certified threshold from 0.94 to 0.28: every step is 403 and
  the store holds no label afterwards.
* Control-plane bodies: 100 MB without the key or secret is refused before it is read (the answer
  arrives while the client has sent a few MB at most, the server's memory does not grow);
  oversized with the key is 413 (at once with a Content-Length, after the limit when chunked).
* Every malformed webhook event or feedback, and NUL bytes in ids and query values, on SQLite and
  PostgreSQL, are 4xx JSON answers on a connection that stays open; a store outage is 503 with
  Retry-After, and the API serves again when the store is back.
* Secrets from files (``--X-file`` / ``ABSTAIN_X_FILE``) never reach ``ps``; secrets given on the
  command line are warned about.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import httpx
import pytest
from loop_support import fresh_database
from server_support import make_version, running_server, server_process, wait_recorded

from bench.review_bodies import upload
from serve.feedback.store import Store
from serve.server.settings import load_settings

API, REVIEWER, HOOK = "c1ient-6f2a", "rev1ewer-91bd", "h00k-3c7e"      # not in any flag name
CLIENT_H = {"Authorization": f"Bearer {API}"}
REV_H = {"Authorization": f"Bearer {REVIEWER}"}
HOOK_H = {"X-Abstain-Webhook-Secret": HOOK}
V = [[0.5, -1.0, 2.0, 0.0, 1.5, -0.5, 0.25, 3.0]]
MB = 1 << 20


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_version(root, "clf", 1, seed=1)
    return root




def _settings(repo: Path, location: str, **kw):
    where = {"database_url": location} if location.startswith("postgresql") else {"state_dir": location}
    return load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                         audit_rate=1.0, api_key=API, reviewer_key=REVIEWER,
                         review_webhook_secret=HOOK, **where, **kw)


def _served(c: httpx.Client, n: int = 1) -> str:
    """A request of ``n`` samples, once the store has it."""
    r = c.post("/v1/models/clf/predict", json={"instances": V * n}, headers=CLIENT_H)
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    wait_recorded(c, rid, REV_H, 15)
    return rid


# ------------------------------------------------------------------------------ High 1: roles
def test_a_client_can_neither_see_its_audits_nor_label_them(repo, location):
    with running_server(_settings(repo, location)) as (url, app), \
            httpx.Client(base_url=url, timeout=30) as c:
        rids = [_served(c, 8) for _ in range(5)]                     # every sample audited
        queue = c.get("/v1/review/queue?kind=audit&limit=1000", headers=CLIENT_H)
        assert queue.status_code == 403 and "inference only" in queue.json()["error"]
        for rid in rids:
            assert c.get(f"/v1/requests/{rid}", headers=CLIENT_H).status_code == 403
            for i in range(8):
                r = c.post("/v1/feedback", headers=CLIENT_H,
                           json={"request_id": rid, "index": i, "label": "ant"})
                assert r.status_code == 403
        assert c.get("/v1/monitor/risk", headers=CLIENT_H).status_code == 403
        store = app.state.feedback.store
        assert store.count("audit = 1") == 40 and store.count("review = 'labelled'") == 0
        audits = store.audits("clf", "1", [sha for _, _, sha in store.epochs()])
        assert len(audits) == 40 and all(a["human_label"] is None for a in audits)  # none to use
        # a reviewer's first label is still the first: nothing was taken before it
        r = c.post("/v1/feedback", headers=REV_H, json={"request_id": rids[0], "label": "bee"})
        assert r.status_code == 201


# ------------------------------------------------------------------------------ High 3: bodies
def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_100_mb_body_is_refused_before_it_is_read(repo, tmp_path):
    env = {"ABSTAIN_API_KEY": API, "ABSTAIN_REVIEWER_KEY": REVIEWER,
           "ABSTAIN_REVIEW_WEBHOOK_SECRET": HOOK, "ABSTAIN_STATE_DIR": str(tmp_path / "state"),
           "ABSTAIN_POLL_INTERVAL_S": "0"}
    with server_process(repo, env=env) as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        before = _rss_mb(proc.pid)
        for path, headers, chunked, want in [
            ("/v1/review/labelstudio", {}, False, 401),                     # no secret
            ("/v1/review/labelstudio", {"X-Abstain-Webhook-Secret": "nope"}, True, 401),
            ("/v1/feedback", {}, False, 401),                               # no key
            ("/v1/feedback", {"Authorization": f"Bearer {API}"}, True, 403),  # a client's key
            ("/v1/feedback", {"Authorization": f"Bearer {REVIEWER}"}, False, 413),
            ("/v1/review/labelstudio", HOOK_H, False, 413),
            # chunked with the key or secret: read up to the limit (1 MiB), then 413
            ("/v1/feedback", {"Authorization": f"Bearer {REVIEWER}"}, True, 413),
            ("/v1/review/labelstudio", HOOK_H, True, 413),
        ]:
            status, sent, answer = upload(port, path, headers, 100 * MB, chunked)
            assert status == want, (path, answer)
            assert sent < 16 * MB, f"{path}: {sent / MB:.0f} MB sent before the answer"
            assert '{"error":' in answer and "connection: close" in answer.lower()
            assert want != 413 or "1048576 bytes" in answer
            assert httpx.get(url + "/healthz", timeout=5).status_code == 200
        assert _rss_mb(proc.pid) - before < 64, "the refused bodies were buffered"
        with httpx.Client(base_url=url, timeout=30) as c:         # and the API still works
            rid = _served(c)
            r = c.post("/v1/feedback", headers=REV_H, json={"request_id": rid, "label": "ant"})
            assert r.status_code == 201


def test_the_body_limit_is_a_setting(repo, tmp_path):
    s = _settings(repo, str(tmp_path / "state"), max_control_body_bytes=2048)
    with running_server(s) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        rid = _served(c)
        fb = {"request_id": rid, "label": "ant", "annotator": "x" * 100}
        assert c.post("/v1/feedback", headers=REV_H, json=fb).status_code == 201
        big = c.post("/v1/feedback", headers=REV_H, json={**fb, "pad": "y" * 3000})
        assert big.status_code == 413 and "2048 bytes" in big.json()["error"]
        assert "--max-control-body-bytes" in big.json()["error"]


# ------------------------------------------------------------------------------ Medium 7: 4xx
def _event(rid: str, *, data=None, annotation=None, task=None, **over) -> dict:
    data = {"request_id": rid, "index": 0} if data is None else data
    annotation = ({"result": [{"type": "choices", "value": {"choices": ["ant"]}}],
                   "completed_by": {"email": "ann@example.com"}} if annotation is None else annotation)
    return {"action": "ANNOTATION_CREATED", "task": {"data": data} if task is None else task,
            "annotation": annotation, **over}


def _choices(label, **ann) -> dict:
    return {"result": [{"type": "choices", "value": {"choices": [label]}}], **ann}


def _crafted(rid: str) -> list[tuple[str, object, int]]:
    """(what, webhook body, the status it must get)."""
    return [
        ("index -1", _event(rid, data={"request_id": rid, "index": -1}), 422),
        ("index 'abc'", _event(rid, data={"request_id": rid, "index": "abc"}), 422),
        ("index 1e20", _event(rid, data={"request_id": rid, "index": 1e20}), 422),
        ("index 0.5", _event(rid, data={"request_id": rid, "index": 0.5}), 422),
        ("index '0'", _event(rid, data={"request_id": rid, "index": "0"}), 422),
        ("index 2**63", _event(rid, data={"request_id": rid, "index": 2**63}), 422),
        ("index null", _event(rid, data={"request_id": rid, "index": None}), 422),
        ("no index", _event(rid, data={"request_id": rid}), 422),
        ("empty id", _event(rid, data={"request_id": "", "index": 0}), 422),
        ("id a number", _event(rid, data={"request_id": 123, "index": 0}), 422),
        ("NUL in id", _event(rid, data={"request_id": "a\x00b", "index": 0}), 422),
        ("long id", _event(rid, data={"request_id": "r" * 500, "index": 0}), 422),
        ("task a string", _event(rid, task="task"), 422),
        ("data a string", _event(rid, task={"data": "data"}), 422),
        ("data a list", _event(rid, task={"data": [rid, 0]}), 422),
        ("annotation a string", _event(rid, annotation="annotation"), 422),
        ("result a string", _event(rid, annotation={"result": "ant"}), 422),
        ("label an object", _event(rid, annotation=_choices({"a": 1})), 422),
        ("label empty", _event(rid, annotation=_choices("")), 422),
        ("label not a class", _event(rid, annotation=_choices("cow")), 422),
        ("long annotator", _event(rid, annotation=_choices("ant", completed_by="a" * 10_000)), 422),
        ("NUL in annotator", _event(rid, annotation=_choices("ant", completed_by={"email": "a\x00"})), 422),
        ("unknown request", _event(rid, data={"request_id": "never-served", "index": 0}), 404),
        ("a list", [1, 2], 422),
        ("not JSON", b"{", 422),
        ("empty body", b"", 422),
        ("action a number", _event(rid, action=5), 200),                 # not an annotation: ignored
        ("result of strings", _event(rid, annotation={"result": ["ant"]}), 200),
        ("cancelled", _event(rid, annotation=_choices("ant", was_cancelled=True)), 200),
    ]


def test_every_crafted_webhook_event_is_a_4xx_json_answer(repo, location):
    with running_server(_settings(repo, location)) as (url, app), \
            httpx.Client(base_url=url, timeout=30) as c:
        rid = _served(c)
        for what, body, status in _crafted(rid):
            kw = {"content": body} if isinstance(body, bytes) else {"json": body}
            r = c.post("/v1/review/labelstudio", headers=HOOK_H, **kw)
            assert r.status_code == status, (what, r.status_code, r.text)
            assert r.headers["content-type"] == "application/json", what
            assert r.headers.get("connection") != "close", what       # the connection stays open
            assert ("error" in r.json()) == (status >= 400), what
        assert app.state.feedback.store.count("review = 'labelled'") == 0   # none was taken
        ok = c.post("/v1/review/labelstudio", headers=HOOK_H, json=_event(rid))
        assert ok.status_code == 201 and ok.json()["label_name"] == "ant"


def test_bad_feedback_and_nul_bytes_are_4xx_on_both_stores(repo, location):
    with running_server(_settings(repo, location)) as (url, app), \
            httpx.Client(base_url=url, timeout=30) as c:
        rid = _served(c)
        fb = {"request_id": rid, "index": 0, "label": "ant"}
        for bad in ({"index": 2**63}, {"index": 2**31}, {"index": 0.5}, {"index": -1},
                    {"index": "0"}, {"index": True}, {"request_id": "a\x00b"},
                    {"request_id": ""}, {"annotator": "me\x00"}, {"source": "a\x00"},
                    {"label": "a\x00"}, {"label": 2**63}, {"label": -1}, {"label": "x" * 300},
                    {"label": "²"}, {"label": None}):
            r = c.post("/v1/feedback", headers=REV_H, json={**fb, **bad})
            assert r.status_code == 422 and r.json()["error"], (bad, r.text)
        for path in ("/v1/requests/a%00b", "/v1/requests/" + "r" * 200, "/v1/requests/%E2%82%AC",
                     "/v1/review/queue?model=a%00", "/v1/review/queue?limit=0",
                     "/v1/review/queue?kind=other", "/v1/monitor/risk?version=%00",
                     "/v1/monitor/risk?model=" + "m" * 200):
            r = c.get(path, headers=REV_H)
            assert r.status_code == 422 and r.json()["error"].startswith("invalid request"), path
        assert c.get("/v1/requests/never-served", headers=REV_H).status_code == 404
        assert app.state.feedback.store.count("review = 'labelled'") == 0
        assert c.post("/v1/feedback", headers=REV_H, json=fb).status_code == 201


def test_a_store_outage_is_503_with_retry_after_and_passes(repo, pg_cluster):
    import psycopg

    url_db = fresh_database(pg_cluster)
    name = url_db.rsplit("/", 1)[1]
    with running_server(_settings(repo, url_db)) as (url, _), \
            httpx.Client(base_url=url, timeout=30) as c:
        rid = _served(c)
        with psycopg.connect(pg_cluster, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (name,))
            try:
                for _ in range(2):      # the broken connection, then a refused reconnection
                    for r in (c.get("/v1/review/queue", headers=REV_H),
                              c.get(f"/v1/requests/{rid}", headers=REV_H),
                              c.get("/v1/monitor/risk", headers=REV_H),
                              c.post("/v1/feedback", headers=REV_H,
                                     json={"request_id": rid, "label": "ant"}),
                              c.post("/v1/review/labelstudio", headers=HOOK_H, json=_event(rid))):
                        assert r.status_code == 503, r.text
                        assert r.headers["retry-after"] == "5"
                        assert "decision store is unavailable" in r.json()["error"]
            finally:
                admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        r = c.post("/v1/feedback", headers=REV_H, json={"request_id": rid, "label": "ant"})
        assert r.status_code == 201
    assert Store(url_db).request(rid)[0]["review"] == "labelled"


# ------------------------------------------------------------------------------ Medium 8: secrets
def test_secrets_from_files_stay_out_of_ps_and_flags_are_warned_about(repo, tmp_path, pg_cluster):
    db = fresh_database(pg_cluster).replace("abstain@", "abstain:db-password@")   # trust auth
    files = {}
    for name, value in (("api", API), ("admin", "adm1n-55e0"), ("reviewer", REVIEWER),
                        ("hook", HOOK), ("db", db)):
        files[name] = tmp_path / f"{name}.secret"
        files[name].write_text(value + "\n")
    args = ("--api-key-file", str(files["api"]), "--reviewer-key-file", str(files["reviewer"]),
            "--review-webhook-secret-file", str(files["hook"]), "--poll-interval-s", "0")
    env = {"ABSTAIN_ADMIN_KEY_FILE": str(files["admin"]), "ABSTAIN_DATABASE_URL_FILE": str(files["db"])}
    with server_process(repo, *args, env=env) as (url, proc), httpx.Client(base_url=url) as c:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert not any(s in cmdline for s in (API, REVIEWER, HOOK, "adm1n-55e0", "db-password"))
        rid = _served(c)                                 # API key, reviewer key, the database
        assert c.post("/v1/admin/reload", headers={"Authorization": "Bearer adm1n-55e0"}).status_code == 200
        assert c.post("/v1/review/labelstudio", headers=HOOK_H, json=_event(rid)).status_code == 201
    out = proc.stdout.read()
    assert "visible to every user" not in out and "db-password" not in out
    assert "postgresql://abstain:***@127.0.0.1" in out

    args = ("--api-key", API, "--reviewer-key", REVIEWER, "--review-webhook-secret", HOOK,
            "--database-url", db, "--poll-interval-s", "0")
    with server_process(repo, *args) as (url, proc):
        pass
    out = proc.stdout.read()
    for flag in ("--api-key", "--reviewer-key", "--review-webhook-secret", "--database-url"):
        assert f"{flag} on the command line is visible to every user" in out, flag
        assert f"prefer {flag}-file" in out


def test_a_key_shared_by_two_roles_is_refused(repo, monkeypatch, capsys):
    from serve.cli.main import main

    for k in [k for k in os.environ if k.startswith("ABSTAIN_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("ABSTAIN_API_KEY", "same")
    monkeypatch.setenv("ABSTAIN_REVIEWER_KEY", "same")
    assert main(["serve", str(repo)]) == 2
    err = capsys.readouterr().err
    assert "--reviewer-key is the same as --api-key: each key grants one role" in err


def test_a_body_cut_short_is_answered_without_a_traceback(repo, tmp_path):
    errors: list[logging.LogRecord] = []
    catch = logging.Handler(logging.ERROR)
    catch.emit = errors.append                           # uvicorn's loggers do not propagate
    with running_server(_settings(repo, str(tmp_path / "state"))) as (url, _):
        logging.getLogger("uvicorn.error").addHandler(catch)
        try:
            port = int(url.rsplit(":", 1)[1])
            for path, auth in (("/v1/feedback", f"Authorization: Bearer {REVIEWER}"),
                               ("/v1/review/labelstudio", f"X-Abstain-Webhook-Secret: {HOOK}")):
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n"
                                 "Content-Length: 1000\r\n\r\n{\"request_id\": ".encode())
                time.sleep(0.3)
            assert httpx.get(url + "/healthz").status_code == 200
        finally:
            logging.getLogger("uvicorn.error").removeHandler(catch)
    assert not errors, [r.getMessage() for r in errors]


def test_open_review_api_is_open_and_start_up_says_so_loudly(repo, tmp_path):
    args = ("--state-dir", str(tmp_path / "state"), "--open-review-api", "--poll-interval-s", "0")
    with server_process(repo, *args, env={"ABSTAIN_API_KEY": API}) as (url, proc):
        assert httpx.get(url + "/v1/review/queue").status_code == 200       # no key needed
        assert httpx.get(url + "/v1/review/queue", headers=CLIENT_H).status_code == 200
    out = proc.stdout.read()
    assert "review API: OPEN TO ANYONE who can reach the server" in out
    assert "WARNING" in out and "THE REVIEW API IS OPEN TO ANYONE" in out
