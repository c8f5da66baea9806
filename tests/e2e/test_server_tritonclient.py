"""The unchanged ``tritonclient.http`` client against abstain's v2 endpoint: JSON and binary."""

from __future__ import annotations

import numpy as np
import pytest
from server_support import make_repository, running_server

from serve.server.settings import load_settings

httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = make_repository(tmp_path_factory.mktemp("models"))
    s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,))
    with running_server(s) as (url, app):
        yield url.removeprefix("http://"), app


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_infer_json_and_binary(server, binary):
    url, app = server
    client = httpclient.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("clf")
    meta = client.get_model_metadata("clf")
    assert meta["inputs"][0]["name"] == "input" and meta["inputs"][0]["shape"] == [-1, 8]
    x = np.random.default_rng(3).normal(1, 0.8, (5, 8)).astype(np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [httpclient.InferRequestedOutput(n, binary_data=binary)
            for n in ("label", "score", "reject", "logits", "class_name")]
    res = client.infer("clf", [inp], outputs=outs, model_version="1", request_id="t-1")
    rule = app.state.repository.get("clf", 1)
    ref = rule.infer(x)
    assert res.get_response()["id"] == "t-1"
    np.testing.assert_array_equal(res.as_numpy("label"), ref["label"])
    np.testing.assert_array_equal(res.as_numpy("reject"), ref["reject"])
    np.testing.assert_allclose(res.as_numpy("score"), ref["score"], rtol=1e-12)
    np.testing.assert_allclose(res.as_numpy("logits"), ref["logits"], rtol=1e-6)
    names = [n.decode() if isinstance(n, bytes) else n for n in res.as_numpy("class_name")]
    assert names == [rule.class_names[i] for i in ref["label"]]


def test_tritonclient_errors_are_exceptions_with_the_message(server):
    url, _ = server
    client = httpclient.InferenceServerClient(url)
    inp = httpclient.InferInput("input", [1, 7], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 7), np.float32))
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="wrong shape"):
        client.infer("clf", [inp])
    with pytest.raises(InferenceServerException, match="no model named"):
        client.infer("nope", [inp])
