"""`abstain export`: a trained run → one verified, self-contained ``model.onnx``.

The graph takes raw inputs (standardisation is inside), has one input ``input`` of shape
``(batch, *input_shape)`` float32 and one output ``logits (batch, K)``, and carries the contract-2
metadata. Before anything lands in the target directory, onnxruntime (through
:class:`serve.server.runtime.OnnxModel`, the same loader the server uses) runs the file on the test split;
it is moved into place only if max |Δlogits| ≤ ``atol`` and every argmax matches PyTorch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from serve import __version__
from serve.data import load_dataset
from serve.errors import AbstainError
from serve.files import atomic_path, keep_backup
from serve.server.runtime import OnnxModel
from training.models import create_model

FILENAME = "model.onnx"


class ExportError(AbstainError):
    """A run that cannot be exported, or an ONNX graph that does not reproduce PyTorch."""


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    argmax_mismatches: int
    n: int

    def ok(self, atol: float) -> bool:
        return self.max_abs_diff <= atol and self.argmax_mismatches == 0


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter: its prints, warnings and loggers (torch.onnx is chatty)."""
    names = ("torch.onnx", "torch._dynamo", "torch.export", "torch._export", "onnxscript",
             "onnx_ir", "serve.server.runtime")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


@torch.no_grad()
def torch_logits(model: torch.nn.Module, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    out = [model(torch.as_tensor(x[s:s + batch_size])).double().numpy()
           for s in range(0, len(x), batch_size)]
    return np.concatenate(out)  # (n, K) float64


def export_model(model: torch.nn.Module, x_check: np.ndarray, path: str | os.PathLike[str],
                 metadata: dict[str, Any], atol: float = 1e-4) -> Parity:
    """Export ``model`` to ``path`` atomically, only if onnxruntime reproduces it on ``x_check``.

    Raises:
        ExportError: the exporter failed, or the parity check did not pass (nothing is written).
    """
    if not (atol >= 0):
        raise ExportError(f"--atol {atol} must be ≥ 0")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    x_check = np.ascontiguousarray(x_check, np.float32)
    dummy = torch.as_tensor(x_check[: min(2, len(x_check))])
    with atomic_path(path) as tmp:
        try:
            with _quiet():
                batch = torch.export.Dim("batch", min=1)
                prog = torch.onnx.export(
                    model, (dummy,), input_names=["input"], output_names=["logits"],
                    dynamic_shapes=({0: batch},), dynamo=True, external_data=False,
                    optimize=True, verify=False)
                proto = prog.model_proto
        except Exception as err:  # the exporter raises many unrelated types
            raise ExportError(f"torch.onnx.export failed for this model: {type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
                              ) from err
        proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
        del proto.metadata_props[:]
        for k, v in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v if isinstance(v, str) else json.dumps(v)
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        with _quiet():
            parity = check_parity(model, tmp, x_check)
        if not parity.ok(atol):
            raise ExportError(
                f"refusing to write {path}: onnxruntime disagrees with PyTorch on {parity.n} "
                f"samples (max |Δlogits| = {parity.max_abs_diff:.3g}, allowed {atol:g}; "
                f"{parity.argmax_mismatches} argmax mismatches). The model has an operation the "
                "exporter does not reproduce; simplify it or report an exporter bug")
        keep_backup(path)
    return parity


def check_parity(model: torch.nn.Module, onnx_path: str | os.PathLike[str], x: np.ndarray) -> Parity:
    """Compare PyTorch and onnxruntime logits on ``x`` in several batch sizes."""
    ort = OnnxModel(Path(onnx_path), device="cpu")
    ref = torch_logits(model, x)
    got = ort.logits(x, batch_size=257)  # an odd batch size exercises the dynamic axis
    diff = float(np.max(np.abs(ref - got))) if len(x) else 0.0
    mism = int(np.sum(ref.argmax(1) != got.argmax(1)))
    return Parity(diff, mism, len(x))


def load_run(run: str | os.PathLike[str]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the trained model of a run directory (``weights_only=True``) and its config."""
    run = Path(run)
    ck_path, cfg_path = run / "checkpoint.pt", run / "config.json"
    if not ck_path.is_file() or not cfg_path.is_file():
        raise ExportError(f"{run} is not a finished training run (needs checkpoint.pt and "
                          f"config.json); run `abstain train --out {run}` first")
    cfg = json.loads(cfg_path.read_text())
    try:
        ck = torch.load(ck_path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ExportError(f"cannot read {ck_path} with weights_only=True ({type(err).__name__}); "
                          "re-run training") from err
    res = cfg["resolved"]
    model = create_model(cfg["model"], res["input_shape"], res["num_classes"])
    model.load_state_dict(ck["model"])
    if int(ck["epoch"]) + 1 < int(cfg["epochs"]):
        logging.getLogger(__name__).warning("%s stopped after epoch %d of %d; exporting it anyway",
                                            run, int(ck["epoch"]) + 1, cfg["epochs"])
    return model.eval(), cfg


def metadata_for(cfg: dict[str, Any]) -> dict[str, str]:
    res = cfg["resolved"]
    return {
        "class_names": json.dumps(res["class_names"]), "input_shape": json.dumps(res["input_shape"]),
        "input_dtype": "float32", "preprocessing": json.dumps(res["preprocessing"]),
        "loss": cfg["loss"], "alpha": "0" if cfg["loss"] == "ce" else str(cfg["alpha"]),
        "model": cfg["model"], "data_spec": res["data_spec"],
        "data_fingerprint": res["data_fingerprint"], "abstain_version": __version__,
        "config": json.dumps({k: v for k, v in cfg.items() if k not in ("resume", "stop_after")},
                             sort_keys=True),
    }


def export_run(run: str | os.PathLike[str], to: str | os.PathLike[str], atol: float = 1e-4
               ) -> tuple[Path, Parity, float]:
    """Export a run to ``to/model.onnx``; returns (path, parity, test accuracy of the ONNX model).

    An existing ``model.onnx`` is replaced only once the new one passed the parity check, and is
    kept as ``model.onnx.bak`` (:func:`serve.files.keep_backup`, the rule `calibrate` follows too).
    """
    target = Path(to) / FILENAME
    model, cfg = load_run(run)
    ds = load_dataset(cfg["data"])
    if ds.fingerprint != cfg["resolved"]["data_fingerprint"]:
        raise ExportError(f"the data behind {cfg['data']!r} changed since training (fingerprint "
                          f"{ds.fingerprint[:12]}… ≠ {cfg['resolved']['data_fingerprint'][:12]}…)")
    x, y = ds.split("test")
    meta = metadata_for(cfg)
    parity = export_model(model, x, target, meta, atol)
    with _quiet():
        acc = float(np.mean(OnnxModel(target, device="cpu").logits(x).argmax(1) == y))
    return target, parity, acc


def main(args: argparse.Namespace) -> int:
    replaced = (Path(args.to) / FILENAME).is_file()
    path, parity, acc = export_run(args.run, args.to, args.atol)
    from rich.table import Table

    from serve.cli.console import make_console

    t = Table(title=f"abstain export → {path}")
    for col in ("size", "test samples", "max |Δlogits|", "argmax mismatches", "test acc (onnx)"):
        t.add_column(col)
    t.add_row(f"{path.stat().st_size / 1024:.0f} KiB", str(parity.n), f"{parity.max_abs_diff:.2e}",
              str(parity.argmax_mismatches), f"{acc:.4f}")
    make_console().print(t)
    if replaced:
        make_console(stderr=True, highlight=False).print(
            f"kept the previous model as {path}.bak; a calibration.json beside it was made for that "
            "model: re-run `abstain calibrate` (the server refuses the mismatch)")
    return 0
