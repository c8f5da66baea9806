"""A recorded batch → store rows (:data:`serve.feedback.store_schema.COLUMNS` order), on the flusher thread.

The request path hands the recorder whole columns (:meth:`serve.feedback.recorder.Recorder.submit`);
this turns one such batch into one tuple per sample. Top-k probabilities and inputs matter to
reviewers only, so they are kept for review items (deferred or audited) only; inputs as raw bytes
in their own dtype and shape (40 float32 values: 160 bytes, where their JSON text took ~780).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

TOPK = 3


@dataclass(slots=True)
class Batch:
    """One submitted batch, kept by reference until flushed (see ``Recorder.submit``)."""

    ts: float
    model: str
    version: str
    sha: str
    request_ids: Sequence[str]
    client_ids: Sequence[str | None] | None
    indices: Any
    labels: Any
    scores: Any
    rejects: Any
    audit: Any
    probabilities: Any
    inputs: Any
    class_names: Sequence[str] | None
    target_risk: float | None
    lineage: Sequence[str] | None
    sizes: Sequence[int] | None
    logits: Any
    temperature: Any                                     # a float, or one per sample (cascade)
    stages: Any = None                                   # a cascade's stage per sample

    @property
    def epoch(self) -> tuple[str, str, str]:
        return self.model, self.version, self.sha


def to_rows(b: Batch, review_ttl_s: float) -> list[tuple]:
    """The rows of ``b``: one per sample, in store column order."""
    rids, cids, idx = b.request_ids, b.client_ids, b.indices
    if b.sizes is not None:                              # per request → per sample
        rids = np.repeat(np.asarray(rids, dtype=object), b.sizes).tolist()
        if cids is not None:
            cids = np.repeat(np.asarray(cids, dtype=object), b.sizes).tolist()
        idx = np.concatenate([np.arange(k) for k in b.sizes]) if len(b.sizes) else np.zeros(0)
    n = len(rids)
    if cids is None:
        cids = [None] * n
    rej_a = np.asarray(b.rejects, dtype=bool)
    aud_a = np.asarray(b.audit, dtype=bool)
    review = rej_a | aud_a
    topk: list[str | None] = [None] * n
    blobs: list[bytes | None] = [None] * n
    dtype: str | None = None
    shape: str | None = None
    pending = np.flatnonzero(review)
    probs, pending_only = b.probabilities, False
    if probs is None and b.logits is not None and len(pending):
        t = b.temperature
        t = np.asarray(t, dtype=np.float64)[pending, None] if np.ndim(t) else t
        z = np.asarray(b.logits, dtype=np.float64)[pending] / t
        z = np.exp(z - z.max(axis=1, keepdims=True))
        probs, pending_only = z / z.sum(axis=1, keepdims=True), True
    if probs is not None and len(pending):
        pr = np.asarray(probs, dtype=np.float64)
        pr = pr if pending_only else pr[pending]
        top = np.argsort(-pr, axis=1, kind="stable")[:, :TOPK]
        vals = np.take_along_axis(pr, top, 1).round(6).tolist()
        for j, i in enumerate(pending.tolist()):         # orjson: 4× json's speed, same JSON
            topk[i] = orjson.dumps(list(zip(top[j].tolist(), vals[j], strict=True))).decode()
    if b.inputs is not None and len(pending):
        x = np.asarray(b.inputs)[pending]
        x = x.astype(x.dtype.newbyteorder("<"), copy=False)
        dtype, shape = x.dtype.str, ",".join(map(str, x.shape[1:]))
        for j, i in enumerate(pending.tolist()):
            blobs[i] = x[j].tobytes()
    expires = b.ts + review_ttl_s
    status = np.where(review, "pending", "none").tolist()
    exp = [expires if r else None for r in review.tolist()]
    dts = [dtype if blob is not None else None for blob in blobs]
    shp = [shape if blob is not None else None for blob in blobs]
    stg = [None] * n if b.stages is None else np.asarray(b.stages, dtype=np.int64).tolist()
    return list(zip(map(str, rids), np.asarray(idx, dtype=np.int64).tolist(), cids, [b.ts] * n,
                    [b.model] * n, [b.version] * n, [b.sha] * n,
                    np.asarray(b.labels, dtype=np.int64).tolist(),
                    np.asarray(b.scores, dtype=np.float64).tolist(), rej_a.astype(int).tolist(),
                    aud_a.astype(int).tolist(), topk, blobs, dts, shp, status, exp, stg,
                    strict=True))
