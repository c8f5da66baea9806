"""Rich consoles for command output: full values when the output is not a terminal.

Rich wraps and truncates to 80 columns when it cannot ask a terminal for its width, so logs,
`docker logs` and `kubectl logs` would get ``mnist1d-…`` and ``CPUExecu…`` in tables. Off a
terminal these consoles are wide enough that every table row and header stays on one line.
"""

from __future__ import annotations

from rich.console import Console

UNBOUNDED = 10_000


def make_console(stderr: bool = False, **kwargs) -> Console:
    """A console writing to stdout (or stderr); unbounded width unless it is a terminal."""
    probe = Console(stderr=stderr)
    if not probe.is_terminal and "width" not in kwargs:
        kwargs["width"] = UNBOUNDED
    return Console(stderr=stderr, **kwargs)


def report_console() -> Console:
    """The console `calibrate` and `evaluate` print their reports on: no automatic highlighting."""
    return make_console(highlight=False)
