"""The certified decision as ONNX nodes: logits → ``label``, ``score``, ``reject`` inside the model.

:func:`attach_decision` appends to a model's graph, after its ``logits`` output, the nodes that
compute exactly what :class:`serve.decision.DecisionRule` computes on the server, so Triton,
onnxruntime in any language, or a browser applies the rule that `abstain calibrate` certified
without re-implementing it. :func:`decision_head` builds the same nodes as a model of their own
(input ``logits``), which the tests drive with adversarial logits.

Exactness: the graph mirrors :mod:`serve.scores` operation by operation in float64. Sums are
unrolled into numpy's own pairwise order (8 accumulators, blocks of 128), so maxima, differences,
sums, means, ``**2`` / ``**0.5`` and divisions are bit-identical to the server's. Only ``exp``,
``log`` and a general ``pow`` are left to the runtime's math library, which may differ from
numpy's in the last bit. The server's last step, ``serve.scores.snap_scores`` when it exists,
is mirrored with its own constants (``c = s·SPLITTER; c − (c − s)`` where ``|s| < GUARD``).
``log1p`` has no ONNX operator: it is computed as ``log(u)·x/(u − 1)`` with ``u = 1 + x``
(Goldberg), accurate to a few ulp.

Rows with a non-finite logit, which the server refuses with an error, are deferred here.
Needs the ``onnx`` package (no torch, no onnxruntime).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serve import scores as _scores
from serve.calibration.artifact import Calibration
from serve.errors import AbstainError
from serve.scores import Score

PREFIX = "abstain_decision/"
OUTPUTS = ("label", "score", "reject")
MIN_OPSET = 13
HEAD_OPSET = 20
# Whether serve.scores snaps every score as its last step; the graph then does the same.
# tests/integration/test_decision_graph.py fails if the two drift apart.
SNAPS = hasattr(_scores, "snap_scores")
_PAIRWISE_BLOCK = 128


class DecisionGraphError(AbstainError):
    """A model or calibration the decision graph cannot be built for."""


class _Graph:
    """Accumulates prefixed nodes and constants; each op returns its output's name."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self._n = 0
        self._consts: dict[tuple[str, bytes], str] = {}

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{PREFIX}{hint}_{self._n}"

    def const(self, value: Any, dtype: Any) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str + str(arr.shape), arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.name("const")
            self.inits.append(numpy_helper.from_array(arr, self._consts[key]))
        return self._consts[key]

    def op(self, op_type: str, *inputs: str, out: str | None = None, n_out: int = 1,
           **attrs: Any) -> str:
        """Add a node; returns its first output's name (the others get fresh names)."""
        outs = [out or self.name(op_type.lower())] + [self.name("unused") for _ in range(n_out - 1)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs,
                                           name=self.name(op_type), **attrs))
        return outs[0]

    def reduce_max(self, x: str, keepdims: bool) -> str:
        if self.opset >= 18:
            return self.op("ReduceMax", x, self.const([1], np.int64), keepdims=int(keepdims))
        return self.op("ReduceMax", x, axes=[1], keepdims=int(keepdims))

    def column(self, x: str, j: int) -> str:
        return self.op("Gather", x, self.const(j, np.int64), axis=1)

    def cols(self, x: str, lo: int, hi: int, step: int = 1) -> str:
        """``x[:, lo:hi:step]``, keeping the axis."""
        return self.op("Slice", x, self.const([lo], np.int64), self.const([hi], np.int64),
                       self.const([1], np.int64), self.const([step], np.int64))

    def row_sum(self, x: str, k: int) -> str:
        """Σ over axis 1 of an (n, k) tensor → (n,), in numpy's pairwise order (bit-identical).

        numpy sums a row of length < 8 left to right; up to 128 in 8 interleaved accumulators
        combined as ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), then the remainder left to right; longer
        rows as the sum of two halves (the first a multiple of 8). The accumulators run here as
        one (n, 8) tensor, so the graph has ~k/4 nodes, not ~2k.
        """
        return self.op("Squeeze", self._pairwise(x, 0, k), self.const([1], np.int64))

    def _pairwise(self, x: str, lo: int, hi: int) -> str:
        n = hi - lo
        if n < 8:
            acc = self.cols(x, lo, lo + 1)
            for j in range(lo + 1, hi):
                acc = self.op("Add", acc, self.cols(x, j, j + 1))
            return acc
        if n <= _PAIRWISE_BLOCK:
            r = self.cols(x, lo, lo + 8)
            for i in range(lo + 8, hi - n % 8, 8):
                r = self.op("Add", r, self.cols(x, i, i + 8))
            for width in (8, 4, 2):                          # pairs (0,1), (2,3), … then up the tree
                r = self.op("Add", self.cols(r, 0, width, 2), self.cols(r, 1, width, 2))
            for j in range(hi - n % 8, hi):
                r = self.op("Add", r, self.cols(x, j, j + 1))
            return r
        half = n // 2
        half -= half % 8
        return self.op("Add", self._pairwise(x, lo, lo + half), self._pairwise(x, lo + half, hi))

    def power(self, x: str, e: float) -> str:
        """``x ** e`` as numpy evaluates it for a Python float exponent (its exact fast paths)."""
        if e == 1.0:
            return x
        if e == 2.0:
            return self.op("Mul", x, x)
        if e == 0.5:
            return self.op("Sqrt", x)
        if e == -1.0:
            return self.op("Reciprocal", x)
        return self.op("Pow", x, self.const(e, np.float64))

    def log1p(self, x: str) -> str:
        one = self.const(1.0, np.float64)
        u = self.op("Add", one, x)
        um1 = self.op("Sub", u, one)
        ratio = self.op("Div", x, um1)
        general = self.op("Mul", self.op("Log", u), ratio)
        return self.op("Where", self.op("Equal", um1, self.const(0.0, np.float64)), x, general)


