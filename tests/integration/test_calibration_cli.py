"""`abstain calibrate` / `abstain evaluate` end to end: a real ONNX model, real files, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serve.calibration.artifact import load_calibration
from serve.cli.evaluate import risk_verdict
from serve.cli.main import main
from serve.server.runtime import sha256_file

D, K = 8, 4
PNG = b"\x89PNG\r\n\x1a\n"


def _write_model(path: Path, means: np.ndarray, scale: float, data_spec: str) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # Nearest-class-mean linear classifier: logits = scale·(x·μ_k − |μ_k|²/2).
    w = (scale * means.T).astype(np.float32)                       # (D, K)
    b = (-0.5 * scale * (means ** 2).sum(axis=1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W", "b"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", D])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", K])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in {"class_names": json.dumps([f"c{i}" for i in range(K)]),
                 "input_shape": json.dumps([D]), "input_dtype": "float32",
                 "preprocessing": json.dumps({"kind": "none"}), "data_spec": data_spec}.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _draw(n: int, means: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    return (means[y] + rng.normal(size=(n, D))).astype(np.float32), y.astype(np.int64)


@pytest.fixture()
def setup(tmp_path: Path) -> dict[str, Path]:
    means = np.random.default_rng(0).normal(scale=1.1, size=(K, D))
    files = {}
    for name, n, seed in (("cal", 6000, 1), ("test", 4000, 2), ("small", 150, 3)):
        x, y = _draw(n, means, seed)
        files[name] = tmp_path / f"{name}.npz"
        np.savez(files[name], x=x, y=y)
    model_dir = tmp_path / "models" / "tiny" / "1"
    _write_model(model_dir / "model.onnx", means, 1.0, f"npz:{files['cal']}")
    files["model_dir"] = model_dir
    files["means"] = means  # type: ignore[assignment]
    return files


def _calibrate(model_dir: Path, *extra: str) -> int:
    return main(["calibrate", str(model_dir), *extra])


def test_calibrate_then_evaluate(setup, capsys) -> None:
    md = setup["model_dir"]
    assert _calibrate(md, "--data", f"npz:{setup['cal']}", "--target-risk", "0.05",
                      "--delta", "0.1") == 0
    out = capsys.readouterr().out
    assert "pnorm:10" in out and "chosen" in out and "certification" in out
    raw = json.loads((md / "calibration.json").read_text())
    cal = load_calibration(md, sha256_file(md / "model.onnx"))
    assert raw["model_sha256"] == sha256_file(md / "model.onnx")
    assert cal.method == "ltt" and cal.threshold is not None
    assert cal.n_tune == 1800 and "union with the" in cal.score_params["procedure"]
    if cal.score_params["procedure"].startswith("planned"):       # the tuned rule, cert split
        assert cal.n_cert == 4200 and cal.score_params["fitted_temperature"] is None
    else:                              # the floored sequence on all samples, MSP fixed at T = 1
        assert cal.n_cert == 6000 and cal.score == "msp" and cal.temperature == 1.0
        assert cal.score_params["fitted_temperature"] > 0
    assert set(cal.candidates) == {"msp", *(f"pnorm:{p}" for p in range(11))}
    assert cal.score in cal.candidates
    assert cal.candidates[cal.score] == min(cal.candidates.values()) or cal.score == "msp"
    assert cal.risk <= cal.risk_upper_bound <= 0.05 and 0.3 < cal.coverage < 1.0
    q = cal.score_quantiles
    assert len(q) == 13 and q == sorted(q)
    assert cal.data["spec"] == f"npz:{setup['cal']}" and cal.data["split"] == "all"
    assert cal.data["tune_fraction"] == 0.3 and cal.data["seed"] == 0
    assert len(cal.data_fingerprint) == 64 and cal.data["fingerprint"] == cal.data_fingerprint
    assert cal.score_params["n_accepted"] == round(cal.coverage * cal.n_cert)
    for png in ("risk_coverage.png", "reliability.png"):
        assert (md / png).read_bytes()[:8] == PNG
    assert not [p for p in md.iterdir() if p.name.startswith(".")]   # no temp files left

    assert main(["evaluate", str(md), "--data", f"npz:{setup['test']}", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    m = rep["metrics"]
    assert rep["data"]["n"] == m["n"] == 4000
    # Recompute coverage and risk independently from the model's own logits.
    x, y = np.load(setup["test"])["x"], np.load(setup["test"])["y"]
    from serve.scores import create_score
    from serve.server.runtime import OnnxModel
    z = OnnxModel(md / "model.onnx").logits(x)
    s = create_score(cal.score, cal.temperature)(z)
    acc = s >= cal.threshold
    err = z.argmax(axis=1) != y
    assert m["coverage"] == pytest.approx(acc.mean())
    assert m["selective_risk"] == pytest.approx(err[acc].mean())
    assert m["accuracy"] == pytest.approx(1 - err.mean())
    assert m["risk_ci"][0] <= m["selective_risk"] <= m["risk_ci"][1]
    assert m["selective_risk"] < 0.05 and m["under_target"] is True
    assert 0 < m["e_aurc"] < m["aurc"] < 1 and 0 < m["augrc"] < m["aurc"]
    assert 0.5 < m["auroc"] <= 1 and 0 <= m["ece"] < 0.1
    assert m["verdict"] == risk_verdict(m["n_accepted"], m["risk_ci"], 0.05)
    assert main(["evaluate", str(md), "--data", f"npz:{setup['test']}"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Clopper" in out and "realised risk vs target" in out and "≤ target" not in out


@pytest.mark.parametrize(("errors", "verdict", "words"), [
    (10, "below", "below the target"),                                   # CI ≈ [0.002, 0.006]
    (32, "within", "consistent with the guarantee"),                     # 0.0107, CI ∋ 0.01
    (60, "above", "the whole interval exceeds it"),                      # CI ≈ [0.015, 0.026]
])
def test_evaluate_says_where_the_interval_lies_not_a_bare_yes_no(
        setup, capsys, monkeypatch, errors, verdict, words) -> None:
    # The case: 0.0107 against 0.01 with CI [0.0066, 0.0165] printed a bare "NO".
    from serve.calibration.binomial import clopper_pearson_interval
    from serve.cli import evaluate

    ci = clopper_pearson_interval(errors, 3000)
    assert risk_verdict(3000, ci, 0.01) == verdict
    md = setup["model_dir"]
    assert _calibrate(md, "--data", f"npz:{setup['cal']}", "--target-risk", "0.05") == 0
    real = evaluate.evaluate_arrays

    def rigged(cal, z, y, confidence=0.95):
        res = real(cal, z, y, confidence)
        return {**res, "n_accepted": 3000, "n_errors_accepted": errors,
                "selective_risk": errors / 3000, "risk_ci": list(ci),
                "under_target": errors / 3000 <= 0.01, "verdict": verdict}

    monkeypatch.setattr(evaluate, "evaluate_arrays", rigged)
    capsys.readouterr()
    assert main(["evaluate", str(md), "--data", f"npz:{setup['test']}"]) == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert words in out and "NO" not in out.split(), out


def test_risk_verdict_edges() -> None:
    assert risk_verdict(0, (0.0, 1.0), 0.01) == "none"
    assert risk_verdict(100, (0.0, 0.01), 0.01) == "below"         # upper bound on the target
    assert risk_verdict(100, (0.01, 0.02), 0.01) == "within"       # lower bound on the target
    assert risk_verdict(100, (0.0101, 0.02), 0.01) == "above"


def test_default_data_from_metadata_and_sgr(setup) -> None:
    md = setup["model_dir"]
    assert _calibrate(md, "--method", "sgr", "--target-risk", "0.05", "--delta", "0.1",
                      "--score", "msp") == 0
    cal = load_calibration(md)
    assert cal.method == "sgr" and cal.score == "msp"
    assert cal.data["spec"] == f"npz:{setup['cal']}" and cal.data["split"] == "calibration"
    assert cal.n_tune + cal.n_cert == 900       # 15% calibration split of 6000


def test_logits_file_and_target_coverage(setup, tmp_path) -> None:
    md = setup["model_dir"]
    x, y = np.load(setup["cal"])["x"], np.load(setup["cal"])["y"]
    from serve.server.runtime import OnnxModel
    z = OnnxModel(md / "model.onnx").logits(x)
    np.savez(tmp_path / "logits.npz", logits=z.astype(np.float32), labels=y)
    assert _calibrate(md, "--logits", str(tmp_path / "logits.npz"), "--target-risk", "0.05",
                      "--target-coverage", "0.8") == 0
    cal = load_calibration(md)
    assert cal.method == "coverage" and cal.data["spec"].startswith("logits:")
    assert cal.coverage == pytest.approx(0.8, abs=1e-3)
    assert cal.data_fingerprint == sha256_file(tmp_path / "logits.npz")


def test_not_certifiable_exits_2_and_writes_nothing(setup, capsys) -> None:
    md = setup["model_dir"]
    r = _calibrate(md, "--data", f"npz:{setup['small']}", "--target-risk", "0.01")
    err = capsys.readouterr().err
    assert r == 2
    assert "needs at least" in err and "certification samples" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in md.iterdir()) == ["model.onnx"]   # nothing written, no temp


def test_failure_keeps_the_previous_calibration(setup) -> None:
    md = setup["model_dir"]
    assert _calibrate(md, "--data", f"npz:{setup['cal']}", "--target-risk", "0.05") == 0
    before = (md / "calibration.json").read_text()
    assert _calibrate(md, "--data", f"npz:{setup['small']}", "--target-risk", "0.01") == 2
    assert (md / "calibration.json").read_text() == before


def test_allow_defer_all_writes_a_loud_null_threshold(setup, capsys) -> None:
    md = setup["model_dir"]
    assert _calibrate(md, "--data", f"npz:{setup['small']}", "--target-risk", "0.01",
                      "--allow-defer-all") == 0
    assert "DEFERS EVERY PREDICTION" in capsys.readouterr().out.replace("\n", " ")
    cal = load_calibration(md)
    assert cal.threshold is None and cal.method == "none" and cal.coverage == 0.0
    assert cal.score_params["attempted_method"] == "ltt" and cal.score_params["needed"] > 150
    assert main(["evaluate", str(md), "--data", f"npz:{setup['test']}", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert m["coverage"] == 0.0 and m["selective_risk"] is None and m["under_target"] is False
    assert m["verdict"] == "none"


def test_mismatched_model_and_malformed_json_are_refused(setup, capsys) -> None:
    md = setup["model_dir"]
    assert _calibrate(md, "--data", f"npz:{setup['cal']}", "--target-risk", "0.05") == 0
    capsys.readouterr()
    # Re-export a different model into the same directory: the calibration no longer applies.
    _write_model(md / "model.onnx", setup["means"], 2.0, "npz:x")
    assert main(["evaluate", str(md), "--data", f"npz:{setup['test']}"]) == 2
    assert "was made for a model with sha256" in capsys.readouterr().err
    (md / "calibration.json").write_text('{"score": "msp", ')
    assert main(["evaluate", str(md), "--data", f"npz:{setup['test']}"]) == 2
    assert "is not valid JSON" in capsys.readouterr().err


def test_data_roles_never_mix(setup, capsys) -> None:
    md = setup["model_dir"]
    for spec, msg in ((f"npz:{setup['cal']}:test", "refusing to calibrate on the 'test' split"),
                      (f"npz:{setup['cal']}:train", "refusing to calibrate on the 'train' split"),
                      ("digits", "names the whole dataset")):
        assert _calibrate(md, "--data", spec) == 2
        assert msg in capsys.readouterr().err
    assert _calibrate(md, "--data", f"npz:{setup['cal']}", "--target-risk", "0.05") == 0
    assert main(["evaluate", str(md), "--data", f"npz:{setup['cal']}:calibration"]) == 2
    assert "refusing to evaluate" in capsys.readouterr().err
    assert main(["evaluate", str(md), "--data", f"npz:{setup['cal']}"]) == 2   # same data as calibration
    assert "it is the data this model was calibrated on" in capsys.readouterr().err


def test_console_script_reports_errors_in_one_line(setup) -> None:
    exe = Path(sys.executable).with_name("abstain")
    r = subprocess.run([str(exe), "calibrate", str(setup["model_dir"]), "--data",
                        f"npz:{setup['cal']}", "--delta", "1.5"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == ("abstain calibrate: error: argument --delta: 1.5 is not in (0, 1): "
                                "pass a fraction such as 0.05 (not a percentage) "
                                "(see `abstain calibrate --help`)")


def test_evaluate_defaults_to_the_models_test_split_and_refuses_a_whole_dataset(setup, capsys) -> None:
    md = setup["model_dir"]
    assert _calibrate(md, "--target-risk", "0.05") == 0
    first = (md / "calibration.json").read_bytes()
    assert _calibrate(md, "--target-risk", "0.1") == 0      # recalibrating keeps the previous file
    assert (md / "calibration.json.bak").read_bytes() == first
    assert "kept the previous calibration" in capsys.readouterr().out
    assert main(["evaluate", str(md), "--json"]) == 0       # no --data: data_spec metadata + :test
    rep = json.loads(capsys.readouterr().out)
    assert rep["data"]["spec"] == f"npz:{setup['cal']}" and rep["data"]["split"] == "test"
    assert rep["data"]["n"] == 900                            # the 15% test split of 6000
    for spec in ("mnist1d", "mnist1d:all", "digits?seed=1"):
        assert main(["evaluate", str(md), "--data", spec]) == 2
        err = capsys.readouterr().err
        assert "names the whole dataset" in err and ":test" in err, err



def test_fixed_score_and_temperature_certify_on_every_sample(setup, capsys) -> None:
    md = setup["model_dir"]
    assert _calibrate(md, "--data", f"npz:{setup['cal']}", "--target-risk", "0.05", "--delta",
                      "0.1", "--score", "msp", "--temperature", "1.5") == 0
    out = capsys.readouterr().out
    cal = load_calibration(md)
    assert cal.n_tune == 0 and cal.n_cert == 6000 and cal.temperature == 1.5
    assert cal.score_params["procedure"].startswith("fixed sequence from the floor")
    assert cal.score_params["n_certification"] == 6000 and cal.data["tune_fraction"] == 0.0
    assert "no tuning split" in out and "score candidates" not in out
    assert _calibrate(md, "--data", f"npz:{setup['cal']}", "--temperature", "0") == 2
    assert "argument --temperature: 0 is not > 0" in capsys.readouterr().err


def test_default_reports_procedure_start_and_score_evidence(setup, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")                    # no wrapping inside table cells
    md = setup["model_dir"]
    assert _calibrate(md, "--data", f"npz:{setup['cal']}", "--target-risk", "0.05",
                      "--delta", "0.1") == 0
    out = capsys.readouterr().out
    assert "> 0 improves on MSP, < 0 is worse" in " ".join(out.split())   # the caption wraps
    for text in ("AURC gain vs MSP", "planned fixed sequence", "union with the",
                 "post-selection CP bound (indicative)", "certified: selective risk ≤ 0.05 with "
                 "probability ≥ 0.9", "paired bootstrap"):
        assert text in out, text
    sp = load_calibration(md).score_params
    if sp["procedure"].startswith("planned"):
        assert "predicted pass probability" in sp["start"]
    else:                                     # the floored sequence on all samples won
        assert sp["procedure"].startswith("fixed sequence from the floor")
        assert sp["start"].startswith("first threshold accepting ≥")
        assert "the other test (planned fixed sequence" in sp["detail"]
    assert set(sp["score_evidence"]) == {f"pnorm:{p}" for p in range(11)}
    assert "post-selection" in sp["risk_upper_bound_kind"]
    assert sp["certified_statement"] == "selective risk ≤ 0.05 with probability ≥ 0.9"
    # The gain column's sign reads as its name: > 0 where the score's AURC is below MSP's.
    assert "ΔAURC" not in out
    rows = {cells[0]: cells for line in out.splitlines()
            if len(cells := [c.strip() for c in line.split("│")[1:-1]]) == 7}
    assert len(rows) == 12, out                                          # MSP and 11 challengers
    msp_aurc = float(rows["msp"][1])
    for spec, (_, aurc, gain, *_rest) in rows.items():
        if spec != "msp":
            assert float(gain) == pytest.approx(msp_aurc - float(aurc), abs=2e-5), spec
            assert (float(gain) > 0) == (float(aurc) < msp_aurc) or float(gain) == 0, spec


def test_too_small_for_the_target_names_the_floor_and_the_estimate(setup, capsys) -> None:
    md = setup["model_dir"]
    assert _calibrate(md, "--data", f"npz:{setup['cal']}", "--target-risk", "0.0001") == 2
    err = capsys.readouterr().err
    from serve.calibration.certify import min_accepted, zero_error_minimum

    # 6000 samples are far fewer than 12 floors: all of δ goes to the floored sequence, whose
    # refusal names its floor and the sample count; the planned sequence says it was not run.
    floored = zero_error_minimum(0.0001, 0.05)
    assert (f"6000 samples, fewer than {floored}, the floor that certifies selective risk "
            f"≤ 0.0001 at δ = 0.05 even with zero errors") in err
    assert (f"the planned sequence was not run: 6000 samples are fewer than 12 × the floored "
            f"sequence's floor of {min_accepted(0.0001, 0.05)}") in err
    assert "not enough samples even with zero errors" in err and "estimate for this model" in err
    assert "seed" not in err
