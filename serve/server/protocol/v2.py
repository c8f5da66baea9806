"""KServe Open Inference Protocol v2: JSON and the binary tensor extension.

Binary extension: the body is a JSON header of ``Inference-Header-Content-Length`` bytes followed
by raw little-endian tensors, one per input (or output) whose ``parameters.binary_data_size``
gives its length. Outputs are returned binary when the output asks (``parameters.binary_data``)
or the request does (``parameters.binary_data_output``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from serve.server.protocol import RequestError, check_batch, clean_id, loads_json, to_float_array

HEADER = "Inference-Header-Content-Length"
# datatype ↔ numpy (little-endian); BYTES is handled separately.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
OUTPUTS = ("logits", "label", "score", "reject", "probabilities", "class_name")
DEFAULT_OUTPUTS = ("logits", "label", "score", "reject")


_DT_CACHE: dict[np.dtype, str] = {}


def v2_datatype(dtype: np.dtype) -> str:
    """The v2 datatype name of a numpy dtype (cached: it is asked several times per request)."""
    dtype = np.dtype(dtype)
    name = _DT_CACHE.get(dtype)
    if name is None:
        name = _DT_CACHE[dtype] = _v2_datatype(dtype)
    return name


def _v2_datatype(dtype: np.dtype) -> str:
    for name, dt in DTYPES.items():
        if dt == np.dtype(dtype).newbyteorder("<") or dt == np.dtype(dtype):
            return name
    return "BYTES"


@dataclass
class InferRequest:
    x: np.ndarray                                       # (n, *input_shape)
    id: str | None
    outputs: list[tuple[str, bool]] = field(default_factory=list)   # (name, binary?)


def _bad(msg: str, reason: str = "bad_request", status: int = 422) -> RequestError:
    return RequestError(msg, status, reason)


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise _bad(f"{HEADER} must be a non-negative integer; got {value!r}", status=400)
    return n


def check_tensor_header(datatype: object, shape: list[int] | None, input_name: str,
                        input_shape: tuple[int, ...], dtype: np.dtype,
                        max_instances: int) -> str:
    """The checks HTTP v2 and gRPC share on an input tensor's datatype and shape (``None``: not a
    list of integers); returns the expected v2 datatype."""
    want = v2_datatype(dtype)
    if datatype != want:
        raise _bad(f"wrong dtype: input {input_name!r} has datatype {datatype!r}, "
                   f"the model expects {want!r}; cast the tensor (e.g. numpy .astype(np.float32))",
                   "bad_dtype")
    if shape is None or any(d < 0 for d in shape):
        raise _bad(f'"shape" must be a list of non-negative integers like [n, '
                   f'{", ".join(map(str, input_shape))}]; got {shape!r}', "bad_shape")
    if len(shape) != 1 + len(input_shape) or tuple(shape[1:]) != input_shape:
        if shape and shape[0] == 0:
            raise _bad("empty batch: the input's shape has 0 samples; send at least one",
                       "empty_batch")
        raise _bad(f"wrong shape: input shape {shape}, the model expects "
                   f"[n, {', '.join(map(str, input_shape))}]", "bad_shape")
    if shape[0] > max_instances:
        raise _bad(f"too many samples: {shape[0]} in one request, the limit is {max_instances} "
                   "(ABSTAIN_MAX_INSTANCES); split the request", "too_many_instances", 413)
    return want


def parse_infer(body: bytes, header_length: str | None, input_name: str,
                input_shape: tuple[int, ...], dtype: np.dtype, max_instances: int) -> InferRequest:
    """An inference request body → validated batch and output selection."""
    hlen = _int_header(header_length)
    if hlen is not None:
        if hlen > len(body):
            raise _bad(f"{HEADER} is {hlen} but the body has only {len(body)} bytes", status=400)
        header, binary = body[:hlen], memoryview(body)[hlen:]
    else:
        header, binary = body, memoryview(b"")
    req = loads_json(header, "inference request JSON")
    _refuse_duplicate_keys(header)
    if not isinstance(req, dict):
        raise _bad('the request must be a JSON object with "inputs"')
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad('"inputs" must be a non-empty list of tensors '
                   f'[{{"name": "{input_name}", "shape": [...], "datatype": "...", "data": [...]}}]')
    if len(inputs) != 1:
        raise _bad(f"the model has one input ({input_name!r}); the request has {len(inputs)}")
    inp = inputs[0]
    if not isinstance(inp, dict):
        raise _bad("each input must be a JSON object")
    if inp.get("name") != input_name:
        raise _bad(f"unknown input {inp.get('name')!r}: the model's input is named {input_name!r}")
    shape = inp.get("shape")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                               for d in shape)):
        shape = None
    want = check_tensor_header(inp.get("datatype"), shape, input_name, input_shape, dtype,
                               max_instances)
    count = math.prod(shape)
    params = inp.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad('"parameters" must be a JSON object')
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad("binary_data_size must be a non-negative integer", status=400)
        if hlen is None:
            raise _bad(f"binary_data_size given without the {HEADER} header: send the JSON "
                       f"length in {HEADER}", status=400)
        if size != len(binary):
            raise _bad(f"binary_data_size is {size} but {len(binary)} bytes follow the JSON header",
                       status=400)
        if size != count * dtype.itemsize:
            raise _bad(f"wrong count: shape {shape} of {want} needs {count * dtype.itemsize} bytes; "
                       f"got {size}", "bad_shape")
        x = np.frombuffer(binary, dtype=dtype.newbyteorder("<")).reshape(shape)
    else:
        if "data" not in inp:
            raise _bad(f'input {input_name!r} has no "data" (and no binary_data_size)')
        x = to_float_array(inp["data"], dtype, f"input {input_name!r} data")
        if x.size != count:
            raise _bad(f"wrong count: shape {shape} needs {count} values; data holds {x.size}",
                       "bad_shape")
        x = x.reshape(shape)
    x = check_batch(x, input_shape, max_instances, f"input {input_name!r}")
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise _bad('"id" must be a string')
    rparams = req.get("parameters") or {}
    if not isinstance(rparams, dict):
        raise _bad('"parameters" must be a JSON object')
    all_binary = _flag(rparams.get("binary_data_output", False), "binary_data_output")
    outs = req.get("outputs")
    selected: list[tuple[str, bool]] = []
    if outs is None:
        selected = [(name, all_binary) for name in DEFAULT_OUTPUTS]
    else:
        if not isinstance(outs, list) or not all(isinstance(o, dict) for o in outs):
            raise _bad('"outputs" must be a list of {"name": ...} objects')
        for o in outs:
            name = o.get("name")
            if name not in OUTPUTS:
                raise _bad(f"unknown output {name!r}; available: {', '.join(OUTPUTS)}")
            p = o.get("parameters") or {}
            if not isinstance(p, dict):
                raise _bad(f'output {name!r}: "parameters" must be a JSON object')
            selected.append((name, _flag(p.get("binary_data", all_binary), "binary_data")))
    return InferRequest(np.ascontiguousarray(x), clean_id(rid), selected)


def _flag(value: object, name: str) -> bool:
    """A JSON boolean; ``"false"`` is a string, and a string is not a boolean."""
    if not isinstance(value, bool):
        raise _bad(f"{name} must be true or false (a JSON boolean); got {value!r:.40}")
    return value


# Keys of a request whose duplicates would silently change its meaning, and how many times each
# may appear in a valid one-input request with up to 6 outputs (counted in the raw JSON bytes: a
# key string inside a JSON string value is escaped, so only real strings are counted).
_KEYS = {b'"name"': 7, b'"datatype"': 1, b'"shape"': 1, b'"data"': 1, b'"inputs"': 1,
         b'"outputs"': 1, b'"id"': 1, b'"parameters"': 8, b'"binary_data_size"': 1}


_KEY_RE = re.compile(b"|".join(re.escape(k) for k in _KEYS))


def _refuse_duplicate_keys(header: bytes | memoryview) -> None:
    """A duplicate key in a tensor spec is refused (orjson keeps the last value silently)."""
    raw = bytes(header)
    found = _KEY_RE.findall(raw)
    if len(set(found)) == len(found) or all(raw.count(k) <= n for k, n in _KEYS.items()):
        return                                  # (the first test: every key once, one pass)
    import json

    def pairs(items: list[tuple[str, object]]) -> dict:
        keys = [k for k, _ in items]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise _bad(f"duplicate key {dup!r:.40} in the request JSON: give each key once",
                       status=400)
        return dict(items)

    json.loads(raw, object_pairs_hook=pairs)


def _output_array(name: str, out: dict[str, np.ndarray], class_names: list[str]) -> np.ndarray:
    if name == "class_name":
        return np.array([class_names[i] for i in out["label"].tolist()], dtype=object)
    return out[name]


def _bytes_tensor(arr: np.ndarray) -> bytes:
    parts = []
    for s in arr.ravel().tolist():
        b = s.encode()
        parts.append(len(b).to_bytes(4, "little") + b)
    return b"".join(parts)


def encode_infer(out: dict[str, np.ndarray], class_names: list[str], model_name: str,
                 version: str, rid: str, outputs: list[tuple[str, bool]]) -> tuple[bytes, int | None]:
    """Sliced outputs → (response body, JSON header length when binary tensors follow)."""
    specs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in outputs:
        arr = _output_array(name, out, class_names)
        dt = "BYTES" if arr.dtype == object else v2_datatype(arr.dtype)
        spec: dict[str, Any] = {"name": name, "datatype": dt, "shape": list(arr.shape)}
        if binary:
            blob = _bytes_tensor(arr) if dt == "BYTES" else \
                np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()
            spec["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            spec["data"] = arr.ravel().tolist() if dt == "BYTES" else np.ascontiguousarray(arr.ravel())
        specs.append(spec)
    header = orjson.dumps({"model_name": model_name, "model_version": version, "id": rid,
                           "outputs": specs}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
