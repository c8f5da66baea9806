"""What `abstain serve` prints under its start-up table: the feedback loop's state (store, audits,
review API and who may use it) and example requests for every model that has an example.json."""

from __future__ import annotations

import json
import os
import shlex

import pytest
from server_support import make_version

from serve.cli.examples import banner_lines
from serve.cli.serve import loop_lines, preflight
from serve.server.settings import load_settings


@pytest.fixture(autouse=True)
def _no_abstain_env(monkeypatch) -> None:
    for name in [k for k in os.environ if k.startswith("ABSTAIN_")]:
        monkeypatch.delenv(name)


def _lines(**overrides) -> list[str]:
    return loop_lines(load_settings(check_paths=False, **overrides))


def test_the_loop_off_says_so_on_every_line() -> None:
    store, audits, review = _lines()
    assert store.startswith("decision store: off (no --state-dir or --database-url)")
    assert audits.startswith("audits: off") and review.startswith("review API: off")


def test_a_state_dir_without_a_reviewer_or_admin_key_says_the_review_api_is_off(tmp_path) -> None:
    store, audits, review = _lines(state_dir=tmp_path / "state", audit_rate=0.05, api_key="k1")
    assert store == (f"decision store: SQLite under {tmp_path / 'state'} (every decision recorded; "
                     "kept until deleted (no --retention-days))")
    assert audits.startswith("audits: 5% of samples") and "--audit-rate 0.05" in audits
    assert audits.endswith("on a live-risk alarm: keep serving (--on-risk-alarm keep)")
    _, defer, _ = _lines(state_dir=tmp_path / "state", audit_rate=0.05, on_risk_alarm="defer")
    assert defer.endswith("defer every prediction until a new calibration loads "
                          "(--on-risk-alarm defer)")
    assert review.startswith("review API: off (no --reviewer-key-file or --admin-key-file; "
                             "--open-review-api opens it to anyone)")
    assert "Label Studio webhook off" in review


def test_retention_is_said(tmp_path) -> None:
    store, _, _ = _lines(state_dir=tmp_path / "state", retention_days=30, retention_max_rows=10**6)
    assert store.endswith("(every decision recorded; rows nobody needs deleted after 30 days; "
                          "at most 1000000 rows nobody reviews)")


def test_open_review_api_says_so_loudly(tmp_path) -> None:
    _, _, review = _lines(state_dir=tmp_path / "state", open_review_api=True, reviewer_key="r")
    assert review.startswith("review API: OPEN TO ANYONE who can reach the server")
    assert "(--open-review-api)" in review


def test_keys_name_who_may_review_and_the_database_password_is_hidden() -> None:
    store, audits, review = _lines(database_url="postgresql://abstain:hunter2@db:5432/loop",
                                   api_key="k1", reviewer_key="r1", audit_rate=0,
                                   review_webhook_secret="w", store_inputs=True)
    assert store == ("decision store: postgresql://abstain:***@db:5432/loop (every decision "
                     "recorded, inputs kept for review items; kept until deleted (no "
                     "--retention-days))")
    assert "hunter2" not in " ".join([store, audits, review])
    assert audits == "audits: off (--audit-rate 0)"
    assert "with the reviewer key as Bearer (the API key is refused" in review
    assert "Label Studio webhook on" in review
    _, _, review = _lines(database_url="postgresql://db/loop", admin_key="a")
    assert "with the admin key as Bearer" in review


def test_the_banner_has_examples_for_every_model_with_an_example_json(tmp_path) -> None:
    make_version(tmp_path, "clf", 1, seed=1)                 # the first model: lines without a file
    make_version(tmp_path, "img", 1, "image", seed=3)        # no example.json: no lines
    make_version(tmp_path, "other", 1, seed=5)
    v2 = make_version(tmp_path, "other", 2, seed=6)          # the highest version's file counts
    (v2 / "example.json").write_text(json.dumps({"source": "two rows",
                                                 "instances": [[0.5] * 8, [1.0] * 8]}))
    loaded = preflight(load_settings(model_repository=tmp_path, warmup_batch_sizes=(1,)))
    lines = banner_lines("0.0.0.0", 8123, loaded)
    heads = [ln for ln in lines if ln.startswith("example requests for")]
    assert heads == ["example requests for clf/1 (all zeros):",
                     "example requests for other/2 (two rows):"]
    tries = [ln for ln in lines if ln.startswith("try: ")]
    assert len(tries) == 4 and sum(ln.startswith("score: ") for ln in lines) == 2
    other_v1 = shlex.split(tries[2].removeprefix("try: "))
    assert other_v1[2] == "http://127.0.0.1:8123/v1/models/other/predict"
    assert json.loads(other_v1[-1])["instances"] == [[0.5] * 8, [1.0] * 8]
    assert "/v2/models/other/infer" in tries[3] and not any("/img/" in t for t in tries)
