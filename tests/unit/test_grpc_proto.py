"""The gRPC v2 messages: reproducible from the .proto, wire-compatible with Triton's client, and
decoded into exactly what the HTTP v2 decode stage produces (same batch, same errors)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from serve.server.protocol import RequestError, v2
from serve.server.protocol import grpc_v2 as P

ROOT = Path(__file__).resolve().parents[2]
SHAPE, DT = (8,), np.dtype(np.float32)


def test_make_proto_reproduces_the_committed_descriptor_set(tmp_path):
    pytest.importorskip("grpc_tools")
    recipe = (ROOT / "Makefile").read_text().split("\nproto:", 1)[1].split("\n\n", 1)[0]
    cmd = " ".join(recipe.replace("\\\n", " ").split("\n", 1)[1].split())
    assert cmd.startswith("$(BIN)/python -m grpc_tools.protoc")
    out = tmp_path / "regen.desc"
    args = cmd.replace("$(BIN)/python", "").split()[2:]
    args = [re.sub(r"^--descriptor_set_out=.*", f"--descriptor_set_out={out}", a) for a in args]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *args], cwd=ROOT, check=True,
                   timeout=60)
    assert out.read_bytes() == P.DESCRIPTOR_SET.read_bytes()


def test_messages_are_wire_compatible_with_tritonclient():
    """Every field we define has the number, type and cardinality Triton's client uses."""
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    pool = service_pb2.DESCRIPTOR.pool

    def check(ours, name):
        theirs = pool.FindMessageTypeByName(name)
        for f in ours.fields:
            t = theirs.fields_by_name[f.name]
            assert (f.number, f.type, f.is_repeated) == (t.number, t.type, t.is_repeated), \
                f"{name}.{f.name}"
            if f.message_type is not None:
                assert f.message_type.full_name == t.message_type.full_name
                if not f.message_type.GetOptions().map_entry:
                    check(f.message_type, f.message_type.full_name)
            if f.containing_oneof is not None:
                assert t.containing_oneof.name == f.containing_oneof.name
        assert len(ours.fields) >= 1 or not theirs.fields

    for name, cls in P.MESSAGES.items():
        check(cls.DESCRIPTOR, f"inference.{name}")
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == P.SERVICE
    for method, (req, resp) in P.METHODS.items():
        m = service.methods_by_name[method]
        assert (m.input_type.name, m.output_type.name) == (req, resp)


def _grpc(x: np.ndarray, raw: bool, **kw) -> object:
    req = P.ModelInferRequest(model_name="m", id=kw.pop("id", ""))
    t = req.inputs.add(name=kw.pop("name", "input"), datatype=kw.pop("datatype", "FP32"),
                       shape=kw.pop("shape", list(x.shape)))
    if raw:
        req.raw_input_contents.append(x.astype("<f4").tobytes())
    else:
        t.contents.fp32_contents.extend(x.ravel().tolist())
    for name in kw.pop("outputs", ()):
        req.outputs.add(name=name)
    return req


def _http(x: np.ndarray, **kw) -> bytes:
    inp = {"name": kw.get("name", "input"), "datatype": kw.get("datatype", "FP32"),
           "shape": kw.get("shape", list(x.shape)), "data": x.ravel().tolist()}
    body = {"inputs": [inp]}
    if "outputs" in kw:
        body["outputs"] = [{"name": n} for n in kw["outputs"]]
    return orjson.dumps(body)


@pytest.mark.parametrize("raw", [True, False])
def test_decode_equals_http_v2(raw):
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    dec, is_raw = P.parse_infer(_grpc(x, raw, id="r7", outputs=["score", "class_name"]),
                                "input", SHAPE, DT, 64)
    ref = v2.parse_infer(_http(x, outputs=["score", "class_name"]), None, "input", SHAPE, DT, 64)
    assert is_raw is raw
    np.testing.assert_array_equal(dec.x, ref.x)
    assert dec.x.dtype == np.float32 and dec.id == "r7"
    assert dec.outputs == [("score", raw), ("class_name", raw)]
    default, _ = P.parse_infer(_grpc(x, raw), "input", SHAPE, DT, 64)
    assert default.outputs == [(n, raw) for n in v2.DEFAULT_OUTPUTS]


BAD = {  # fault → the request fields that make it
    "wrong dtype": {"datatype": "FP64"},
    "wrong shape": {"shape": [2, 4]},
    "wrong input name": {"name": "pixels"},
    "unknown output": {"outputs": ["logits", "entropy"]},
    "empty batch": {"shape": [0, 8]},
    "too many samples": {"shape": [65, 8]},
}


