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
    p = sub.add_parser("train", help="train a classifier (CE, label smoothing, MaxSup)")
    p.set_defaults(handler=lambda args: _load("training.trainer").main(args))


def register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained run to a verified ONNX model")
    p.set_defaults(handler=lambda args: _load("training.export").main(args))


def register_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="the CE / LS / MaxSup selective-classification study")
    p.set_defaults(handler=lambda args: _load("training.study").main(args))
