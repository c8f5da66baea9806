"""`abstain train` → `abstain export` for real: files, metadata, parity, refusal, resume, DDP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from serve.cli.main import main
from serve.data import load_dataset
from serve.server.runtime import OnnxModel
from training.export import ExportError, export_model, load_run, torch_logits

DATA = "mnist1d?n=2000"
TRAIN = ["--data", DATA, "--model", "mlp", "--loss", "maxsup", "--alpha", "0.1:0.2",
         "--epochs", "2", "--batch-size", "64", "--seed", "3", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _no_home_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABSTAIN_CACHE_DIR", "off")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "mlp"
    os.environ["ABSTAIN_CACHE_DIR"] = "off"
    assert main(["train", *TRAIN, "--out", str(out)]) == 0
    return out


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def test_train_writes_config_checkpoint_metrics(run_dir: Path) -> None:
    cfg = json.loads((run_dir / "config.json").read_text())
    ds = load_dataset(DATA)
    assert cfg["resolved"]["data_fingerprint"] == ds.fingerprint
    assert cfg["resolved"]["input_shape"] == [40] and cfg["loss"] == "maxsup"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    epochs = metrics["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2] and metrics["complete"]
    assert [e["alpha"] for e in epochs] == pytest.approx([0.1, 0.15])  # the schedule moved
    assert epochs[-1]["tune_acc"] > 0.2  # 10 classes: chance is 0.1
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert set(_state(run_dir)) >= {"norm.mean", "norm.std", "fc.weight"}


def test_export_mnist1d_dynamic_batch_metadata_parity(run_dir: Path, tmp_path: Path) -> None:
    to = tmp_path / "models" / "m" / "1"
    assert main(["export", str(run_dir), "--to", str(to)]) == 0
    assert sorted(os.listdir(to)) == ["model.onnx"]  # single file, no external data, no temp left
    m = OnnxModel(to / "model.onnx", device="cpu")
    meta = m.metadata
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["input_shape"] == [40]
    assert meta["input_dtype"] == "float32" and meta["preprocessing"] == {"kind": "none"}
    assert meta["loss"] == "maxsup" and meta["alpha"] == "0.1:0.2" and meta["model"] == "mlp"
    assert meta["data_fingerprint"] == load_dataset(DATA).fingerprint
    assert meta["config"]["seed"] == 3 and meta["abstain_version"]
    assert m.session.get_inputs()[0].name == "input" and m.output_name == "logits"
    assert m.session.get_inputs()[0].shape[0] == "batch"
    model, _ = load_run(run_dir)
    x, _ = load_dataset(DATA).split("test")
    ref = torch_logits(model, x)
    for b in (1, 7, len(x)):  # any batch size, raw (unstandardised) inputs
        got = m.run(np.ascontiguousarray(x[:b]))
        assert got.shape == (b, 10)
        np.testing.assert_allclose(got, ref[:b], atol=1e-4)
    # a second export replaces the model and keeps the previous one as model.onnx.bak
    (to / "model.onnx").write_bytes(b"previous")
    assert main(["export", str(run_dir), "--to", str(to)]) == 0
    assert (to / "model.onnx.bak").read_bytes() == b"previous"
    assert OnnxModel(to / "model.onnx", device="cpu").metadata["loss"] == "maxsup"


class _ExportOnlyShift(nn.Module):
    """Eager PyTorch and the exported graph disagree by 0.01 — export must refuse it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.lin(x)
        if torch.compiler.is_exporting():
            z = z + 0.01
        return z


def test_export_refuses_when_onnx_disagrees(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    target = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"refusing to write .*max \|Δlogits\| = 0.01"):
        export_model(_ExportOnlyShift(), x, target, {}, atol=1e-4)
    assert os.listdir(tmp_path) == []  # nothing written, no temp file left behind
    parity = export_model(_ExportOnlyShift(), x, target, {}, atol=0.05)  # within tolerance
    assert parity.max_abs_diff == pytest.approx(0.01, abs=1e-5) and target.is_file()


def test_export_bad_inputs_are_one_line_errors(tmp_path: Path, capsys) -> None:
    assert main(["export", str(tmp_path), "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not a finished training run" in err and f"abstain train --out {tmp_path}`" in err
    assert not (tmp_path / "out").exists()


def test_export_digits_image_model(tmp_path: Path) -> None:
    run = tmp_path / "digits"
    assert main(["train", "--data", "digits", "--model", "cnn", "--loss", "ls", "--alpha", "0.1",
                 "--epochs", "2", "--batch-size", "64", "--device", "cpu", "--out", str(run)]) == 0
    to = tmp_path / "models" / "digits" / "1"
    assert main(["export", str(run), "--to", str(to)]) == 0
    m = OnnxModel(to / "model.onnx", device="cpu")
    assert m.input_shape == (1, 8, 8) and m.metadata["loss"] == "ls"
    assert m.metadata["preprocessing"] == {"kind": "image", "mode": "L", "size": [8, 8],
                                           "scale": 16.0 / 255.0, "layout": "NCHW"}
    x, y = load_dataset("digits").split("test")
    z = m.logits(x)
    assert z.shape == (len(x), 10) and (z.argmax(1) == y).mean() > 0.5
    assert m.run(np.ascontiguousarray(x[:1])).shape == (1, 10)


def test_resume_continues_exactly(run_dir: Path, tmp_path: Path) -> None:
    part = tmp_path / "part"
    assert main(["train", *TRAIN, "--out", str(part), "--stop-after", "1"]) == 0
    assert len(json.loads((part / "metrics.json").read_text())["epochs"]) == 1
    assert main(["train", *TRAIN, "--out", str(part)]) == 2  # refuses to overwrite a run
    assert main(["train", *TRAIN, "--out", str(part), "--resume"]) == 0
    a, b = _state(part), _state(run_dir)
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    other = [("9" if a == "3" else a) for a in TRAIN]  # another seed is not the same run
    assert main(["train", *other, "--out", str(part), "--resume"]) == 2


@pytest.mark.parametrize("args, msg", [
    (["--data", "foo"], "unknown dataset kind"), (["--model", "vgg"], "valid: mlp, cnn1d"),
    (["--model", "cnn"], "needs image inputs"), (["--alpha", "x"], "--alpha"),
    (["--epochs", "0"], "argument --epochs: 0 is below 1"), (["--resume"], "does not exist"),
    (["--data", "mnist1d:test"], "training always uses the 'train' split"),
])
def test_train_bad_options_are_one_line_errors(args: list[str], msg: str, tmp_path: Path,
                                               capsys) -> None:
    out = tmp_path / "never"
    base = ["train", "--data", "mnist1d?n=500", "--device", "cpu", "--out", str(out)]
    assert main([*base, *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
    assert not out.exists()  # nothing half-written
