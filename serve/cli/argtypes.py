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


def _checked(kind: type, name: str, ok: Callable[[Any], bool],
             why: Callable[[str, Any], str]) -> Callable[[str], Any]:
    """A numeric argparse type: parsed as ``kind``, refused with ``why(text, value)`` unless ``ok``."""
    def parse(text: str) -> Any:
        v = _number(text, kind)
        if not ok(v):
            raise argparse.ArgumentTypeError(why(text, v))
        return v
    parse.__name__ = name
    parse.numeric = True  # type: ignore[attr-defined]
    return parse


def int_at_least(lo: int, example: int) -> Callable[[str], int]:
    """A whole number ≥ ``lo``."""
    return _checked(int, f"integer ≥ {lo}", lambda v: v >= lo, lambda _, v: (
        f"{v} is below {lo}: pass a whole number ≥ {lo}, e.g. {example}"))


def float_above(lo: float, example: float, inclusive: bool = False) -> Callable[[str], float]:
    """A finite number > ``lo`` (≥ with ``inclusive``)."""
    rel = "≥" if inclusive else ">"
    return _checked(float, "number", lambda v: v > lo or (inclusive and v == lo), lambda t, _: (
        f"{t} is not {rel} {lo:g}: pass a number {rel} {lo:g}, e.g. {example:g}"))


def fraction(example: float, closed_right: bool = False) -> Callable[[str], float]:
    """A number in (0, 1), or (0, 1] with ``closed_right``."""
    rng = "(0, 1]" if closed_right else "(0, 1)"
    return _checked(float, "fraction", lambda v: 0.0 < v < 1.0 or (closed_right and v == 1.0),
                    lambda t, _: f"{t} is not in {rng}: pass a fraction such as {example:g} "
                                 "(not a percentage)")


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
