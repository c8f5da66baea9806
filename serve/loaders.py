"""Per-kind dataset loaders for `serve.data`: offline, numpy only, nothing written to the cwd.

Each loader takes ``(path, options)`` and returns ``Loaded``:
``(x float32 (n, *shape), y int64 (n,), class_names, preprocessing, fixed_test_indices | None)``.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from serve.errors import AbstainError, MissingExtraError

MNIST1D_DEFAULT_N = 20000
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class DataError(AbstainError):
    """A dataset spec, path or file that abstain cannot load."""


def int_option(opts: dict[str, str], key: str, default: int, lo: int = 0) -> int:
    try:
        v = int(opts.get(key, default))
    except ValueError as err:
        raise DataError(f"option {key}={opts[key]!r} must be an integer") from err
    if v < lo:
        raise DataError(f"option {key}={v} must be ≥ {lo}")
    return v



# ---------------------------------------------------------------------------- loaders
# Each returns (x float32, y int64, class_names, preprocessing, fixed_test_indices | None).

Loaded = tuple[np.ndarray, np.ndarray, list[str], dict[str, Any], np.ndarray | None]


def _mnist1d(path: str | None, opts: dict[str, str]) -> Loaded:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ModuleNotFoundError as err:
        raise MissingExtraError("data", err.name) from err
    n = int_option(opts, "n", MNIST1D_DEFAULT_N, lo=10)
    args = get_dataset_args()
    args.num_samples = n
    args.seed = int_option(opts, "seed", 0)
    args.train_split = 1.0
    # make_dataset reseeds numpy's and python's global RNGs; put them back afterwards.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)  # (n, 40)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    return x, y, [str(i) for i in range(10)], {"kind": "none"}, None


def _digits(path: str | None, opts: dict[str, str]) -> Loaded:
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as err:
        raise MissingExtraError("data", err.name) from err
    b = load_digits()
    x = b.images.astype(np.float32)[:, None]  # (n, 1, 8, 8), values 0..16
    prep = {"kind": "image", "mode": "L", "size": [8, 8], "scale": 16.0 / 255.0, "layout": "NCHW"}
    return x, b.target.astype(np.int64), [str(t) for t in b.target_names], prep, None


def _npz(path: str | None, opts: dict[str, str]) -> Loaded:
    p = Path(path or "")
    if not p.is_file():
        raise DataError(f"npz file not found: {p} (expected an .npz with arrays 'x' and 'y')")
    _check_npz(p)
    try:
        with np.load(p, allow_pickle=False) as f:
            x, y = f["x"], f["y"]
            names = [str(s) for s in f["class_names"]] if "class_names" in f else None
    except Exception as err:                  # numpy's errors for crafted files vary
        raise DataError(f"cannot read {p} as .npz without pickle ({type(err).__name__}: "
                        f"{str(err)[:200]})") from None
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{p}: need x (n, ...) and y (n,), got x {x.shape} and y {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise DataError(f"{p}: y must hold non-negative integer class indices (got {y.dtype})")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise DataError(f"{p}: x must be finite numbers")
    k = int(y.max()) + 1 if len(y) else 0
    names = names or [str(i) for i in range(k)]
    if len(names) < k:
        raise DataError(f"{p}: {len(names)} class_names but labels go up to {k - 1}")
    return x.astype(np.float32), y.astype(np.int64), names, {"kind": "none"}, None


MAX_RATIO = 100          # uncompressed / compressed: real arrays compress 1–5×, zip bombs 1000×


def _check_npz(p: Path) -> None:
    """Look at an .npz before numpy allocates anything: its members must be .npy files whose
    headers declare shapes that match their sizes and are not a zip bomb."""
    try:
        with zipfile.ZipFile(p) as z:
            infos = {i.filename: i for i in z.infolist()}
            for name in ("x.npy", "y.npy"):
                if name not in infos:
                    raise DataError(f"{p} must contain arrays 'x' and 'y' (.npy members); it has "
                                    f"{sorted(infos)[:10]}")
            for name, info in infos.items():
                if not name.endswith(".npy"):
                    raise DataError(f"{p}: member {name[:60]!r} is not a .npy array; an .npz "
                                    "from numpy.savez holds only .npy members")
                if info.file_size > MAX_RATIO * max(info.compress_size, 1 << 20):
                    raise DataError(f"{p}: {name} claims {info.file_size} bytes from "
                                    f"{info.compress_size} compressed: refusing a likely zip bomb")
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(f)
                need = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if dtype.hasobject or need > info.file_size:
                    raise DataError(f"{p}: {name} declares shape {shape} of {dtype} "
                                    f"({need} bytes) but holds {info.file_size} bytes")
    except DataError:
        raise
    except Exception as err:                  # not a zip, bad header, truncated, …
        raise DataError(f"cannot read {p} as .npz ({type(err).__name__}: {str(err)[:200]})") \
            from None


def _imagefolder(path: str | None, opts: dict[str, str]) -> Loaded:
    from PIL import Image, UnidentifiedImageError

    root = Path(path or "")
    if not root.is_dir():
        raise DataError(f"image folder not found: {root} (expected ROOT/<class_name>/<image files>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{root} needs at least two class sub-folders (ROOT/<class>/<image>); "
                        f"found {classes}")
    mode = opts.get("mode", "RGB")
    if mode not in ("L", "RGB"):
        raise DataError(f"option mode={mode!r} must be L or RGB")
    size_s = opts.get("size", "32")
    try:
        h, w = (int(v) for v in (size_s.split("x") if "x" in size_s else (size_s, size_s)))
    except ValueError as err:
        raise DataError(f"option size={size_s!r} must be N or HxW") from err
    xs, ys = [], []
    for ci, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() not in _IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    a = np.asarray(im.convert(mode).resize((w, h), Image.BILINEAR), np.float32)
            except (UnidentifiedImageError, OSError) as err:
                raise DataError(f"cannot read image {f} ({err}); remove or fix it") from err
            xs.append(a[None] if mode == "L" else a.transpose(2, 0, 1))  # (C, H, W)
            ys.append(ci)
    if not xs:
        raise DataError(f"no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) under {root}")
    prep = {"kind": "image", "mode": mode, "size": [h, w], "scale": 1.0, "layout": "NCHW"}
    return np.stack(xs), np.asarray(ys, np.int64), classes, prep, None


class _SafeUnpickler(pickle.Unpickler):
    """Only what the CIFAR python batches need: builtins containers and numpy arrays."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "list"), ("builtins", "dict"),
                ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


