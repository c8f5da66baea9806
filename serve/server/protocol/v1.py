"""The native v1 protocol: ``{"instances": [...], "top_k": k}`` → one decision per instance."""

from __future__ import annotations

from typing import Any

import numpy as np

from serve.server.protocol import RequestError, check_batch, clean_id, loads_json, to_float_array

MAX_TOP_K = 1000


def parse_top_k(value: object, num_classes: int) -> int:
    """``top_k`` (0 = no probabilities), capped at the number of classes."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > MAX_TOP_K:
        raise RequestError(f"top_k must be an integer between 0 and {MAX_TOP_K}; got {value!r}",
                           422, "bad_top_k")
    return min(value, num_classes)


def parse_request(body: bytes, input_shape: tuple[int, ...], dtype: np.dtype, num_classes: int,
                  max_instances: int) -> tuple[np.ndarray, int, str | None]:
    """JSON body → (batch ``(n, *input_shape)``, top_k, request id or None)."""
    req = loads_json(body)
    if not isinstance(req, dict):
        raise RequestError('the body must be a JSON object like {"instances": [[...], ...]}',
                           422, "bad_request")
    if "instances" not in req:
        raise RequestError('missing "instances": send {"instances": [[...], ...]} with one list '
                           "of numbers per sample", 422, "bad_request")
    inst = req["instances"]
    if not isinstance(inst, list):
        raise RequestError('"instances" must be a list of samples', 422, "bad_request")
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise RequestError('"id" must be a string', 422, "bad_request")
    top_k = parse_top_k(req.get("top_k"), num_classes)
    x = to_float_array(inst, dtype, '"instances"')
    if x.ndim == 1 and len(inst) == 0:
        x = x.reshape(0, *input_shape)
    return check_batch(x, input_shape, max_instances, '"instances"'), top_k, clean_id(rid)


def encode_predictions(out: dict[str, np.ndarray], class_names: list[str],
                       top_k: int) -> list[dict[str, Any]]:
    """Sliced batch outputs → the v1 ``predictions`` list (Python scalars, ready for orjson)."""
    labels = out["label"].tolist()
    scores = out["score"].tolist()
    rejects = out["reject"].tolist()
    preds: list[dict[str, Any]] = [
        {"label": lab, "class_name": class_names[lab], "score": s, "reject": r}
        for lab, s, r in zip(labels, scores, rejects, strict=True)
    ]
    if top_k:
        p = out["probabilities"]                                   # (n, K)
        idx = np.argsort(-p, axis=1, kind="stable")[:, :top_k]     # (n, top_k)
        top = np.take_along_axis(p, idx, axis=1).tolist()
        for pred, ii, pp in zip(preds, idx.tolist(), top, strict=True):
            pred["probabilities"] = {class_names[i]: v for i, v in zip(ii, pp, strict=True)}
    return preds