@pytest.mark.parametrize("fault", sorted(BAD))
def test_errors_carry_the_http_status_reason_and_message(fault):
    kw = BAD[fault]
    n = kw.get("shape", [2, 8])[0]
    x = np.ones((n, 8), np.float32)
    with pytest.raises(RequestError) as http:
        v2.parse_infer(_http(x, **kw), None, "input", SHAPE, DT, 64)
    with pytest.raises(RequestError) as grpc_err:
        P.parse_infer(_grpc(x, True, **dict(kw)), "input", SHAPE, DT, 64)
    assert (grpc_err.value.status, grpc_err.value.reason, str(grpc_err.value)) == \
        (http.value.status, http.value.reason, str(http.value))


@pytest.mark.parametrize("raw", [True, False])
def test_nan_and_count_mismatch_are_refused(raw):
    x = np.ones((2, 8), np.float32)
    x[1, 3] = np.nan
    with pytest.raises(RequestError, match=r"NaN or infinite values .* sample\(s\) \[1\]"):
        P.parse_infer(_grpc(x, raw), "input", SHAPE, DT, 64)
    short = _grpc(np.ones((2, 8), np.float32), raw, shape=[3, 8])
    with pytest.raises(RequestError, match="wrong count: shape \\[3, 8\\]") as err:
        P.parse_infer(short, "input", SHAPE, DT, 64)
    assert err.value.status == 422


def test_encode_raw_and_typed_hold_the_same_values():
    out = {"logits": np.float32([[1, 2], [3, -4]]), "label": np.int64([1, 0]),
           "score": np.float64([0.731, 0.982]), "reject": np.bool_([True, False]),
           "probabilities": np.float64([[0.269, 0.731], [0.982, 0.018]])}
    names = [*v2.DEFAULT_OUTPUTS, "probabilities", "class_name"]
    raw = P.encode_infer(out, ["a", "b"], "m", "3", "id1", [(n, True) for n in names])
    typed = P.encode_infer(out, ["a", "b"], "m", "3", "id1", [(n, False) for n in names])
    assert (raw.model_name, raw.model_version, raw.id) == ("m", "3", "id1")
    assert len(raw.raw_output_contents) == len(names) and not typed.raw_output_contents
    for i, (r, t) in enumerate(zip(raw.outputs, typed.outputs, strict=True)):
        assert (r.name, r.datatype, list(r.shape)) == (t.name, t.datatype, list(t.shape))
        values = list(getattr(t.contents, P.CONTENTS[t.datatype]))
        if t.datatype == "BYTES":
            assert values == [b"b", b"a"]
            assert raw.raw_output_contents[i] == b"\x01\x00\x00\x00b\x01\x00\x00\x00a"
        else:
            arr = np.frombuffer(raw.raw_output_contents[i], v2.DTYPES[t.datatype])
            assert arr.tolist() == values == out[t.name].ravel().tolist()


def test_http_statuses_map_to_grpc_codes():
    grpc = pytest.importorskip("grpc")
    from serve.server.dataplane.admit import NotReady
    from serve.server.dataplane.batch import DeadlineExceeded, Overloaded
    from serve.server.dataplane.batch_queue import Unloading
    from serve.server.error_answers import grpc_status as status_code

    C = grpc.StatusCode
    for status, code in [(400, C.INVALID_ARGUMENT), (415, C.INVALID_ARGUMENT),
                         (422, C.INVALID_ARGUMENT), (401, C.UNAUTHENTICATED), (404, C.NOT_FOUND),
                         (413, C.RESOURCE_EXHAUSTED), (503, C.RESOURCE_EXHAUSTED),
                         (504, C.DEADLINE_EXCEEDED), (500, C.INTERNAL)]:
        assert status_code(RequestError("x", status)) == code, status
    assert status_code(Overloaded("model m/1 has 9 samples queued")) == C.RESOURCE_EXHAUSTED
    assert status_code(Unloading("model m/1 is being unloaded; retry")) == C.UNAVAILABLE
    assert status_code(NotReady("starting")) == C.UNAVAILABLE
    assert status_code(DeadlineExceeded("late")) == C.DEADLINE_EXCEEDED


def test_fp16_input_must_be_raw():
    x = np.ones((2, 8), np.float16)
    req = P.ModelInferRequest(model_name="m")
    req.inputs.add(name="input", datatype="FP16", shape=[2, 8])
    with pytest.raises(RequestError, match="FP16 tensors have no typed contents"):
        P.parse_infer(req, "input", SHAPE, np.dtype(np.float16), 64)
    req.raw_input_contents.append(x.tobytes())
    dec, raw = P.parse_infer(req, "input", SHAPE, np.dtype(np.float16), 64)
    assert raw and dec.x.dtype == np.float16 and dec.x.tolist() == x.tolist()
