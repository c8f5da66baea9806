"""What ``abstain calibrate`` and ``abstain evaluate`` share: the model, its labelled data, data roles.

The model directory (or its ``model.onnx``), logits from ``--logits FILE.npz`` or from running the
model (torch-free, through :mod:`serve.server.runtime`) on ``--data SPEC``, and the data-role
checks: calibration refuses a dataset's ``train``/``test`` split (or a whole built-in dataset,
which contains them); evaluation refuses the calibration split.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from serve.calibration.probe import N_PROBE
from serve.cli.argtypes import POSITIVE_INT
from serve.errors import AbstainError

MODEL_FILE = "model.onnx"
# Dataset kinds whose spec without a split suffix means "everything", training data included.
_BUILTIN_KINDS = {"mnist1d", "digits", "cifar10", "cifar100"}


class DataRoleError(AbstainError):
    """Data used in a role it must not play (e.g. calibrating on the test split)."""


def model_file(arg: str) -> Path:
    """The ``model.onnx`` a command argument names (a model directory or the file itself)."""
    p = Path(arg)
    path = p / MODEL_FILE if p.is_dir() else p
    if not path.is_file():
        raise AbstainError(f"no model at {path}: pass a model directory holding {MODEL_FILE} "
                           "(e.g. models/mnist1d-maxsup/1), as written by `abstain export`")
    return path


def _load_logits_npz(path: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from serve.server.runtime import sha256_file

    p = Path(path)
    if not p.is_file():
        raise AbstainError(f"--logits file not found: {p} (an .npz with arrays 'logits' and 'labels')")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = {"logits", "labels"} - set(f.files)
            if missing:
                raise AbstainError(f"{p} lacks array(s) {sorted(missing)}; it has {sorted(f.files)}. "
                                   "Save it with np.savez(path, logits=(n, K), labels=(n,))")
            z, y = f["logits"], f["labels"]
    except (ValueError, OSError) as err:
        raise AbstainError(f"cannot read {p} as .npz without pickle ({err})") from err
    if z.ndim != 2 or y.shape != (len(z),) or not np.issubdtype(y.dtype, np.integer):
        raise AbstainError(f"{p}: need logits (n, K) and integer labels (n,); got {z.shape} {z.dtype} "
                           f"and {y.shape} {y.dtype}")
    if not np.issubdtype(z.dtype, np.floating) or not np.isfinite(z).all():
        raise AbstainError(f"{p}: logits must be finite floating-point numbers")
    info = {"spec": f"logits:{p}", "split": "given", "fingerprint": sha256_file(p), "n": int(len(y))}
    return z, y, info


def _load_model(model_path: Path, device: str):
    from serve.server.runtime import OnnxModel

    return OnnxModel(model_path, device=device)  # type: ignore[arg-type]


def _model_logits(model, spec: str, batch_size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    from serve.data import load_split

    x, y, info = load_split(spec)
    if int(y.max()) >= model.num_classes:
        raise AbstainError(f"{spec} has labels up to {int(y.max())} but {model.path} has only "
                           f"{model.num_classes} classes: wrong dataset for this model")
    z = model.logits(x, batch_size=batch_size, progress=sys.stderr.isatty())
    # The probe batch (serve/calibration/probe.py): these rows' inputs and the logits computed here.
    info["probe"] = (x[:N_PROBE], z[:N_PROBE], model.provider, str(model.input_dtype))
    return z, y, info


def logits_and_labels(args: argparse.Namespace, model_path: Path,
                       check_spec: Callable[[str], str]) -> tuple[np.ndarray, np.ndarray, dict, str]:
    """Logits, labels, data info and model sha256 from ``--logits FILE.npz`` or ``--data SPEC``.

    ``check_spec`` resolves and vets the data spec for the command's data role.
    """
    if args.logits:
        if args.data:
            raise AbstainError("pass either --data or --logits, not both")
        from serve.server.runtime import sha256_file

        z, y, info = _load_logits_npz(args.logits)
        return z, y, info, sha256_file(model_path)
    model = _load_model(model_path, args.device)
    spec = check_spec(args.data or _default_spec(model, getattr(args, "command", "calibrate")))
    z, y, info = _model_logits(model, spec, args.batch_size)
    return z, y, info, model.sha256


def _default_spec(model, command: str = "calibrate") -> str:
    """The model's own data (its ``data_spec`` metadata) in the split ``command`` works on."""
    split = "test" if command == "evaluate" else "calibration"
    spec = model.metadata.get("data_spec")
    if not isinstance(spec, str) or not spec:
        raise AbstainError(f"{model.path} has no 'data_spec' metadata: pass --data SPEC:{split} "
                           "or --logits FILE.npz")
    return f"{spec}:{split}"


def _split_of(spec: str) -> tuple[str, str | None]:
    from serve.data import parse_spec

    s = parse_spec(spec)
    return s.kind, s.split


def check_evaluation_role(spec: str) -> str:
    """Refuse evaluating on the calibration split or a whole built-in dataset (optimistic numbers)."""
    kind, split = _split_of(spec)
    if split in (None, "all") and kind in _BUILTIN_KINDS:
        raise DataRoleError(f"{spec!r} names the whole dataset, training and calibration data "
                            f"included, so its numbers would be optimistic; use "
                            f"{spec.rsplit(':', 1)[0] if split else spec}:test")
    if split == "calibration":
        raise DataRoleError(f"refusing to evaluate on {spec!r}: the calibration split chose the "
                            "score and certified the threshold, so its numbers are optimistic. "
                            f"Use the test split, e.g. {spec.rsplit(':', 1)[0]}:test")
    return spec


def check_calibration_role(spec: str) -> str:
    """Refuse calibrating on training or test data (the guarantee would be void)."""
    kind, split = _split_of(spec)
    if split in ("train", "test"):
        raise DataRoleError(f"refusing to calibrate on the '{split}' split of {spec!r}: data roles "
                            "never mix (calibration must be disjoint from training and test data). "
                            f"Use {spec.rsplit(':', 1)[0]}:calibration")
    if split in (None, "all") and kind in _BUILTIN_KINDS:
        raise DataRoleError(f"{spec!r} names the whole dataset, training and test data included; "
                            f"use {spec}:calibration")
    return spec


def add_model_inputs(p: argparse.ArgumentParser, what: str, split: str) -> None:
    """The arguments calibrate and evaluate share: the model, its data or logits, how to run it."""
    p.add_argument("model", help="model directory (models/NAME/VERSION) or its model.onnx")
    p.add_argument("--data", help=f"{what} data spec, e.g. mnist1d:{split} "
                   f"(default: the model's data_spec metadata + ':{split}')")
    p.add_argument("--logits", help="precomputed .npz with 'logits' (n, K) and 'labels' (n,) "
                   "instead of running the model (default: run it on --data)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="onnxruntime device for the model run")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=1024,
                   help="samples per onnxruntime run")
