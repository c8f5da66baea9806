"""The ``abstain`` console script: a thin dispatcher over subcommands.

Every subcommand, built-in or not, is registered through the ``abstain.commands`` entry-point
group: each entry names a ``register(subparsers)`` function that adds its parser and sets
``handler``. `serve` therefore never imports `training`; training commands arrive from their own
package, and their registration modules import torch only inside the handler.

A register function may carry an ``unavailable()`` attribute returning an :class:`AbstainError`
when the command cannot run in this install (e.g. no torch). Such a command is left out of
``abstain --help`` (its epilog says how to get it) and running it prints that error, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from serve import __version__
from serve.cli.argtypes import Parser
from serve.errors import AbstainError, MissingExtraError, install_command

GROUP = "abstain.commands"
# Which extra provides the modules a command may import; used when registration itself fails.
_EXTRA_FOR_MODULE = {"torch": "train", "onnx": "train", "onnxscript": "train", "mnist1d": "data",
                     "onnxruntime": "cpu", "sklearn": "data"}


def _registration_error(err: ImportError) -> AbstainError:
    missing = (err.name or "").split(".")[0]
    return MissingExtraError(_EXTRA_FOR_MODULE.get(missing, "train"), missing or None)


def build_parser() -> argparse.ArgumentParser:
    """The full parser; ``parser.unavailable`` maps commands this install cannot run to why."""
    parser = Parser(
        prog="abstain",
        description="Selective prediction: train, export, calibrate a certified rejection "
        "threshold, and serve predictions that say when to defer.",
    )
    parser.add_argument("--version", action="version", version=f"abstain {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser)
    unavailable: dict[str, AbstainError] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            register: Callable[[argparse._SubParsersAction], None] = ep.load()
        except ImportError as err:
            unavailable[ep.name] = _registration_error(err)
            continue
        check: Callable[[], AbstainError | None] | None = getattr(register, "unavailable", None)
        reason = check() if check is not None else None
        if reason is not None:
            unavailable[ep.name] = reason
            continue
        register(sub)
    if unavailable:
        parser.epilog = "Not available in this install: " + "; ".join(
            f"{name} ({_short(err)})" for name, err in sorted(unavailable.items()))
    parser.unavailable = unavailable  # type: ignore[attr-defined]
    return parser


def _short(err: AbstainError) -> str:
    if isinstance(err, MissingExtraError):
        return install_command(err.extra)
    return str(err).split(":")[0]


def _command(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    name = _command(argv)
    refused = parser.unavailable.get(name or "")  # type: ignore[attr-defined]
    if refused is not None:
        print(f"abstain {name}: error: {refused}", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:       # --help, --version, or a bad argument (exit 2, one line)
        return exit_.code if isinstance(exit_.code, int) else 2
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
