"""User-facing errors: each says what is wrong and how to fix it.

The CLI turns an :class:`AbstainError` into one line on stderr and a non-zero exit; the server
turns it into an answer with the error's own ``status``, ``reason`` and ``headers``
(``serve/server/error_answers.py``: HTTP, gRPC and the metrics alike). Anything else escaping
is a bug.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any


class _ClassName:
    """``reason`` unless a class or instance sets one: the name of the error's own class."""

    def __get__(self, obj: Any, cls: type) -> str:
        return cls.__name__


class AbstainError(Exception):
    """A problem with the user's input, files or configuration (never a bug in abstain).

    Attributes:
        status: the HTTP status the server answers with (422 unless a subclass says otherwise).
        reason: a short machine name for the metrics (``queue_full``, ``bad_shape`` …).
        headers: extra response headers (``Retry-After`` …); read-only unless set per instance.
        unavailable: a 503 that is not load (starting, stopping, a model being unloaded): gRPC
            answers it UNAVAILABLE, so clients wait for the server instead of backing off.
    """

    status: int = 422
    unavailable: bool = False
    reason: str = _ClassName()  # type: ignore[assignment]
    headers: Mapping[str, str] = MappingProxyType({})


# PyTorch's CPU wheel index. Plain PyPI resolves torch on Linux x86_64 to the multi-GB CUDA build,
# so the `train` extra is installed after the CPU build of torch (the Makefile's TORCH_INDEX).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def install_command(extra: str) -> str:
    """The shell line that installs ``extra``; for ``train`` the CPU build of torch comes first."""
    line = f"pip install 'abstain[{extra}]'"
    if extra == "train":
        return f"pip install torch --index-url {TORCH_CPU_INDEX}, then {line}"
    return line


class MissingExtraError(AbstainError):
    """An optional dependency group is not installed."""

    def __init__(self, extra: str, module: str | None = None) -> None:
        what = f"the '{module}' module" if module else "a dependency"
        note = (" after the same torch line; plain PyPI resolves torch on Linux x86_64 to the "
                "multi-GB CUDA build" if extra == "train" else "")
        super().__init__(
            f"{what} is missing: this command needs the '{extra}' extra. "
            f"Install it with: {install_command(extra)}  "
            f"(from a checkout: pip install -e '.[{extra}]'{note})"
        )
        self.extra = extra
        self.module = module
