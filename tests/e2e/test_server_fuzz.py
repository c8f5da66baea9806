"""Schema-driven fuzzing (schemathesis) of the real server against its own OpenAPI document."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server_support import make_repository, running_server

from serve.server.settings import load_settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# Every operation of the OpenAPI document (the inference endpoints are documented there too).
PATHS = r"^/"


@pytest.fixture(scope="module")
def live_schema(tmp_path_factory):
    repo = make_repository(tmp_path_factory.mktemp("models"))
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,))
    with running_server(s) as (url, _):
        yield schemathesis.openapi.from_url(url + "/openapi.json").include(path_regex=PATHS)


def test_fuzz_finds_no_5xx_and_no_schema_violation(live_schema):
    ops = [r.ok() for r in live_schema.get_all_operations()]
    labels = {o.label for o in ops}
    assert {"POST /v1/models/{model_name}/predict", "POST /v2/models/{model_name}/infer",
            "POST /v2/models/{model_name}/versions/{model_version}/infer", "GET /metrics",
            "GET /v2/models/{model_name}/ready", "POST /v1/admin/reload"} <= labels, labels
    codes: list[int] = []
    for op in ops:
        @given(case=op.as_strategy())
        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            if case.path_parameters and "model_name" in case.path_parameters:
                case.path_parameters["model_name"] = "clf"   # fuzz bodies against a real model
            if case.path_parameters and "model_version" in case.path_parameters:
                case.path_parameters["model_version"] = "1"
            codes.append(case.call_and_validate(checks=CHECKS).status_code)

        fuzz()
    assert 200 in codes and 422 in codes and max(codes) < 500
