"""v2 / v1 request parsing and response encoding, without a server."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from serve.server.protocol import RequestError, check_batch, loads_json, v1, v2

F32 = np.dtype(np.float32)


def test_v2_json_nested_and_flat_data_parse_the_same():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for data in (x.ravel().tolist(), x.tolist()):
        body = orjson.dumps({"id": "i", "inputs": [{"name": "input", "shape": [2, 3],
                                                    "datatype": "FP32", "data": data}]})
        req = v2.parse_infer(body, None, "input", (3,), F32, 10)
        np.testing.assert_array_equal(req.x, x)
        assert req.id == "i" and [n for n, _ in req.outputs] == list(v2.DEFAULT_OUTPUTS)


def test_v2_binary_input_and_encoded_outputs_round_trip():
    x = np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)
    header = orjson.dumps({"inputs": [{"name": "input", "shape": [3, 2], "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "parameters": {"binary_data_output": True}})
    req = v2.parse_infer(header + x.tobytes(), str(len(header)), "input", (2,), F32, 10)
    np.testing.assert_array_equal(req.x, x)
    out = {"logits": x, "label": np.array([0, 1, 1]), "score": np.array([.1, .2, .3]),
           "reject": np.array([True, False, True]), "probabilities": np.ones((3, 2)) / 2}
    body, hlen = v2.encode_infer(out, ["a", "b"], "m", "1", "id", req.outputs)
    meta = orjson.loads(body[:hlen])
    sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
    assert sizes == [24, 24, 24, 3] and len(body) == hlen + sum(sizes)
    assert np.frombuffer(body[hlen + 48:hlen + 72], "<f8").tolist() == [.1, .2, .3]


@pytest.mark.parametrize(("x", "words"), [
    (np.zeros((0, 2), np.float32), "empty batch"),
    (np.zeros((11, 2), np.float32), "too many samples"),
    (np.zeros((1, 3), np.float32), "wrong shape"),
    (np.array([[np.inf, 0]], np.float32), "NaN or infinite"),
])
def test_check_batch_refuses(x, words):
    with pytest.raises(RequestError, match=words):
        check_batch(x, (2,), 10)


def test_flat_rows_are_reshaped_for_image_models():
    assert check_batch(np.zeros((2, 64), np.float32), (1, 8, 8), 10).shape == (2, 1, 8, 8)


def test_json_errors_name_the_problem():
    with pytest.raises(RequestError, match="NaN or Infinity"):
        loads_json(b'{"a": NaN}')
    with pytest.raises(RequestError, match="not valid JSON"):
        loads_json(b"{")


def test_v1_top_k_ordering_and_limits():
    out = {"label": np.array([1]), "score": np.array([0.7]), "reject": np.array([False]),
           "probabilities": np.array([[0.2, 0.7, 0.1]])}
    preds = v1.encode_predictions(out, ["a", "b", "c"], 2)
    assert preds == [{"label": 1, "class_name": "b", "score": 0.7, "reject": False,
                      "probabilities": {"b": 0.7, "a": 0.2}}]
    assert v1.parse_top_k(99, 3) == 3
    with pytest.raises(RequestError, match="top_k"):
        v1.parse_top_k(True, 3)
