"""The ``abstain`` console script: a thin dispatcher over subcommands.

Every subcommand, built-in or not, is registered through the ``abstain.commands`` entry-point
group: each entry names a ``register(subparsers)`` function that adds its parser and sets
``handler``. `serve` therefore never imports `training`; training commands arrive from their own
package, and their registration modules import torch only inside the handler.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from serve import __version__
from serve.errors import AbstainError, MissingExtraError

GROUP = "abstain.commands"
# Which extra provides the modules a command may import; used when registration itself fails.
_EXTRA_FOR_MODULE = {"torch": "train", "onnx": "train", "onnxscript": "train", "mnist1d": "train",
                     "onnxruntime": "cpu", "sklearn": "train"}


def _missing_extra_parser(sub: argparse._SubParsersAction, name: str, err: ImportError) -> None:
    missing = (err.name or "").split(".")[0]
    extra = _EXTRA_FOR_MODULE.get(missing, "train")
    p = sub.add_parser(name, help=f"(unavailable: needs the '{extra}' extra)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def handler(_: argparse.Namespace) -> int:
        raise MissingExtraError(extra, missing or None)

    p.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abstain",
        description="Selective prediction: train, export, calibrate a certified rejection "
        "threshold, and serve predictions that say when to defer.",
    )
    parser.add_argument("--version", action="version", version=f"abstain {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            register: Callable[[argparse._SubParsersAction], None] = ep.load()
        except ImportError as err:
            _missing_extra_parser(sub, ep.name, err)
            continue
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except AbstainError as err:
        print(f"abstain {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"abstain {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
