"""Datasets selected by a spec string, loaded offline, with deterministic disjoint splits.

Torch-free (numpy only) so that `abstain calibrate` and `abstain evaluate` can load the same data
the trainer used. Spec grammar::

    KIND[:PATH][?key=value&key=value][:SPLIT]

    mnist1d                  mnist1d?n=20000&seed=0     digits:test
    npz:/data/x.npz:calibration                         imagefolder:/data/pets?size=64&mode=RGB
    cifar10:/data/cifar-10-batches-py                   cifar100:/data/cifar-100-python:test

Splits (``train``, ``tune``, ``calibration``, ``test``) are stratified by class, disjoint, and
seeded by the spec's ``seed`` option, so the same spec always yields the same indices. The
fingerprint is a SHA-256 of the data bytes and the canonical spec; every artifact records it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from serve.errors import AbstainError, MissingExtraError
from serve.files import atomic_path

SplitName = Literal["train", "tune", "calibration", "test"]
SPLITS: tuple[str, ...] = ("train", "tune", "calibration", "test")
FRACTIONS: tuple[float, ...] = (0.60, 0.10, 0.15, 0.15)
MNIST1D_DEFAULT_N = 20000
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class DataError(AbstainError):
    """A dataset spec, path or file that abstain cannot load."""


@dataclass(frozen=True)
class Dataset:
    """A whole labelled dataset plus its split indices.

    Attributes:
        x: float32 ``(n, *shape)``; raw values (images: 0..255 pixels times ``preprocessing.scale``
            is what ``x`` holds, so the server can reproduce it from an uploaded image).
        y: int64 ``(n,)`` class indices into ``class_names``.
        spec: the canonical spec (no split suffix) the data came from.
        fingerprint: SHA-256 hex of the data bytes and ``spec``.
        splits: split name → sorted int64 index array; disjoint, stratified, deterministic.
        preprocessing: the ONNX ``preprocessing`` metadata (contract 2) for this data.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    spec: str
    fingerprint: str
    splits: dict[str, np.ndarray]
    preprocessing: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})
    seed: int = 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of one split (copies); ``"all"`` gives the whole dataset."""
        if name == "all":
            return self.x.copy(), self.y.copy()
        if name not in self.splits:
            raise DataError(f"unknown split {name!r} for {self.spec}; valid: {', '.join(SPLITS)}")
        idx = self.splits[name]
        return self.x[idx], self.y[idx]

    def info(self, split: str = "all") -> dict[str, Any]:
        """What an artifact records about the data it was made from."""
        n = len(self.y) if split == "all" else len(self.splits[split])
        return {"spec": self.spec, "split": split, "fingerprint": self.fingerprint, "n": int(n),
                "seed": self.seed, "fractions": dict(zip(SPLITS, FRACTIONS, strict=True))}


# ---------------------------------------------------------------------------- spec parsing

@dataclass(frozen=True)
class Spec:
    kind: str
    path: str | None
    options: tuple[tuple[str, str], ...]
    split: str | None

    @property
    def canonical(self) -> str:
        s = self.kind + (f":{self.path}" if self.path else "")
        if self.options:
            s += "?" + "&".join(f"{k}={v}" for k, v in self.options)
        return s


def parse_spec(spec: str) -> Spec:
    """Split ``KIND[:PATH][?opts][:SPLIT]`` into its parts (no I/O)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty data spec; use one of: {', '.join(_LOADERS)}")
    s, split = spec.strip(), None
    head, sep, tail = s.rpartition(":")
    if sep and tail in (*SPLITS, "all"):
        s, split = head, tail
    s, _, query = s.partition("?")
    kind, _, path = s.partition(":")
    if kind not in _LOADERS:
        raise DataError(f"unknown dataset kind {kind!r} in spec {spec!r}; valid kinds: "
                        f"{', '.join(_LOADERS)} (splits: {', '.join(SPLITS)})")
    needs_path = kind not in ("mnist1d", "digits")
    if needs_path and not path:
        raise DataError(f"spec {spec!r} needs a path: {kind}:PATH")
    if not needs_path and path:
        raise DataError(f"spec {spec!r}: {kind} takes no path (did you mean `{kind}:SPLIT` with "
                        f"SPLIT one of {', '.join(SPLITS)}?)")
    opts: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise DataError(f"spec {spec!r}: option {item!r} must look like key=value")
        opts[k] = v
    allowed = _OPTIONS[kind]
    for k in opts:
        if k not in allowed:
            raise DataError(f"spec {spec!r}: unknown option {k!r} for {kind}; valid: "
                            f"{', '.join(sorted(allowed))}")
    return Spec(kind, path or None, tuple(sorted(opts.items())), split)


