"""serve.data: specs, offline loaders, deterministic stratified disjoint splits, fingerprints."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
from PIL import Image

from serve import data as data_mod
from serve.data import (
    SPLITS,
    DataError,
    load_dataset,
    load_split,
    parse_spec,
    stratified_splits,
)

SMALL = "mnist1d?n=2000"


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABSTAIN_CACHE_DIR", "off")
    data_mod._load_canonical.cache_clear()


def test_parse_spec_split_suffix_and_options() -> None:
    s = parse_spec("npz:/x/y.npz?seed=3:test")
    assert (s.kind, s.path, s.options, s.split) == ("npz", "/x/y.npz", (("seed", "3"),), "test")
    s = parse_spec("mnist1d?seed=1&n=500:calibration")
    assert s.canonical == "mnist1d?n=500&seed=1" and s.split == "calibration"
    assert parse_spec("digits").split is None


@pytest.mark.parametrize("spec, msg", [
    ("foo", "valid kinds: mnist1d, digits"), ("npz", "needs a path"),
    ("digits:/data", "takes no path"), ("mnist1d?bogus=1", "valid: n, seed"),
    ("mnist1d?n", "key=value"), ("mnist1d?n=abc", "must be an integer"),
    ("npz:/no/such.npz", "not found"), ("imagefolder:/no/such", "not found"),
    ("cifar10:/no/such", "missing data_batch_1"),
])
def test_bad_specs_say_what_is_wrong(spec: str, msg: str) -> None:
    with pytest.raises(DataError, match=msg):
        load_dataset(spec)


def test_mnist1d_splits_are_disjoint_stratified_deterministic(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    legacy = np.random
    legacy.seed(123)
    random.seed(123)
    expected_np, expected_py = legacy.rand(), random.random()
    legacy.seed(123)
    random.seed(123)
    ds = load_dataset(SMALL)
    # the global RNGs were restored, and nothing was written to the working directory
    assert legacy.rand() == expected_np and random.random() == expected_py
    assert os.listdir(tmp_path) == []
    assert ds.x.shape == (2000, 40) and ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    assert ds.class_names == [str(i) for i in range(10)]
    sizes = {k: len(v) for k, v in ds.splits.items()}
    assert sizes == {"train": 1200, "tune": 200, "calibration": 300, "test": 300}
    all_idx = np.concatenate(list(ds.splits.values()))
    assert len(np.unique(all_idx)) == len(ds.y) == len(all_idx)
    for name in SPLITS:
        counts = np.bincount(ds.y[ds.splits[name]], minlength=10)
        assert counts.min() == counts.max(), (name, counts)  # 200 per class → exact strata
    # a different seed gives different data and different splits; the same seed, the same
    other = load_dataset(SMALL + "&seed=1")
    assert other.fingerprint != ds.fingerprint
    assert not np.array_equal(other.splits["test"], ds.splits["test"])
    data_mod._load_canonical.cache_clear()
    again = load_dataset(SMALL)
    assert again.fingerprint == ds.fingerprint
    assert all(np.array_equal(again.splits[k], ds.splits[k]) for k in SPLITS)


def test_stratified_splits_uneven_classes() -> None:
    y = np.repeat(np.arange(3), [7, 50, 13])
    s = stratified_splits(y, seed=0)
    assert sum(len(v) for v in s.values()) == len(y)
    assert len(np.unique(np.concatenate(list(s.values())))) == len(y)
    frac = {k: len(v) / len(y) for k, v in s.items()}
    assert abs(frac["train"] - 0.6) < 0.05 and abs(frac["test"] - 0.15) < 0.05


def test_load_split_info_and_disk_cache(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("ABSTAIN_CACHE_DIR", str(tmp_path))
    data_mod._load_canonical.cache_clear()
    with caplog.at_level("INFO", logger="serve.data"):
        x, y, info = load_split("mnist1d?n=600:calibration")
    # a cold cache says it is generating before the work starts, and when it is done
    assert [r.getMessage().split(" ")[0] for r in caplog.records] == ["generating", "generated"]
    assert "mnist1d?n=600" in caplog.records[0].getMessage()
    caplog.clear()
    assert x.shape == (90, 40) and len(y) == 90
    assert info["split"] == "calibration" and info["n"] == 90 and info["spec"] == "mnist1d?n=600"
    cached = list((tmp_path / "data").glob("*.npz"))
    assert len(cached) == 1
    data_mod._load_canonical.cache_clear()
    with caplog.at_level("INFO", logger="serve.data"):
        x2, _, info2 = load_split("mnist1d?n=600:calibration")
    assert info2["fingerprint"] == info["fingerprint"] and np.array_equal(x, x2)
    assert not caplog.records  # a warm cache is read silently
    data_mod._load_canonical.cache_clear()


def test_digits_is_image_data_with_preprocessing() -> None:
    ds = load_dataset("digits")
    assert ds.x.shape == (1797, 1, 8, 8) and float(ds.x.max()) == 16.0
    assert ds.preprocessing == {"kind": "image", "mode": "L", "size": [8, 8],
                                "scale": 16.0 / 255.0, "layout": "NCHW"}
    x, y, info = load_split("digits:test")
    assert info["n"] == len(y) == len(x) and info["split"] == "test"


def test_npz_round_trip_and_errors(tmp_path) -> None:
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x=rng.normal(size=(80, 5)), y=np.repeat(np.arange(4), 20),
             class_names=np.array(["a", "b", "c", "d"]))
    ds = load_dataset(f"npz:{p}")
    assert ds.class_names == ["a", "b", "c", "d"] and ds.x.dtype == np.float32
    x, y, info = load_split(f"npz:{p}:test")
    assert len(x) == 12 and info["split"] == "test"
    np.savez(tmp_path / "noy.npz", x=np.zeros((4, 2)))
    with pytest.raises(DataError, match="must contain arrays 'x' and 'y'"):
        load_dataset(f"npz:{tmp_path / 'noy.npz'}")
    np.savez(tmp_path / "neg.npz", x=np.zeros((10, 2)), y=-np.ones(10, int))
    with pytest.raises(DataError, match="non-negative integer"):
        load_dataset(f"npz:{tmp_path / 'neg.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


def test_imagefolder(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (12, 9, 3), dtype=np.uint8)).save(
                tmp_path / c / f"{i}.png")
    ds = load_dataset(f"imagefolder:{tmp_path}?size=16&mode=L")
    assert ds.x.shape == (20, 1, 16, 16) and ds.class_names == ["cat", "dog"]
    assert ds.preprocessing["mode"] == "L" and ds.preprocessing["size"] == [16, 16]
    (tmp_path / "cat" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read image"):
        load_dataset(f"imagefolder:{tmp_path}?size=16&mode=RGB")


def _write_cifar10(root, n_per_batch: int = 20) -> None:
    rng = np.random.default_rng(0)
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in np.arange(n_per_batch) % 10]}
        (root / name).write_bytes(pickle.dumps(d, protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol=2))


def test_cifar10_batches_keep_official_test_split(tmp_path) -> None:
    _write_cifar10(tmp_path / "cifar-10-batches-py")
    ds = load_dataset(f"cifar10:{tmp_path}")
    assert ds.x.shape == (120, 3, 32, 32) and ds.class_names[3] == "c3"
    assert np.array_equal(ds.splits["test"], np.arange(100, 120))
    assert len(np.unique(np.concatenate(list(ds.splits.values())))) == 120


def test_cifar_refuses_a_malicious_pickle(tmp_path) -> None:
    root = tmp_path / "c"
    _write_cifar10(root)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (root / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset(f"cifar10:{root}")