def _max_and_rest(g: _Graph, z: str, k: int) -> tuple[str, str]:
    """Row max (n,) and Σ_{k ≠ argmax} exp(z_k − max) (n,), as serve.scores._max_and_rest."""
    m_keep = g.reduce_max(z, keepdims=True)
    e = g.op("Exp", g.op("Sub", z, m_keep))
    top = g.op("ArgMax", z, axis=1, keepdims=1, select_last_index=0)
    is_top = g.op("Equal", g.const(np.arange(k), np.int64), top)
    rest = g.row_sum(g.op("Where", is_top, g.const(0.0, np.float64), e), k)
    return g.reduce_max(z, keepdims=False), rest


def _centred(g: _Graph, z: str, k: int) -> str:
    d = g.op("Sub", z, g.reduce_max(z, keepdims=True))
    mean = g.op("Div", g.row_sum(d, k), g.const(float(k), np.float64))
    return g.op("Sub", d, g.op("Unsqueeze", mean, g.const([1], np.int64)))


def _pnorm(g: _Graph, z: str, k: int, p: float) -> str:
    u = _centred(g, z, k)
    top = g.reduce_max(u, keepdims=False)
    if p == 0:
        return top
    a = g.op("Abs", u)
    if math.isinf(p):
        norm = g.reduce_max(a, keepdims=False)
    else:
        scale = g.reduce_max(a, keepdims=True)
        zero = g.op("Equal", scale, g.const(0.0, np.float64))
        scale = g.op("Where", zero, g.const(1.0, np.float64), scale)
        total = g.row_sum(g.power(g.op("Div", a, scale), p), k)
        flat = g.op("Squeeze", scale, g.const([1], np.int64))
        norm = g.op("Mul", flat, g.power(total, 1.0 / p))
    floor = g.const(1e-12, np.float64)
    return g.op("Div", top, g.op("Max", norm, floor))


def _score(g: _Graph, z: str, k: int, score: Score) -> str:
    if score.temperature != 1.0:
        z = g.op("Div", z, g.const(score.temperature, np.float64))
    spec = score.spec
    if spec in ("msp", "log_msp", "energy"):
        m, rest = _max_and_rest(g, z, k)
        lp = g.log1p(rest)
        if spec == "energy":
            s = g.op("Add", m, lp)
            return g.op("Mul", s, g.const(score.temperature, np.float64))
        neg = g.op("Neg", lp)
        return g.op("Exp", neg) if spec == "msp" else neg
    if spec == "maxlogit":
        return g.reduce_max(z, keepdims=False)
    if spec == "centred_maxlogit":
        return _pnorm(g, z, k, 0.0)
    if spec == "margin":
        top2 = g.op("TopK", z, g.const([2], np.int64), axis=1, largest=1, sorted=1,
                    n_out=2)
        return g.op("Sub", g.column(top2, 0), g.column(top2, 1))
    if score.p is not None:
        return _pnorm(g, z, k, score.p)
    raise DecisionGraphError(f"score '{spec}' has no ONNX form yet; add it to "
                             "serve/packaging/decision_graph.py beside its serve/scores.py definition")


def _snap(g: _Graph, s: str) -> str:
    """serve.scores.snap_scores: a Veltkamp split to a shorter significand, elementwise."""
    if not SNAPS:
        return s
    c = g.op("Mul", s, g.const(_scores.SNAP_SPLITTER, np.float64))
    split = g.op("Sub", c, g.op("Sub", c, s))
    small = g.op("Less", g.op("Abs", s), g.const(_scores.SNAP_GUARD, np.float64))
    return g.op("Where", small, split, s)


