"""The files of a model repository on disk: which version directories exist, whether they stay
inside the repository, and what identifies their files (a change means "load it again")."""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

from serve.calibration import probe
from serve.calibration.artifact import FILENAME as CALIBRATION_FILE

log = logging.getLogger(__name__)
MODEL_FILE = "model.onnx"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}$")


def valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name)) and ".." not in name


def version_signature(d: Path) -> tuple:
    """What identifies a version's files on disk; a change means "load it again"."""
    return tuple(file_stat(d / f) for f in (MODEL_FILE, CALIBRATION_FILE, probe.FILENAME))


def file_stat(f: Path) -> tuple | None:
    """(mtime, size, inode) of ``f``, or None when it cannot be read: a change means "reload"."""
    try:
        st = f.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def scan(root: Path, follow_symlinks: bool = False) -> dict[tuple[str, int], Path]:
    """Every ``<name>/<version>`` directory with a valid name and a positive integer version.

    A model or version directory whose real path lies outside the repository (a symlink out) is
    skipped with a warning unless ``follow_symlinks``.
    """
    found: dict[tuple[str, int], Path] = {}
    if not root.is_dir():
        return found
    real_root = root.resolve()
    for mdir in sorted(root.iterdir()):
        if not mdir.is_dir() or mdir.name.startswith("."):
            continue
        if not valid_name(mdir.name):
            log.warning("skipping %s: model names match %s", mdir, NAME_RE.pattern)
            continue
        for vdir in sorted(mdir.iterdir()):
            if vdir.is_dir() and VERSION_RE.match(vdir.name):
                if not follow_symlinks and not _inside(vdir, real_root):
                    log.warning("skipping %s: it resolves to %s, outside the repository %s "
                                "(serve it from inside, or pass --follow-symlinks)", vdir,
                                vdir.resolve(), real_root)
                    continue
                found[(mdir.name, int(vdir.name))] = vdir
    return found


def _inside(path: Path, root: Path) -> bool:
    files = ("", MODEL_FILE, CALIBRATION_FILE, probe.FILENAME)
    with contextlib.suppress(OSError, RuntimeError):          # RuntimeError: a symlink loop
        return all((path / f).resolve().is_relative_to(root) for f in files)
    return False
