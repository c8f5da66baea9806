"""The HTTP ceiling: the least a Python server can do for a v2 JSON inference request.

A bare ASGI callable (no framework, no validation beyond what numpy does, no batching, no
metrics): read the body, ``orjson.loads``, one ``np.asarray`` of the input tensor, one session
run, ``orjson.dumps`` of the logits. The harness runs it under uvicorn with uvloop + httptools,
one worker, exactly like abstain, so the ratio abstain / ceiling is the cost of abstain itself.

Configured by environment: ``BENCH_MODELS`` (JSON ``{"name": "path/to/model.onnx"}``),
``BENCH_DEVICE`` and ``BENCH_INTRA_OP_THREADS`` (the server's settings).
Route: ``POST /v2/models/{name}/infer``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import orjson

from serve.server.runtime import OnnxModel

_MODELS = {name: OnnxModel(path, device=os.environ.get("BENCH_DEVICE", "auto"),  # type: ignore[arg-type]
                           intra_op_threads=int(os.environ.get("BENCH_INTRA_OP_THREADS", "0")))
           for name, path in json.loads(os.environ.get("BENCH_MODELS", "{}")).items()}
_HEADERS = [(b"content-type", b"application/json")]


async def _send(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    parts = scope["path"].split("/")          # ['', 'v2', 'models', name, 'infer']
    model = _MODELS.get(parts[3]) if len(parts) == 5 else None
    chunks = []
    more = True
    while more:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        more = msg.get("more_body", False)
    if model is None:
        return await _send(send, 404, b'{"error": "no such model"}')
    req = orjson.loads(b"".join(chunks))
    inp = req["inputs"][0]
    x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])   # (n, *input_shape)
    logits = model.run(x)                                                  # (n, K)
    await _send(send, 200, orjson.dumps(
        {"model_name": parts[3], "outputs": [{"name": "logits", "datatype": "FP32",
                                              "shape": list(logits.shape), "data": logits.ravel()}]},
        option=orjson.OPT_SERIALIZE_NUMPY))
