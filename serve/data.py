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
import logging
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from serve.files import atomic_path
from serve.loaders import LOADERS, OPTIONS, DataError, Loaded, int_option

log = logging.getLogger(__name__)
SPLITS: tuple[str, ...] = ("train", "tune", "calibration", "test")
FRACTIONS: tuple[float, ...] = (0.60, 0.10, 0.15, 0.15)


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
        raise DataError(f"empty data spec; use one of: {', '.join(LOADERS)}")
    s, split = spec.strip(), None
    head, sep, tail = s.rpartition(":")
    if sep and tail in (*SPLITS, "all"):
        s, split = head, tail
    s, _, query = s.partition("?")
    kind, _, path = s.partition(":")
    if kind not in LOADERS:
        raise DataError(f"unknown dataset kind {kind!r} in spec {spec!r}; valid kinds: "
                        f"{', '.join(LOADERS)} (splits: {', '.join(SPLITS)})")
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
    allowed = OPTIONS[kind]
    for k in opts:
        if k not in allowed:
            raise DataError(f"spec {spec!r}: unknown option {k!r} for {kind}; valid: "
                            f"{', '.join(sorted(allowed))}")
    return Spec(kind, path or None, tuple(sorted(opts.items())), split)


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
    generated = spec.kind == "mnist1d"
    if generated:  # seconds of work before any other output: say so first
        log.info("generating %s (not cached%s) ...", spec.canonical,
                 f" in {cache} yet" if cache is not None else ": ABSTAIN_CACHE_DIR=off")
    t0 = time.perf_counter()
    out = LOADERS[spec.kind](spec.path, opts)
    if generated:
        log.info("generated %s: %d samples in %.1f s%s", spec.canonical, len(out[1]),
                 time.perf_counter() - t0, "; cached for next time" if cache is not None else "")
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
    seed = int_option(opts, "seed", 0)
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
        MissingExtraError: mnist1d / digits without the ``data`` extra.
    """
    return _load_canonical(parse_spec(spec).canonical)


def load_split(spec: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(x, y, info)`` for ``SPEC:SPLIT`` (no suffix: all samples); ``info`` goes into artifacts."""
    split = parse_spec(spec).split or "all"
    ds = load_dataset(spec)
    x, y = ds.split(split)
    return x, y, ds.info(split)
