"""`abstain package` on the shipped model: the packaged ONNX file, its metadata, the Triton
directory (config.pbtxt parsed with Triton's own model_config.proto) and every refusal."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serve.calibration.artifact import load_calibration, save_calibration
from serve.decision import DecisionRule
from serve.server.runtime import OnnxModel, sha256_file
from tests.conftest import ROOT

MODEL_DIR = ROOT / "models" / "mnist1d-maxsup" / "1"
# No torch and no training package: `abstain package` must run in a serve install.
BLOCK = textwrap.dedent("""
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in {'torch', 'torchvision', 'onnxscript', 'training'}:
                raise ModuleNotFoundError(f"No module named '{name}'", name=name)
    sys.meta_path.insert(0, _Block())
    from serve.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def abstain(*args: str | Path, block: str = "") -> subprocess.CompletedProcess[str]:
    code = BLOCK.replace("'training'}", f"'training', {block!r}}}") if block else BLOCK
    return subprocess.run([sys.executable, "-c", code, "package", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def refused(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("package")
    r = abstain(MODEL_DIR, "--out", d / "decide.onnx", "--triton", d / "triton")
    assert r.returncode == 0, r.stderr
    assert "labels and reject flags equal to the server's" in r.stdout
    return {"out": d / "decide.onnx", "triton": d / "triton", "stdout": r.stdout}


def test_packaged_model_decides_as_the_server(packaged):
    cal = load_calibration(MODEL_DIR)
    sess = ort.InferenceSession(str(packaged["out"]), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits", "label", "score", "reject"]
    x = np.random.default_rng(3).normal(size=(20_000, 40)).astype(np.float32)
    logits, label, score, reject = sess.run(None, {"input": x})
    assert np.array_equal(logits, OnnxModel(MODEL_DIR / "model.onnx", device="cpu").run(x))
    ref = DecisionRule(cal)(logits)
    assert (label.dtype, score.dtype, reject.dtype) == (np.int64, np.float64, np.bool_)
    assert np.array_equal(label, ref.label) and np.array_equal(reject, ref.reject)
    assert np.max(np.abs(score - ref.score)) <= 1e-12
    assert 0 < reject.sum() < len(x), "random inputs should be partly deferred, partly accepted"


def test_metadata_records_the_calibration_and_the_source_model(packaged):
    cal = load_calibration(MODEL_DIR)
    meta = {p.key: p.value for p in onnx.load(packaged["out"]).metadata_props}
    assert meta["calibration_sha256"] == cal.sha256
    assert meta["source_model_sha256"] == sha256_file(MODEL_DIR / "model.onnx") == cal.model_sha256
    assert meta["calibration"] == cal.to_json()
    rule = json.loads(meta["abstain_decision"])
    assert (rule["score"], rule["temperature"], rule["threshold"]) == \
        (cal.score, cal.temperature, cal.threshold)
    assert rule["probability_temperature"] == cal.probs_temperature     # for softmax(logits / T)
    source = {p.key: p.value for p in onnx.load(MODEL_DIR / "model.onnx").metadata_props}
    assert all(meta[k] == v for k, v in source.items())       # class names etc. travel along


_TRITON_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.DOUBLE: "TYPE_FP64",
                 onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.BOOL: "TYPE_BOOL"}


def test_triton_config_parses_and_matches_the_graph(packaged):
    root = packaged["triton"] / "mnist1d-maxsup"
    assert (root / "1" / "model.onnx").read_bytes() == packaged["out"].read_bytes()
    cfg = text_format.Parse((root / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.name == "mnist1d-maxsup" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size > 0 and cfg.HasField("dynamic_batching")
    graph = onnx.load(root / "1" / "model.onnx").graph
    for declared, actual in ((cfg.input, graph.input), (cfg.output, graph.output)):
        assert [t.name for t in declared] == [v.name for v in actual]
        for t, v in zip(declared, actual, strict=True):
            tt = v.type.tensor_type
            assert model_config_pb2.DataType.Name(t.data_type) == _TRITON_TYPES[tt.elem_type]
            assert tt.shape.dim[0].dim_param, f"{v.name}: first axis must be the batch"
            model_dims = [d.dim_value for d in tt.shape.dim[1:]]
            if model_dims:
                assert list(t.dims) == model_dims and not t.HasField("reshape")
            else:   # (batch,) tensors: Triton sees (batch, 1), the model (batch,)
                assert list(t.dims) == [1] and t.HasField("reshape") and list(t.reshape.shape) == []
    assert [t.name for t in cfg.output] == ["logits", "label", "score", "reject"]


def test_defer_all_calibration_packages_to_a_graph_that_defers_everything(tmp_path):
    d = tmp_path / "m" / "2"
    d.mkdir(parents=True)
    shutil.copy(MODEL_DIR / "model.onnx", d / "model.onnx")
    cal = dataclasses.replace(load_calibration(MODEL_DIR), threshold=None, method="none")
    save_calibration(cal, d)
    r = abstain(d, "--triton", tmp_path / "t")
    assert r.returncode == 0, r.stderr
    assert "defer everything" in r.stdout
    sess = ort.InferenceSession(str(tmp_path / "t" / "m" / "2" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(500, 40)).astype(np.float32)
    assert sess.run(["reject"], {"input": x})[0].all()


def test_refusals_are_one_line_and_write_nothing(tmp_path, packaged):
    before = packaged["out"].read_bytes()
    refused(abstain(MODEL_DIR, "--out", packaged["out"]), "exists", "--force")
    assert packaged["out"].read_bytes() == before
    refused(abstain(MODEL_DIR, "--triton", packaged["triton"]), "exists", "--force")
    refused(abstain(MODEL_DIR), "--out FILE", "--triton DIR")
    refused(abstain(MODEL_DIR.parent, "--out", tmp_path / "x.onnx"), "model.onnx not found")
    bare = tmp_path / "bare" / "1"
    bare.mkdir(parents=True)
    shutil.copy(MODEL_DIR / "model.onnx", bare / "model.onnx")
    refused(abstain(bare, "--out", tmp_path / "x.onnx"), "abstain calibrate")
    other = tmp_path / "other" / "1"
    other.mkdir(parents=True)
    shutil.copy(MODEL_DIR / "calibration.json", other / "calibration.json")
    shutil.copy(packaged["out"], other / "model.onnx")        # a different model file
    refused(abstain(other, "--out", tmp_path / "x.onnx"), "made for a model with sha256")
    assert not (tmp_path / "x.onnx").exists()
    named = tmp_path / "named" / "latest"
    shutil.copytree(MODEL_DIR, named)
    refused(abstain(named, "--triton", tmp_path / "t"), "--version N")
    assert abstain(named, "--triton", tmp_path / "t", "--version", "3").returncode == 0
    assert (tmp_path / "t" / "named" / "3" / "model.onnx").is_file()


def test_a_packaged_model_is_not_packaged_twice(tmp_path, packaged):
    d = tmp_path / "again" / "1"
    d.mkdir(parents=True)
    shutil.copy(packaged["out"], d / "model.onnx")
    cal = dataclasses.replace(load_calibration(MODEL_DIR), model_sha256=sha256_file(d / "model.onnx"))
    save_calibration(cal, d)
    refused(abstain(d, "--out", tmp_path / "x.onnx"), "packaged already")


def test_without_onnx_it_says_which_extra_to_install(tmp_path):
    r = abstain(MODEL_DIR, "--out", tmp_path / "x.onnx", block="onnx")
    refused(r, "pip install 'abstain[package]'")
    assert not (tmp_path / "x.onnx").exists()


def test_the_check_on_the_way_out_catches_a_graph_that_decides_otherwise():
    from serve.cli.package import PackageError, check_decisions
    from serve.packaging.decision_graph import attach_decision, decision_head

    # pnorm:1 is built from exactly rounded operations only, so the check demands equal scores
    cal = dataclasses.replace(load_calibration(MODEL_DIR), score="pnorm:1", threshold=0.3)
    other = dataclasses.replace(cal, threshold=cal.threshold + 0.05)   # not what was certified
    packaged = attach_decision(onnx.load(MODEL_DIR / "model.onnx"), other)
    head = decision_head(other, 10)
    with pytest.raises(PackageError, match="reject flags differ"):
        check_decisions(packaged.SerializeToString(), head.SerializeToString(), True,
                        MODEL_DIR / "model.onnx", cal)
    check = check_decisions(packaged.SerializeToString(), head.SerializeToString(), True,
                            MODEL_DIR / "model.onnx", other)
    assert check.rows == 5 * 4096 and check.max_score_diff == 0.0
