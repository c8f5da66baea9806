"""Schema-driven fuzzing (schemathesis) of the review API and the Label Studio webhook, with the
reviewer key and the webhook secret, on SQLite and on PostgreSQL: no 5xx, every answer as
documented. Seeded (``derandomize``) and bounded: 300 requests per store, valid and invalid
(negative mode) — about 10 s per store alone, up to 20 s on a loaded 2-core machine, so slow."""

from __future__ import annotations

import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from loop_support import fresh_database
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server_support import make_version, running_server

from serve.server.settings import load_settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
REVIEW = r"^/v1/(review/|feedback|requests/|monitor/risk)"
REVIEWER, HOOK = "rev-fuzz", "hook-fuzz"
pytestmark = pytest.mark.slow



@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_fuzzing_the_review_api_finds_no_5xx(tmp_path, store, request):
    repo = tmp_path / "models"
    make_version(repo, "clf", 1, seed=1)
    where = ({"state_dir": tmp_path / "state"} if store == "sqlite" else
             {"database_url": fresh_database(request.getfixturevalue("pg_cluster"))})
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                      audit_rate=0.5, reviewer_key=REVIEWER, review_webhook_secret=HOOK, **where)
    with running_server(s) as (url, _):
        rid = httpx.post(f"{url}/v1/models/clf/predict",
                         json={"instances": [[0.5] * 8] * 4}).headers["x-request-id"]
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/v1/requests/{rid}",
                        headers={"Authorization": f"Bearer {REVIEWER}"}).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        schema = schemathesis.openapi.from_url(url + "/openapi.json").include(path_regex=REVIEW)
        ops = [r.ok() for r in schema.get_all_operations()]
        assert {o.label for o in ops} == {
            "GET /v1/review/queue", "POST /v1/feedback", "GET /v1/requests/{request_id}",
            "GET /v1/monitor/risk", "POST /v1/review/labelstudio"}
        codes: list[int] = []
        for op in ops:
            auth = ({"X-Abstain-Webhook-Secret": HOOK} if op.path == "/v1/review/labelstudio"
                    else {"Authorization": f"Bearer {REVIEWER}"})
            _fuzz(op, auth, codes)
        assert 200 in codes and 422 in codes and max(codes) < 500, sorted(set(codes))


def _fuzz(op, auth: dict[str, str], codes: list[int]) -> None:
    """Valid requests (by the schema) and invalid ones (negative mode: wrong types, NUL bytes,
    out-of-range numbers, missing fields), each with the right key."""
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        @given(case=op.as_strategy(mode))
        @settings(max_examples=30, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            case.headers = {**(case.headers or {}), **auth}
            codes.append(case.call_and_validate(checks=CHECKS).status_code)

        fuzz()
