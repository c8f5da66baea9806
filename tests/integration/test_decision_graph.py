"""The decision graph decides exactly as the server does, in onnxruntime (Python) and onnxruntime-node.

For every score abstain can choose, two calibrations of 60k rows each (random rows, ties, and rows
within 1e-9 of the threshold: tests/decision_cases.py), against serve.decision.DecisionRule on the
same logits: ``label`` exactly, ``score`` within 1e-12, ``reject`` exactly.

Scores built from +, −, ×, ÷, max, sqrt and sums (maxlogit, centred, margin, pnorm with p in
{0, 0.5, 1, 2, inf}) are bit-identical, so ``score`` and ``reject`` are compared with ``==``.
Scores that call exp/log/pow (msp, log_msp, energy, other pnorm) can differ in the last bit
between numpy's math library and the runtime's. serve.scores' snap (when it has one) absorbs most
of that; where the two land on neighbouring snap-grid points the scores differ by one grid step
(2⁻⁴³ relative, more than 1e-12 once |score| > ~9), and a differing ``reject`` is allowed only for
a row whose server score is within that step (without a snap: 16 ulp) of the threshold.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from serve.calibration.artifact import load_calibration
from serve.decision import DecisionRule
from serve.packaging.decision_graph import SNAPS, decision_head
from tests.conftest import ROOT
from tests.decision_cases import SPECS, K, cases, make_case

N_PER_CASE = 120_000          # two cases per score: 120k rows per score type
NODE_DIR = ROOT / "tests" / "node"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """Every case's calibration, logits, the server's decisions and the written head model."""
    base = load_calibration(ROOT / "models" / "mnist1d-maxsup" / "1")
    d = tmp_path_factory.mktemp("decision")
    out = []
    for i, (name, cal, z) in enumerate(cases(base, N_PER_CASE)):
        model_path, logits_path = d / f"case{i}.onnx", d / f"case{i}.f32"
        head = decision_head(cal, K)
        onnx.save_model(head, model_path)
        z.tofile(logits_path)
        out.append({"name": name, "cal": cal, "z": z, "ref": DecisionRule(cal)(z),
                    "model": model_path, "logits": logits_path, "out": d / f"case{i}",
                    "exact_ops": not {n.op_type for n in head.graph.node} & {"Exp", "Log", "Pow"}})
    return out


def _compare(c, label, score, reject, who: str) -> None:
    name, ref, t = f"{who} {c['name']}", c["ref"], c["cal"].threshold
    assert label.dtype == np.int64 and score.dtype == np.float64 and reject.dtype == np.bool_
    bad_label = np.flatnonzero(label != ref.label)
    assert bad_label.size == 0, f"{name}: {bad_label.size} labels differ, e.g. row {bad_label[:5]}"
    diff = np.abs(score - ref.score)
    step = 1024 * np.spacing(np.abs(ref.score)) if SNAPS and not c["exact_ops"] else 0.0
    assert np.all(diff <= np.maximum(1e-12, step)), \
        f"{name}: max |Δscore| = {diff.max():.3g} > 1e-12 (and more than one snap step)"
    if c["exact_ops"]:
        assert np.array_equal(score, ref.score), f"{name}: {np.sum(score != ref.score)} scores " \
            "differ although every operation is exactly rounded"
    bad = np.flatnonzero(reject != ref.reject)
    if not c["exact_ops"] and t is not None:
        band = (1024 if SNAPS else 16) * np.spacing(abs(t))   # one snap step, or a few ulp
        bad = bad[np.abs(ref.score[bad] - t) > band]
    assert bad.size == 0, (f"{name}: {bad.size} reject flags differ, e.g. rows {bad[:5]} "
                           f"(server score {ref.score[bad[:3]]}, graph {score[bad[:3]]}, "
                           f"threshold {t!r})")


def test_cases_cover_ties_and_the_threshold(built):
    """The generator does produce what the exactness claim is about, for every score."""
    per_spec: dict[str, list[int]] = {s: [0, 0, 0, 0] for s in SPECS}
    for c in built:
        if c["cal"].threshold is None:
            continue
        s, t, z = c["ref"].score, c["cal"].threshold, c["z"]
        counts = per_spec[c["cal"].score]
        counts[0] += len(z)
        counts[1] += int(np.sum(s == t))
        counts[2] += int(np.sum((np.abs(s - t) <= 1e-9) & (s < t)))
        counts[3] += int(np.sum((np.abs(s - t) <= 1e-9) & (s > t)))
    for spec, (n, ties, below, above) in per_spec.items():
        assert n >= 100_000, spec
        assert ties >= 1_000, f"{spec}: only {ties} rows score exactly the threshold"
        assert below >= 500 and above >= 500, \
            f"{spec}: {below} rows within 1e-9 below the threshold, {above} above"
    label_ties = sum(int(np.sum((c["z"] == c["z"].max(1, keepdims=True)).sum(1) > 1)) for c in built)
    assert label_ties >= 5_000


def test_onnxruntime_python_decides_as_the_server(built):
    for c in built:
        sess = ort.InferenceSession(str(c["model"]), providers=["CPUExecutionProvider"])
        label, score, reject = sess.run(["label", "score", "reject"], {"logits": c["z"]})
        _compare(c, label, score, reject, "onnxruntime")


def test_exactly_rounded_scores_are_most_scores(built):
    """The bit-identical path is not vacuous: 8 of the 12 score types take it."""
    exact = {c["cal"].score for c in built if c["exact_ops"]}
    assert exact == {"maxlogit", "centred_maxlogit", "pnorm:0", "pnorm:1", "pnorm:2", "pnorm:0.5",
                     "pnorm:inf", "margin"}


def test_defer_all_rejects_every_row(built):
    deferred = [c for c in built if c["cal"].threshold is None]
    assert deferred
    for c in deferred:
        sess = ort.InferenceSession(str(c["model"]), providers=["CPUExecutionProvider"])
        assert sess.run(["reject"], {"logits": c["z"]})[0].all()


def test_the_graph_snaps_exactly_when_serve_scores_does():
    """A score with more significant bits than any snap keeps shows whether serve.scores snaps."""
    from serve.scores import create_score

    raw = float(np.float32(1.2345678e-3)) * (1 + 2.0 ** -50)
    served = create_score("maxlogit")(np.array([[0.0, raw]]))[0]
    assert (served != raw) == SNAPS, "serve.scores changed its last step: mirror it in " \
        "serve/packaging/decision_graph.py (_snap)"


def test_the_snap_step_is_serve_scores_own_bit_for_bit():
    if not SNAPS:
        pytest.skip("serve.scores has no snap_scores (test_the_graph_snaps_exactly_when_…)")
    from onnx import TensorProto, helper

    from serve.packaging.decision_graph import _Graph, _snap
    from serve.scores import SNAP_GUARD, snap_scores

    g = _Graph(20)
    g.op("Identity", _snap(g, "s"), out="y")
    model = helper.make_model(helper.make_graph(
        g.nodes, "snap", [helper.make_tensor_value_info("s", TensorProto.DOUBLE, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["n"])], g.inits),
        opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    rng = np.random.default_rng(5)
    s = np.concatenate([rng.normal(size=100_000) * 10.0 ** rng.integers(-12, 12, 100_000),
                        [0.0, -0.0, 5e-324, 0.5, -0.5, SNAP_GUARD, -SNAP_GUARD, 1.7e308,
                         np.nextafter(SNAP_GUARD, 0), 0.5 + 2.0 ** -44, 0.5 + 3 * 2.0 ** -45]])
    got = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"s": s})[0]
    assert np.array_equal(got, snap_scores(s))      # as values: the sign of a zero may differ


def test_onnxruntime_node_decides_as_the_server(built, tmp_path: Path):
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip("node or onnxruntime-node is not installed: run `make npmdeps`")
    manifest = [{"model": str(c["model"]), "logits": str(c["logits"]), "n": len(c["z"]), "k": K,
                 "out": str(c["out"])} for c in built]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    res = subprocess.run([node, str(NODE_DIR / "decide.js"), str(tmp_path / "manifest.json")],
                         capture_output=True, text=True, timeout=120, cwd=NODE_DIR,
                         env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "onnxruntime-node 1.30.0" in res.stdout
    for c in built:
        p = str(c["out"])
        _compare(c, np.fromfile(p + ".label", "<i8"), np.fromfile(p + ".score", "<f8"),
                 np.fromfile(p + ".reject", np.uint8).astype(bool), "onnxruntime-node")


def test_rows_with_a_non_finite_logit_are_deferred(built):
    """The server refuses NaN/inf logits with an error; the graph, which cannot, defers them."""
    c = next(c for c in built if c["cal"].score == "maxlogit" and c["cal"].threshold is not None)
    z = c["z"][:4].copy()
    z[0, 3], z[1, 0], z[2, 5] = np.nan, np.inf, -np.inf
    sess = ort.InferenceSession(str(c["model"]), providers=["CPUExecutionProvider"])
    reject = sess.run(["reject"], {"logits": z})[0]
    assert reject[:3].all()
    assert reject[3] == c["ref"].reject[3]


@pytest.mark.parametrize("k", [2, 3, 7, 8, 9, 10, 16, 17, 100, 127, 128, 129, 300, 1000])
def test_row_sums_are_numpys_bit_for_bit(k):
    """The unrolled pairwise sum equals np.sum(axis=1) exactly, whatever the row length."""
    from onnx import TensorProto, helper

    from serve.packaging.decision_graph import _Graph

    g = _Graph(20)
    g.op("Identity", g.row_sum("x", k), out="s")
    model = helper.make_model(helper.make_graph(
        g.nodes, "sum", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n", k])],
        [helper.make_tensor_value_info("s", TensorProto.DOUBLE, ["n"])], g.inits),
        opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    x = np.exp(np.random.default_rng(k).normal(size=(500, k)) * 8)
    got = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(got, x.sum(axis=1))
    assert np.array_equal(got / k, x.mean(axis=1))
    assert len(model.graph.node) <= k // 2 + 20


@pytest.mark.parametrize("opset", [13, 17])
def test_older_opsets_build_the_same_decisions(built, opset):
    """Models exported at opset 13–17 (ReduceMax with an axes attribute) get the same graph."""
    for c in built[::3]:
        head = decision_head(c["cal"], K, opset=opset)
        sess = ort.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"])
        z = c["z"][:5000]
        label, score, reject = sess.run(["label", "score", "reject"], {"logits": z})
        _compare({**c, "ref": DecisionRule(c["cal"])(z)}, label, score, reject, f"opset {opset}")


@pytest.mark.parametrize(("spec", "temperature"), [("msp", 1.0), ("energy", 1.37), ("pnorm:2", 1.0)])
def test_a_probability_temperature_changes_no_decision_and_travels_in_the_metadata(
        spec: str, temperature: float):
    """Probabilities at another temperature than the score's (the floored rule's MSP at T = 1,
    probabilities at the fitted T): the graph's nodes are the same as without it, its decisions
    are the server's, and softmax(logits / the metadata's probability_temperature) is what the
    server reports as ``probabilities``."""
    import dataclasses

    base = load_calibration(ROOT / "models" / "mnist1d-maxsup" / "1")
    cal, z = make_case(spec, temperature, "confident", 20_000, 11, base)
    cal = dataclasses.replace(cal, probability_temperature=0.35)
    plain = dataclasses.replace(cal, probability_temperature=None)
    head, head_plain = decision_head(cal, K), decision_head(plain, K)
    assert head.graph.SerializeToString() == head_plain.graph.SerializeToString()
    ref = DecisionRule(cal)(z, probabilities=True)
    label, score, reject = ort.InferenceSession(
        head.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["label", "score", "reject"], {"logits": z})
    _compare({"name": f"{spec}@T={temperature:g}, probabilities at 0.35", "ref": ref, "cal": cal,
              "exact_ops": not {n.op_type for n in head.graph.node} & {"Exp", "Log", "Pow"}},
             label, score, reject, "onnxruntime")
    assert np.array_equal(ref.score, DecisionRule(plain)(z).score)
    rule = json.loads({p.key: p.value for p in head.metadata_props}["abstain_decision"])
    assert (rule["temperature"], rule["probability_temperature"]) == (temperature, 0.35)
    for c, t in ((cal, rule["probability_temperature"]), (plain, temperature)):
        zz = z.astype(np.float64) / t
        e = np.exp(zz - zz.max(axis=1, keepdims=True))
        np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True),
                                   DecisionRule(c)(z, probabilities=True).probabilities,
                                   rtol=1e-12, atol=1e-300)
