"""Atomic file writes: readers see the old file or the new one, never a half-written one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    The temporary file gets the permissions a plain ``open()`` would give (mkstemp's are 0600).
    On any exception it is removed and ``path`` is left untouched.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    tmp = Path(name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsynced before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def keep_backup(path: str | os.PathLike[str]) -> Path | None:
    """Before an artifact is replaced, keep the current one as ``NAME.bak`` (one generation).

    The one rule for every command that writes into a model version directory (`abstain export`,
    `abstain calibrate`): the new file replaces the old one atomically, and the old one stays
    beside it so a mistake can be undone (``mv NAME.bak NAME``). The copy is written atomically
    and ``path`` itself is untouched, so a server polling the directory never sees it missing.

    Returns:
        The backup's path, or ``None`` when there was nothing to keep.
    """
    path = Path(path)
    if not path.is_file():
        return None
    backup = path.with_name(path.name + ".bak")
    atomic_write_bytes(backup, path.read_bytes())
    return backup