def decision_nodes(g: _Graph, logits: str, k: int, calibration: Calibration) -> None:
    """Append the nodes that turn ``logits`` (n, k) into the outputs ``label``, ``score``, ``reject``."""
    if k < 2:
        raise DecisionGraphError(f"the model has {k} output class(es); a decision needs ≥ 2")
    score = calibration.score_fn()
    if k < score.min_classes:
        raise DecisionGraphError(f"score '{score.spec}' cannot rank with K = {k} classes")
    z = g.op("Cast", logits, to=TensorProto.DOUBLE)
    g.op("ArgMax", z, axis=1, keepdims=0, select_last_index=0, out="label")
    s = g.op("Identity", _snap(g, _score(g, z, k, score)), out="score")
    bad = g.op("Cast", g.op("Or", g.op("IsNaN", z), g.op("IsInf", z)), to=TensorProto.DOUBLE)
    bad_row = g.op("Greater", g.reduce_max(bad, keepdims=False), g.const(0.0, np.float64))
    if calibration.threshold is None:
        below = g.op("Expand", g.const(True, np.bool_), g.op("Shape", s))
    else:
        below = g.op("Less", s, g.const(float(calibration.threshold), np.float64))
    g.op("Or", below, bad_row, out="reject")


def _output_infos(batch: onnx.TensorShapeProto.Dimension | str) -> list[onnx.ValueInfoProto]:
    dim = batch if isinstance(batch, str) else (batch.dim_param or batch.dim_value or "batch")
    return [helper.make_tensor_value_info("label", TensorProto.INT64, [dim]),
            helper.make_tensor_value_info("score", TensorProto.DOUBLE, [dim]),
            helper.make_tensor_value_info("reject", TensorProto.BOOL, [dim])]


def decision_metadata(calibration: Calibration, source_sha256: str | None) -> dict[str, str]:
    """What the graph records about the rule it applies (and where the rule came from)."""
    meta = {"abstain_decision": json.dumps({
        "score": calibration.score, "temperature": calibration.temperature,
        "probability_temperature": calibration.probs_temperature,   # softmax(logits / T), unused here
        "threshold": calibration.threshold, "defer_all": calibration.defer_all,
        "snap": SNAPS, "outputs": ["logits", *OUTPUTS],
        "rule": "reject = score < threshold (or a non-finite logit); label = argmax(logits)"}),
        "calibration_sha256": calibration.sha256, "calibration": calibration.to_json()}
    if source_sha256 is not None:
        meta["source_model_sha256"] = source_sha256
    return meta


def decision_head(calibration: Calibration, num_classes: int,
                  logits_type: int = TensorProto.FLOAT, opset: int = HEAD_OPSET) -> onnx.ModelProto:
    """A model of the decision alone: input ``logits`` (batch, K) → ``label``, ``score``, ``reject``."""
    g = _Graph(opset)
    decision_nodes(g, "logits", num_classes, calibration)
    graph = helper.make_graph(
        g.nodes, "abstain_decision",
        [helper.make_tensor_value_info("logits", logits_type, ["batch", num_classes])],
        _output_infos("batch"), g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="abstain")
    model.ir_version = min(model.ir_version, 10)
    helper.set_model_props(model, decision_metadata(calibration, None))
    onnx.checker.check_model(model, full_check=True)
    return model


def attach_decision(model: onnx.ModelProto, calibration: Calibration,
                    source_sha256: str | None = None) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``label``, ``score`` and ``reject``.

    Raises:
        DecisionGraphError: no ``logits`` output of shape (batch, K), an opset below 13, or an
            output name already taken.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    outs = {o.name: o for o in graph.output}
    if "logits" not in outs:
        raise DecisionGraphError(f"the model has no 'logits' output (outputs: {sorted(outs)}); "
                                 "export it with `abstain export`")
    taken = sorted(set(OUTPUTS) & ({n for node in graph.node for n in node.output} | set(outs)))
    if taken:
        raise DecisionGraphError(f"the model already has tensors named {taken}; it looks "
                                 "packaged already: package the plain model.onnx instead")
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise DecisionGraphError(f"the model uses ONNX opset {opset}; the decision graph needs "
                                 f"≥ {MIN_OPSET}: re-export it with a current `abstain export`")
    t = outs["logits"].type.tensor_type
    dims = t.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        raise DecisionGraphError("the 'logits' output must have shape (batch, K) with K fixed")
    g = _Graph(opset)
    decision_nodes(g, "logits", int(dims[1].dim_value), calibration)
    graph.node.extend(g.nodes)
    graph.initializer.extend(g.inits)
    graph.output.extend(_output_infos(dims[0]))
    props = {p.key: p.value for p in out.metadata_props}
    props.update(decision_metadata(calibration, source_sha256))
    del out.metadata_props[:]
    helper.set_model_props(out, props)
    onnx.checker.check_model(out, full_check=True)
    return out
