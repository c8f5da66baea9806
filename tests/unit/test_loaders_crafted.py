"""Crafted dataset files get a one-line DataError, checked before anything large is allocated."""

from __future__ import annotations

import io
import pickle
import resource
import zipfile
from pathlib import Path

import numpy as np
import pytest

from serve.loaders import LOADERS, DataError


def _npz(path: Path, members: dict[str, bytes], compress: bool = True) -> Path:
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _header_only(shape: tuple, dtype: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def _load(kind: str, path: Path) -> None:
    LOADERS[kind](str(path), {})


def test_npz_zip_bomb_is_refused_before_allocating(tmp_path):
    bomb = _header_only((1 << 20, 1024)) + b"\0" * (1 << 27)        # 512 MiB declared, 128 MiB zeros
    p = _npz(tmp_path / "bomb.npz", {"x.npy": bomb, "y.npy": _npy(np.zeros(3, np.int64))})
    assert p.stat().st_size < 2 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match="zip bomb"):
        _load("npz", p)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024   # KiB


@pytest.mark.parametrize(("members", "words"), [
    ({"x.npy": _header_only((1 << 44,)), "y.npy": _npy(np.zeros(3, np.int64))}, "declares shape"),
    ({"x": b"not an array", "y.npy": _npy(np.zeros(3, np.int64))}, "must contain"),
    ({"x.npy": _npy(np.zeros((3, 2))), "y.npy": _npy(np.zeros(3, np.int64)), "evil.txt": b"x"},
     "not a .npy array"),
    ({"x.npy": b"\x93NUMPY garbage", "y.npy": _npy(np.zeros(3, np.int64))}, "cannot read"),
    ({"x.npy": _npy(np.array([object()], dtype=object)), "y.npy": _npy(np.zeros(1, np.int64))},
     ""),
])
def test_crafted_npz_members_are_one_line_errors(tmp_path, members, words):
    p = _npz(tmp_path / "d.npz", members)
    with pytest.raises(DataError) as err:
        _load("npz", p)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_not_a_zip_at_all(tmp_path):
    p = tmp_path / "d.npz"
    p.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="cannot read"):
        _load("npz", p)


def _cifar_dir(root: Path, batch: bytes) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        (d / name).write_bytes(batch)
    return root


def _pickle_calling(module: str, name: str, args: bytes) -> bytes:
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" + args + b"R."


@pytest.mark.parametrize("batch", [
    _pickle_calling("builtins", "list", b"(K\x01K\x02K\x03t"),               # list(1, 2, 3)
    pickle.dumps({b"data": {"a": 1}, b"labels": [0]}, protocol=2),          # data as a dict
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2),
    _pickle_calling("os", "system", b"(S'true'\ntp0\n"),                     # never executed
    b"\x80\x02}q\x00.garbage",
])
def test_crafted_cifar_batches_are_one_line_errors(tmp_path, batch):
    root = _cifar_dir(tmp_path, batch)
    with pytest.raises(DataError) as err:
        _load("cifar10", root)
    assert "\n" not in str(err.value)


def test_a_huge_declared_ndarray_in_a_pickle_is_refused(tmp_path):
    arr = np.zeros(4, np.uint8)
    raw = pickle.dumps({b"data": arr, b"labels": [0]}, protocol=2)
    raw = raw.replace(pickle.dumps((4,), protocol=2)[2:-1], pickle.dumps((1 << 44,), protocol=2)[2:-1])
    root = _cifar_dir(tmp_path, raw)
    with pytest.raises(DataError):
        _load("cifar10", root)