def _int_opt(opts: dict[str, str], key: str, default: int, lo: int = 0) -> int:
    try:
        v = int(opts.get(key, default))
    except ValueError as err:
        raise DataError(f"option {key}={opts[key]!r} must be an integer") from err
    if v < lo:
        raise DataError(f"option {key}={v} must be ≥ {lo}")
    return v


# ---------------------------------------------------------------------------- splits

def stratified_splits(y: np.ndarray, seed: int, fractions: tuple[float, ...] = FRACTIONS,
                      names: tuple[str, ...] = SPLITS) -> dict[str, np.ndarray]:
    """Per class, shuffle with ``seed`` and cut at the cumulative fractions: disjoint, stratified."""
    rng = np.random.default_rng(seed)
    cuts = np.cumsum(np.asarray(fractions, np.float64))
    cuts /= cuts[-1]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        bounds = np.concatenate([[0], np.round(cuts * len(idx)).astype(np.int64)])
        for i, n in enumerate(names):
            parts[n].append(idx[bounds[i]:bounds[i + 1]])
    return {n: np.sort(np.concatenate(p)).astype(np.int64) for n, p in parts.items()}


# ---------------------------------------------------------------------------- loaders
# Each returns (x float32, y int64, class_names, preprocessing, fixed_test_indices | None).

Loaded = tuple[np.ndarray, np.ndarray, list[str], dict[str, Any], np.ndarray | None]


def _mnist1d(path: str | None, opts: dict[str, str]) -> Loaded:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ModuleNotFoundError as err:
        raise MissingExtraError("train", err.name) from err
    n = _int_opt(opts, "n", MNIST1D_DEFAULT_N, lo=10)
    args = get_dataset_args()
    args.num_samples = n
    args.seed = _int_opt(opts, "seed", 0)
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
        raise MissingExtraError("train", err.name) from err
    b = load_digits()
    x = b.images.astype(np.float32)[:, None]  # (n, 1, 8, 8), values 0..16
    prep = {"kind": "image", "mode": "L", "size": [8, 8], "scale": 16.0 / 255.0, "layout": "NCHW"}
    return x, b.target.astype(np.int64), [str(t) for t in b.target_names], prep, None


def _npz(path: str | None, opts: dict[str, str]) -> Loaded:
    p = Path(path or "")
    if not p.is_file():
        raise DataError(f"npz file not found: {p} (expected an .npz with arrays 'x' and 'y')")
    try:
        with np.load(p, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise DataError(f"{p} must contain arrays 'x' and 'y'; it has {sorted(f.files)}")
            x, y = f["x"], f["y"]
            names = [str(s) for s in f["class_names"]] if "class_names" in f else None
    except (ValueError, OSError) as err:
        raise DataError(f"cannot read {p} as .npz without pickle ({err})") from err
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


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as err:
        raise DataError(f"{path} is not a CIFAR python batch ({err})") from err
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
        xs.append(np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[lkey], np.int64))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(root / meta)[nkey]]
    n_test = sum(len(v) for v in ys[len(train_files):])
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    prep = {"kind": "image", "mode": "RGB", "size": [32, 32], "scale": 1.0, "layout": "NCHW"}
    return x, y, names, prep, np.arange(len(y) - n_test, len(y))


