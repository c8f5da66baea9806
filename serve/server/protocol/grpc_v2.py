"""KServe Open Inference Protocol v2 over gRPC: messages, request → :class:`Decoded`, outputs → reply.

The messages come from ``proto/grpc_predict_v2.proto`` (package ``inference``, service
``GRPCInferenceService``), compiled by ``make proto`` into the descriptor set
``proto/grpc_predict_v2.desc`` and built here into message classes in a *private* descriptor
pool. Not generated ``_pb2`` modules: they register ``inference.*`` in protobuf's global pool,
where ``tritonclient.grpc`` registers the same names, and a process that imports both (a test, a
client embedding the server) would fail with "duplicate symbol"; and a descriptor set carries no
protobuf-version check, so the server works with protobuf 5, 6 or 7.

A request decodes to exactly what the HTTP v2 decode stage produces (a validated batch, the id,
the selected outputs), with the same checks and the same messages. Outputs come back the way the
inputs came: ``raw_input_contents`` → ``raw_output_contents`` (what Triton does, and all that
``tritonclient``'s ``as_numpy`` reads for numbers), typed ``contents`` → typed ``contents``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from serve.server.protocol import Decoded, RequestError, check_batch, clean_id
from serve.server.protocol.v2 import (
    DEFAULT_OUTPUTS,
    DTYPES,
    OUTPUTS,
    check_tensor_header,
    v2_datatype,
)

SERVICE = "inference.GRPCInferenceService"
DESCRIPTOR_SET = Path(__file__).with_name("proto") / "grpc_predict_v2.desc"
METHODS = {                                   # rpc → (request message, response message)
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
}
# v2 datatype → the typed-contents field that holds it.
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
            "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
            "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
            "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _load_messages() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    for f in files.file:
        pool.Add(f)
    pkg = pool.FindFileByName("grpc_predict_v2.proto")
    return {name: message_factory.GetMessageClass(d) for name, d in pkg.message_types_by_name.items()}


MESSAGES = _load_messages()
ModelInferRequest = MESSAGES["ModelInferRequest"]
ModelInferResponse = MESSAGES["ModelInferResponse"]


def _bad(msg: str, reason: str = "bad_request", status: int = 422) -> RequestError:
    return RequestError(msg, status, reason)


def parse_infer(req: Any, input_name: str, input_shape: tuple[int, ...], dtype: np.dtype,
                max_instances: int) -> tuple[Decoded, bool]:
    """A ``ModelInferRequest`` → (the decoded batch and output selection, raw outputs?).

    Raises:
        RequestError: the same status, reason and message as the HTTP v2 decode stage.
    """
    inputs = req.inputs
    if not inputs:
        raise _bad('"inputs" must be a non-empty list of tensors '
                   f'[{{"name": "{input_name}", "shape": [...], "datatype": "...", "data": [...]}}]')
    if len(inputs) != 1:
        raise _bad(f"the model has one input ({input_name!r}); the request has {len(inputs)}")
    inp = inputs[0]
    if inp.name != input_name:
        raise _bad(f"unknown input {inp.name!r}: the model's input is named {input_name!r}")
    shape = list(inp.shape)
    want = check_tensor_header(inp.datatype, shape, input_name, input_shape, dtype,
                               max_instances)
    count = math.prod(shape)
    raw = len(req.raw_input_contents) > 0
    if raw:
        if len(req.raw_input_contents) != 1:
            raise _bad(f"raw_input_contents holds {len(req.raw_input_contents)} tensors for 1 "
                       "input: send one per input", status=400)
        if inp.HasField("contents"):
            raise _bad("input has both raw_input_contents and typed contents: send one of them",
                       status=400)
        blob = req.raw_input_contents[0]
        if len(blob) != count * dtype.itemsize:
            raise _bad(f"wrong count: shape {shape} of {want} needs {count * dtype.itemsize} "
                       f"bytes; got {len(blob)}", "bad_shape")
        x = np.frombuffer(blob, dtype=dtype.newbyteorder("<")).reshape(shape)
    else:
        field = CONTENTS.get(want)
        if field is None:
            raise _bad(f"{want} tensors have no typed contents field in the v2 protocol: send "
                       f"input {input_name!r} as raw_input_contents")
        values = getattr(inp.contents, field)
        if not values:
            raise _bad(f"input {input_name!r} has no contents.{field} (and no raw_input_contents)")
        if len(values) != count:
            raise _bad(f"wrong count: shape {shape} needs {count} values; data holds "
                       f"{len(values)}", "bad_shape")
        with np.errstate(over="ignore", invalid="ignore"):
            x = np.asarray(values, dtype=dtype).reshape(shape)
    x = check_batch(x, input_shape, max_instances, f"input {input_name!r}")
    outputs: list[tuple[str, bool]] = []
    if not req.outputs:
        outputs = [(name, raw) for name in DEFAULT_OUTPUTS]
    for o in req.outputs:
        if o.name not in OUTPUTS:
            raise _bad(f"unknown output {o.name!r}; available: {', '.join(OUTPUTS)}")
        outputs.append((o.name, raw))
    return Decoded(np.ascontiguousarray(x), clean_id(req.id), 0, outputs), raw


def _bytes_tensor(values: list[str]) -> bytes:
    return b"".join(len(b).to_bytes(4, "little") + b for b in (s.encode() for s in values))


def encode_infer(out: dict[str, np.ndarray], class_names: list[str], model_name: str,
                 version: str, rid: str, outputs: list[tuple[str, bool]]) -> Any:
    """Sliced outputs → a ``ModelInferResponse`` (raw contents when the outputs ask for raw)."""
    resp = ModelInferResponse(model_name=model_name, model_version=version, id=rid)
    for name, raw in outputs:
        t = resp.outputs.add()
        t.name = name
        if name == "class_name":
            labels = [class_names[i] for i in out["label"].tolist()]
            t.datatype = "BYTES"
            t.shape.append(len(labels))
            if raw:
                resp.raw_output_contents.append(_bytes_tensor(labels))
            else:
                t.contents.bytes_contents.extend(s.encode() for s in labels)
            continue
        arr = out[name]
        t.datatype = v2_datatype(arr.dtype)
        t.shape.extend(arr.shape)
        if raw:
            resp.raw_output_contents.append(
                np.ascontiguousarray(arr, DTYPES[t.datatype]).tobytes())
        else:
            getattr(t.contents, CONTENTS[t.datatype]).extend(arr.ravel().tolist())
    return resp


def model_metadata(meta: dict[str, Any]) -> Any:
    """The HTTP v2 model metadata (``serve/server/control.py``'s ``metadata``) as a protobuf message."""
    resp = MESSAGES["ModelMetadataResponse"](name=meta["name"], versions=meta["versions"],
                                             platform=meta["platform"])
    for src, dst in ((meta["inputs"], resp.inputs), (meta["outputs"], resp.outputs)):
        for t in src:
            dst.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
    return resp
