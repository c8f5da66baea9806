"""User-facing errors: each says what is wrong and how to fix it.

The CLI turns an :class:`AbstainError` into one line on stderr and a non-zero exit; the server
turns it into a 4xx JSON body. Anything else escaping is a bug.
"""

from __future__ import annotations


class AbstainError(Exception):
    """A problem with the user's input, files or configuration (never a bug in abstain)."""


class MissingExtraError(AbstainError):
    """An optional dependency group is not installed."""

    def __init__(self, extra: str, module: str | None = None) -> None:
        what = f"the '{module}' module" if module else "a dependency"
        super().__init__(
            f"{what} is missing: this command needs the '{extra}' extra. "
            f"Install it with: pip install 'abstain[{extra}]'  (from a checkout: pip install -e '.[{extra}]')"
        )
        self.extra = extra
        self.module = module
