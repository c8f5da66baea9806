"""Registration of the training subcommands (`train`, `export`, `study`).

This module must import without torch: the `abstain` console script loads it to build its
parser. Handlers import the torch-backed modules lazily and turn a missing `train` extra into a
message that says how to install it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from types import ModuleType

from serve.cli.argtypes import NONNEGATIVE_INT, POSITIVE_INT, float_above, int_at_least
from serve.errors import AbstainError, MissingExtraError

_TRAIN_MODULES = {"torch", "onnx", "onnxscript", "mnist1d", "sklearn", "tqdm"}
_LR = float_above(0.0, 3e-3)
_ATOL = float_above(0.0, 1e-4)
_WEIGHT_DECAY = float_above(0.0, 1e-4, inclusive=True)


def _needs_train_extra() -> AbstainError | None:
    """Why the training commands cannot run here (``None`` when they can); imports nothing."""
    for module in sorted(_TRAIN_MODULES):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return MissingExtraError("train", module)
    return None


def training_spec(text: str) -> str:
    """A dataset spec for training: the whole dataset or its ``:train`` split, nothing else.

    The trainer always fits the ``train`` split and reports ``tune``; a spec naming another split
    would be recorded in config.json and the model's metadata although it was not what trained it.
    """
    from serve.data import parse_spec
    from serve.loaders import DataError

    try:
        spec = parse_spec(text)
    except DataError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if spec.split not in (None, "train"):
        raise argparse.ArgumentTypeError(
            f"{text!r} names the '{spec.split}' split, but training always uses the 'train' split "
            f"(and reports 'tune'): pass {spec.canonical} or {spec.canonical}:train")
    return text


def _load(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] in _TRAIN_MODULES:
            raise MissingExtraError("train", err.name) from err
        raise


def register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a classifier (CE, label smoothing, MaxSup)",
        description="Train on the `train` split, report accuracy on `tune`. Writes OUT/config.json, "
        "OUT/checkpoint.pt, OUT/metrics.json. Under torchrun it trains with DDP (gloo on CPU, nccl "
        "on CUDA) and the same global batch.")
    p.add_argument("--data", default="mnist1d", type=training_spec,
                   help="dataset spec: mnist1d[?n=N&seed=S], digits, npz:PATH, imagefolder:PATH, "
                   "cifar10:PATH, cifar100:PATH; no split suffix, or :train (default: mnist1d)")
    p.add_argument("--model", default="cnn1d",
                   help="mlp, cnn1d, cnn, resnet18 or timm:NAME (default: cnn1d)")
    p.add_argument("--loss", default="maxsup", choices=["ce", "ls", "maxsup"], help="default: maxsup")
    p.add_argument("--alpha", default="0.1:0.2",
                   help="α for ls/maxsup: a constant or START:END, linear over epochs (default 0.1:0.2)")
    p.add_argument("--epochs", type=POSITIVE_INT, default=10, help="epochs of the whole run")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=128,
                   help="global batch size (all processes)")
    p.add_argument("--lr", type=_LR, default=3e-3, help="peak learning rate (cosine schedule)")
    p.add_argument("--weight-decay", type=_WEIGHT_DECAY, default=1e-4, help="decoupled weight decay")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"], help="optimiser")
    p.add_argument("--seed", type=NONNEGATIVE_INT, default=0, help="seed of weights and batch order")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = cuda when available")
    p.add_argument("--out", required=True, help="run directory, e.g. runs/mnist1d-maxsup")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--stop-after", type=POSITIVE_INT, default=None, metavar="N",
                   help="stop after N epochs in this invocation (continue later with --resume; "
                   "default: run to --epochs)")
    p.set_defaults(handler=lambda args: _load("training.trainer").main(args))


def register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a trained run to a verified ONNX model",
        description="Write TO/model.onnx (single file, dynamic batch axis, metadata) only after "
        "onnxruntime reproduces PyTorch's logits on the test split (max |Δ| ≤ --atol, same argmax). "
        "An existing TO/model.onnx is kept as TO/model.onnx.bak.")
    p.add_argument("run", help="run directory written by `abstain train`")
    p.add_argument("--to", required=True, help="target directory, e.g. models/mnist1d-maxsup/1")
    p.add_argument("--atol", type=_ATOL, default=1e-4, help="max |Δlogits| allowed (default 1e-4)")
    p.add_argument("--force", action="store_true", help=argparse.SUPPRESS)  # the old rule; no effect
    p.set_defaults(handler=lambda args: _load("training.export").main(args))


def register_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="the CE / LS / MaxSup selective-classification study",
        description="Train every (loss, seed), export to ONNX, evaluate through onnxruntime and "
        "serve's scores/metrics, and write OUT/README.md (report with computed verdicts on the "
        "four claims of METHODS.md §6), OUT/results.json and figures.")
    p.add_argument("--data", default="mnist1d", type=training_spec,
                   help="dataset spec, no split suffix (default: mnist1d)")
    p.add_argument("--model", default="cnn1d", help="model name (default: cnn1d)")
    p.add_argument("--losses", default="ce,ls:0.1,ls:0.2,ls:0.3,maxsup:0.1:0.2",
                   help="comma-separated: ce, ls:ALPHA, maxsup:ALPHA[:END] "
                   "(default: ce,ls:0.1,ls:0.2,ls:0.3,maxsup:0.1:0.2)")
    p.add_argument("--seeds", type=POSITIVE_INT, default=3, help="seeds 0..N-1 per loss (default 3)")
    p.add_argument("--out", help="output directory, e.g. docs/study/mnist1d (no default: "
                   "required unless --index)")
    p.add_argument("--index", metavar="DIR", default=None,
                   help="only (re)write DIR/README.md, a table of every study under DIR, and exit "
                   "(default: off)")
    p.add_argument("--epochs", type=POSITIVE_INT, default=10, help="epochs per run")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=128, help="batch size per run")
    p.add_argument("--lr", type=_LR, default=3e-3, help="peak learning rate per run")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = cuda when available")
    p.add_argument("--nc-samples", type=int_at_least(10, 5000), default=5000,
                   help="train-split samples (stratified) for the NC1–NC3 diagnostics")
    p.add_argument("--reuse", action="store_true",
                   help="keep finished runs already in OUT/runs (resume an interrupted study)")
    p.add_argument("--note", default="",
                   help="what this regime is for (printed in the report; default: none)")
    p.add_argument("--quick", action="store_true",
                   help="CI size: small data (mnist1d?n=2000), 1 seed, ≤ 2 epochs")
    p.add_argument("--threads", type=NONNEGATIVE_INT, default=0,
                   help="torch/onnxruntime threads per process (default 0 = library default; "
                   "1 is fastest on a loaded machine)")
    p.set_defaults(handler=lambda args: _load("training.study").main(args))


for _register in (register_train, register_export, register_study):
    _register.unavailable = _needs_train_extra  # type: ignore[attr-defined]
