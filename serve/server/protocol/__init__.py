"""Wire protocols: request parsing and response encoding, shared by v1 (native) and v2 (KServe OIP).

Tensor payloads go straight from orjson / raw bytes into numpy (pydantic models in
:mod:`serve.server.protocol.schemas` only document the shapes in OpenAPI). Every problem with a request
raises a :class:`RequestError` carrying its HTTP status and a message saying how to fix it; every
request decodes to a :class:`Decoded`, whichever the wire format (HTTP v1, v2 or gRPC).

May import: ``serve.errors`` and numpy/orjson/protobuf; never the data plane above it (a
``lint-imports`` contract).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import orjson

from serve.errors import AbstainError

__all__ = ["MAX_ID_CHARS", "Decoded", "RequestError", "check_batch", "clean_id", "loads_json",
           "parse_uint", "short", "to_float_array"]


MAX_ID_CHARS = 128
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]+")


def clean_id(value: str | None) -> str | None:
    """A client's request id as printable ASCII of at most :data:`MAX_ID_CHARS` characters.

    Ids reach HTTP headers, gRPC metadata, logs and the decision store's text columns, where a
    NUL or a non-ASCII character breaks the write (PostgreSQL refuses NUL in text) or the answer
    (gRPC metadata is ASCII). Other characters are dropped, not escaped: the id is the client's
    label, never a key. Empty after cleaning → None.
    """
    if not value:
        return None
    if not (value.isascii() and value.isprintable()):
        value = _NOT_PRINTABLE.sub("", value[:MAX_ID_CHARS * 8])
    return value[:MAX_ID_CHARS] or None


class RequestError(AbstainError):
    """A bad request; ``status`` is the HTTP code, ``reason`` a short metrics label."""

    def __init__(self, message: str, status: int = 422, reason: str = "bad_request",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


@dataclass(slots=True)
class Decoded:
    """A decoded request: the batch, and how to answer it."""

    x: np.ndarray                                   # (n, *input_shape)
    id: str | None = None
    top_k: int = 0                                  # v1: probabilities of the top k classes
    outputs: list[tuple[str, bool]] = field(default_factory=list)   # v2: (name, binary?)

    @property
    def wants_probabilities(self) -> bool:
        return bool(self.top_k) or any(name == "probabilities" for name, _ in self.outputs)


def loads_json(body: bytes, what: str = "request body") -> object:
    """Parse JSON with orjson; explain NaN/Infinity literals, which JSON does not allow."""
    if not body.strip():
        raise RequestError(f"the {what} is empty; send a JSON object", 400, "empty_body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        if any(t in body for t in (b"NaN", b"Infinity")):
            raise RequestError(
                f"the {what} contains NaN or Infinity, which are neither valid JSON nor valid "
                "inputs: send finite numbers", 422, "nan") from None
        raise RequestError(f"the {what} is not valid JSON ({err}); send a JSON object",
                           400, "malformed_json") from None


def check_batch(x: np.ndarray, input_shape: tuple[int, ...], max_instances: int,
                what: str = "instances") -> np.ndarray:
    """Validate a float batch ``(n, *input_shape)``: shape, count and finiteness.

    A batch of flat rows ``(n, prod(input_shape))`` is reshaped, so image models also accept
    flattened pixels.
    """
    if x.ndim == 0 or x.shape[0] == 0:
        raise RequestError(f"empty batch: {what} holds no samples; send at least one",
                           422, "empty_batch")
    n = x.shape[0]
    if n > max_instances:
        raise RequestError(f"too many samples: {n} in one request, the limit is {max_instances} "
                           "(ABSTAIN_MAX_INSTANCES); split the request", 413, "too_many_instances")
    if x.shape[1:] != input_shape:
        if x.ndim == 2 and x.shape[1] == math.prod(input_shape) and len(input_shape) > 1:
            x = x.reshape((n, *input_shape))
        else:
            single = " (a single sample must still be wrapped in a list)" \
                if x.shape == input_shape or x.ndim == 1 else ""
            raise RequestError(
                f"wrong shape: {what} has shape {list(x.shape)}, but the model expects "
                f"[n, {', '.join(map(str, input_shape))}]{single}", 422, "bad_shape")
    if not np.isfinite(x).all():
        rows = np.flatnonzero(~np.isfinite(x.reshape(n, -1)).all(axis=1))
        raise RequestError(
            f"{what} contain NaN or infinite values (or values beyond float32 range) in sample(s) "
            f"{rows[:10].tolist()}; send finite numbers", 422, "nan")
    return np.ascontiguousarray(x)


def to_float_array(data: object, dtype: np.dtype, what: str) -> np.ndarray:
    """Nested JSON numbers → numpy array in ``dtype``; refuses strings, bools, ragged lists."""
    try:
        arr = np.asarray(data)
    except OverflowError:
        raise RequestError(f"{what} holds an integer too large for a number", 422, "nan") from None
    except (ValueError, TypeError):
        raise RequestError(f"{what} is ragged: every sample must have the same shape",
                           422, "bad_shape") from None
    if arr.dtype.kind not in "iuf":
        kind = {"b": "booleans", "U": "strings", "S": "strings", "O": "mixed or ragged values"}
        raise RequestError(f"{what} must hold numbers only; got {kind.get(arr.dtype.kind, arr.dtype)}",
                           422, "bad_dtype")
    with np.errstate(over="ignore", invalid="ignore"):
        return arr.astype(dtype, copy=False)


def parse_uint(raw: object, name: str, max_digits: int = 6) -> int:
    """A non-negative integer from a query string or form field: ASCII digits only, bounded length.

    ``str.isdigit`` accepts ``'²'`` and ``int()`` refuses 5,000-digit numbers with a ValueError;
    both must be a 422 that names the field, never a 500.
    """
    text = raw.strip() if isinstance(raw, str) else ""
    if not (0 < len(text) <= max_digits and text.isascii() and text.isdigit()):
        shown = repr(raw)[:40]
        raise RequestError(f"{name} must be a non-negative integer of at most {max_digits} digits; "
                           f"got {shown}", 422, f"bad_{name}")
    return int(text)


def short(value: object, limit: int = 64) -> str:
    """``repr`` of a user-supplied value, cut to ``limit`` characters (error messages echo it)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
