"""Registration of the training subcommands (`train`, `export`, `study`).

This module must import without torch: the `abstain` console script loads it to build its
parser. Handlers import the torch-backed modules lazily and turn a missing `train` extra into a
message that says how to install it.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

from serve.errors import MissingExtraError

_TRAIN_MODULES = {"torch", "onnx", "onnxscript", "mnist1d", "sklearn", "tqdm"}


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
    p.add_argument("--data", default="mnist1d",
                   help="dataset spec: mnist1d[?n=N&seed=S], digits, npz:PATH, imagefolder:PATH, "
                   "cifar10:PATH, cifar100:PATH (default: mnist1d)")
    p.add_argument("--model", default="cnn1d",
                   help="mlp, cnn1d, cnn, resnet18 or timm:NAME (default: cnn1d)")
    p.add_argument("--loss", default="maxsup", choices=["ce", "ls", "maxsup"], help="default: maxsup")
    p.add_argument("--alpha", default="0.1:0.2",
                   help="α for ls/maxsup: a constant or START:END, linear over epochs (default 0.1:0.2)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128, help="global batch size (all processes)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (cosine schedule)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", required=True, help="run directory, e.g. runs/mnist1d-maxsup")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop after N epochs in this invocation (continue later with --resume)")
    p.set_defaults(handler=lambda args: _load("training.trainer").main(args))


def register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a trained run to a verified ONNX model",
        description="Write TO/model.onnx (single file, dynamic batch axis, metadata) only after "
        "onnxruntime reproduces PyTorch's logits on the test split (max |Δ| ≤ --atol, same argmax).")
    p.add_argument("run", help="run directory written by `abstain train`")
    p.add_argument("--to", required=True, help="target directory, e.g. models/mnist1d-maxsup/1")
    p.add_argument("--atol", type=float, default=1e-4, help="max |Δlogits| allowed (default 1e-4)")
    p.add_argument("--force", action="store_true", help="replace an existing TO/model.onnx")
    p.set_defaults(handler=lambda args: _load("training.export").main(args))


def register_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="the CE / LS / MaxSup selective-classification study",
        description="Train every (loss, seed), export to ONNX, evaluate through onnxruntime and "
        "serve's scores/metrics, and write OUT/README.md (report with computed verdicts on the "
        "four claims of METHODS.md §6), OUT/results.json and figures.")
    p.add_argument("--data", default="mnist1d", help="dataset spec (default: mnist1d)")
    p.add_argument("--model", default="cnn1d", help="model name (default: cnn1d)")
    p.add_argument("--losses", default="ce,ls:0.1,ls:0.2,ls:0.3,maxsup:0.1:0.2",
                   help="comma-separated: ce, ls:ALPHA, maxsup:ALPHA[:END] "
                   "(default: ce,ls:0.1,ls:0.2,ls:0.3,maxsup:0.1:0.2)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per loss (default 3)")
    p.add_argument("--out", help="output directory, e.g. docs/study/mnist1d (required unless --index)")
    p.add_argument("--index", metavar="DIR", default=None,
                   help="only (re)write DIR/README.md, a table of every study under DIR, and exit")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--nc-samples", type=int, default=5000,
                   help="train-split samples (stratified) for the NC1–NC3 diagnostics")
    p.add_argument("--reuse", action="store_true",
                   help="keep finished runs already in OUT/runs (resume an interrupted study)")
    p.add_argument("--note", default="", help="what this regime is for (printed in the report)")
    p.add_argument("--quick", action="store_true",
                   help="CI size: small data (mnist1d?n=2000), 1 seed, ≤ 2 epochs")
    p.add_argument("--threads", type=int, default=0,
                   help="torch/onnxruntime threads per process (default 0 = library default; "
                   "1 is fastest on a loaded machine)")
    p.set_defaults(handler=lambda args: _load("training.study").main(args))
