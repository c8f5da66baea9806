"""Argument types and help formatting shared by every ``abstain`` subcommand.

Each numeric flag is parsed by one of these types, so a bad value is refused by argparse before
any work starts: exit 2 and one line that names the flag, the value, the valid range and an
example (``abstain evaluate: error: argument --confidence: 2 is not in (0, 1): pass e.g. 0.95``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any, NoReturn


def _number(text: str, kind: type) -> Any:
    try:
        v = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def int_at_least(lo: int, example: int) -> Callable[[str], int]:
    """A whole number ≥ ``lo``."""
    def parse(text: str) -> int:
        v = _number(text, int)
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} is below {lo}: pass a whole number ≥ {lo}, "
                                             f"e.g. {example}")
        return v
    parse.__name__ = f"integer ≥ {lo}"
    parse.numeric = True  # type: ignore[attr-defined]
    return parse


def float_above(lo: float, example: float, inclusive: bool = False) -> Callable[[str], float]:
    """A finite number > ``lo`` (≥ with ``inclusive``)."""
    def parse(text: str) -> float:
        v = _number(text, float)
        if v < lo or (v == lo and not inclusive):
            rel = "≥" if inclusive else ">"
            raise argparse.ArgumentTypeError(f"{text} is not {rel} {lo:g}: pass a number {rel} "
                                             f"{lo:g}, e.g. {example:g}")
        return v
    parse.__name__ = "number"
    parse.numeric = True  # type: ignore[attr-defined]
    return parse


def fraction(example: float, closed_right: bool = False) -> Callable[[str], float]:
    """A number in (0, 1), or (0, 1] with ``closed_right``."""
    def parse(text: str) -> float:
        v = _number(text, float)
        if not (0.0 < v < 1.0 or (closed_right and v == 1.0)):
            rng = "(0, 1]" if closed_right else "(0, 1)"
            raise argparse.ArgumentTypeError(f"{text} is not in {rng}: pass a fraction such as "
                                             f"{example:g} (not a percentage)")
        return v
    parse.__name__ = "fraction"
    parse.numeric = True  # type: ignore[attr-defined]
    return parse


POSITIVE_INT = int_at_least(1, 10)
NONNEGATIVE_INT = int_at_least(0, 0)


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_ = action.help or ""
        if (not action.option_strings or "default" in help_.lower()
                or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return help_
        return f"{help_} (default: %(default)s)".lstrip()


class Parser(argparse.ArgumentParser):
    """``abstain`` subcommand parser: shows defaults, and a bad argument is one line, exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)