_LOADERS: dict[str, Callable[[str | None, dict[str, str]], Loaded]] = {
    "mnist1d": _mnist1d,
    "digits": _digits,
    "npz": _npz,
    "imagefolder": _imagefolder,
    "cifar10": lambda p, o: _cifar("cifar10", p, o),
    "cifar100": lambda p, o: _cifar("cifar100", p, o),
}
_OPTIONS: dict[str, set[str]] = {"mnist1d": {"n", "seed"}, "digits": {"seed"}, "npz": {"seed"},
                                 "imagefolder": {"seed", "size", "mode"}, "cifar10": {"seed"},
                                 "cifar100": {"seed"}}


# ---------------------------------------------------------------------------- public API

def _fingerprint(x: np.ndarray, y: np.ndarray, spec: str) -> str:
    h = hashlib.sha256(spec.encode())
    h.update(json.dumps([list(x.shape), str(x.dtype)]).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def _cache_dir() -> Path | None:
    """Disk cache for generated data (mnist1d); ``ABSTAIN_CACHE_DIR=off`` disables it."""
    v = os.environ.get("ABSTAIN_CACHE_DIR", str(Path.home() / ".cache" / "abstain"))
    return None if v.lower() in ("", "off", "0", "none") else Path(v) / "data"


def _generate_cached(spec: Spec, opts: dict[str, str]) -> Loaded:
    cache = _cache_dir() if spec.kind == "mnist1d" else None
    key = hashlib.sha256(f"v1|{spec.canonical}".encode()).hexdigest()[:24]
    if cache is not None and (cache / f"{key}.npz").is_file():
        try:
            with np.load(cache / f"{key}.npz", allow_pickle=False) as f:
                return f["x"], f["y"], [str(s) for s in f["class_names"]], {"kind": "none"}, None
        except (ValueError, OSError, KeyError):
            pass  # a broken cache entry is regenerated below
    out = _LOADERS[spec.kind](spec.path, opts)
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache / f"{key}.npz", suffix=".npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, x=out[0], y=out[1], class_names=np.asarray(out[2]))
        except OSError:
            pass  # caching is an optimisation only
    return out


@lru_cache(maxsize=4)
def _load_canonical(canonical: str) -> Dataset:
    spec = parse_spec(canonical)
    opts = dict(spec.options)
    x, y, names, prep, fixed_test = _generate_cached(spec, opts)
    if len(y) < 2 * len(SPLITS):
        raise DataError(f"{canonical}: only {len(y)} samples; need at least {2 * len(SPLITS)}")
    seed = _int_opt(opts, "seed", 0)
    if fixed_test is None:
        splits = stratified_splits(y, seed)
    else:  # keep the official test set; split the rest into train/tune/calibration
        rest = np.setdiff1d(np.arange(len(y)), fixed_test)
        sub = stratified_splits(y[rest], seed, FRACTIONS[:3], SPLITS[:3])
        splits = {k: rest[v] for k, v in sub.items()} | {"test": fixed_test.astype(np.int64)}
    for a in (x, y, *splits.values()):
        a.flags.writeable = False
    return Dataset(x=x, y=y, class_names=names, spec=canonical,
                   fingerprint=_fingerprint(x, y, canonical), splits=splits, preprocessing=prep,
                   seed=seed)


def load_dataset(spec: str) -> Dataset:
    """Load a dataset (any ``:split`` suffix is ignored; use :func:`load_split` for one split).

    Raises:
        DataError: unknown kind or option, missing path, unreadable or malformed files.
        MissingExtraError: mnist1d / digits without the ``train`` extra.
    """
    return _load_canonical(parse_spec(spec).canonical)


def load_split(spec: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(x, y, info)`` for ``SPEC:SPLIT`` (no suffix: all samples); ``info`` goes into artifacts."""
    split = parse_spec(spec).split or "all"
    ds = load_dataset(spec)
    x, y = ds.split(split)
    return x, y, ds.info(split)