MAX_PICKLE_BYTES = 1 << 30


def _unpickle(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_PICKLE_BYTES:
            raise DataError(f"{path} is over {MAX_PICKLE_BYTES} bytes: not a CIFAR python batch")
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
    except DataError:
        raise
    except Exception as err:   # crafted pickles raise anything: TypeError, MemoryError, …
        raise DataError(f"{path} is not a CIFAR python batch ({type(err).__name__}: "
                        f"{str(err)[:200]})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR python batch (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar(kind: str, path: str | None, opts: dict[str, str]) -> Loaded:
    root = Path(path or "")
    sub = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
    if (root / sub).is_dir():
        root = root / sub
    if kind == "cifar10":
        train_files, test_files, meta, lkey, nkey = (
            [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "labels",
            "label_names")
    else:
        train_files, test_files, meta, lkey, nkey = (["train"], ["test"], "meta", "fine_labels",
                                                     "fine_label_names")
    missing = [f for f in (*train_files, *test_files, meta) if not (root / f).is_file()]
    if missing:
        raise DataError(f"{root} is not a {kind} python-batch folder: missing {', '.join(missing)} "
                        f"(download and extract the 'python version' archive; pass the {sub} folder)")
    xs, ys = [], []
    for f in (*train_files, *test_files):
        d = _unpickle(root / f)
        if "data" not in d or lkey not in d:
            raise DataError(f"{root / f} lacks 'data' or '{lkey}'")
        try:
            xs.append(np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[lkey], np.int64).reshape(-1))
        except Exception as err:
            raise DataError(f"{root / f}: 'data' must be an (n, 3072) uint8 array and '{lkey}' a "
                            f"list of n labels ({type(err).__name__})") from None
        if len(xs[-1]) != len(ys[-1]):
            raise DataError(f"{root / f}: {len(xs[-1])} images but {len(ys[-1])} labels")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(root / meta)[nkey]]
    n_test = sum(len(v) for v in ys[len(train_files):])
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    prep = {"kind": "image", "mode": "RGB", "size": [32, 32], "scale": 1.0, "layout": "NCHW"}
    return x, y, names, prep, np.arange(len(y) - n_test, len(y))


LOADERS: dict[str, Callable[[str | None, dict[str, str]], Loaded]] = {
    "mnist1d": _mnist1d,
    "digits": _digits,
    "npz": _npz,
    "imagefolder": _imagefolder,
    "cifar10": lambda p, o: _cifar("cifar10", p, o),
    "cifar100": lambda p, o: _cifar("cifar100", p, o),
}
OPTIONS: dict[str, set[str]] = {"mnist1d": {"n", "seed"}, "digits": {"seed"}, "npz": {"seed"},
                                 "imagefolder": {"seed", "size", "mode"}, "cifar10": {"seed"},
                                 "cifar100": {"seed"}}
