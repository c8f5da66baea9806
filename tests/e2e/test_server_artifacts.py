"""Hostile or broken files in the model repository: refused one version at a time, never half-loaded,
never served beside the wrong calibration."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_support import (
    build_onnx,
    make_version,
    running_server,
    server_process,
    write_calibration,
)

from serve.calibration.artifact import CalibrationError, load_calibration
from serve.server.model_version import load_version
from serve.server.runtime import sha256_file
from serve.server.settings import load_settings

V = {"instances": [[0.5] * 8]}
ADMIN = {"authorization": "Bearer adm"}

BAD_FIELDS = [
    ("threshold", "0.3"), ("model_sha256", 12345), ("threshold", float("nan")),
    ("score_quantiles", [0.1, float("nan"), 0.9]), ("score_params", {"p": float("inf")}),
    ("coverage", 1.5), ("n_cert", 2.5), ("temperature", 0), ("method", "magic"),
    ("score", "no-such-score"), ("candidates", {"msp": "x"}), ("delta", None),
]


def _mutate(vdir: Path, key: str, value: object) -> None:
    path = vdir / "calibration.json"
    raw = json.loads(path.read_text())
    if value is ...:
        raw.pop(key)
    else:
        raw[key] = value
    path.write_text(json.dumps(raw))             # allow_nan: writes NaN / Infinity literals


@pytest.mark.parametrize(("key", "value"), [*BAD_FIELDS, ("risk", ...), ("threshold", 1e999)])
def test_a_malformed_calibration_refuses_its_version_only(tmp_path, caplog, key, value):
    make_version(tmp_path, "clf", 1, seed=1)
    bad = make_version(tmp_path, "clf", 2, seed=2)
    make_version(tmp_path, "other", 1, seed=3)
    raw = (bad / "calibration.json").read_text()
    if value == 1e999:
        (bad / "calibration.json").write_text(raw.replace('"threshold": 0.6', '"threshold": 1e999'))
    else:
        _mutate(bad, key, value)
    s = load_settings(model_repository=tmp_path, poll_interval_s=0, warmup_batch_sizes=(1,),
                      admin_key="adm")
    caplog.set_level(logging.ERROR, logger="serve.server.repository")
    with running_server(s) as (url, _), httpx.Client(base_url=url) as c:
        assert c.post("/v1/models/clf/predict", json=V).json()["model_version"] == "1"
        assert c.post("/v1/models/other/predict", json=V).status_code == 200
        assert c.get("/v1/models").status_code == 200
        assert c.get("/v2/models/clf").json()["versions"] == ["1"]
        r = c.post("/v1/admin/reload", headers=ADMIN)
        assert r.status_code == 200 and "clf/2" in r.json()["failed"], r.text
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1 and "refused clf/2" in errors[0].getMessage(), \
        [e.getMessage() for e in errors]
    assert errors[0].exc_info is None                        # one line, no traceback


def test_serve_starts_beside_a_broken_version(tmp_path):
    make_version(tmp_path, "clf", 1, seed=1)
    _mutate(make_version(tmp_path, "clf", 2, seed=2), "threshold", "0.3")
    with server_process(tmp_path, "--poll-interval-s", "0") as (url, _):
        r = httpx.post(url + "/v1/models/clf/predict", json=V)
        assert r.status_code == 200 and r.json()["model_version"] == "1"


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(key=st.sampled_from(["threshold", "score", "temperature", "score_quantiles", "score_params",
                            "coverage", "n_tune", "method", "model_sha256", "data", "candidates",
                            "delta", "risk_upper_bound", "schema_version", "probe_sha256"]),
       value=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() |
                          st.text(max_size=8), lambda v: st.lists(v, max_size=3) |
                          st.dictionaries(st.text(max_size=4), v, max_size=3), max_leaves=6))
def _fuzz(vdir: Path, key: str, value: object) -> None:
    good = (vdir / "good.json").read_text()
    raw = json.loads(good)
    raw[key] = value
    (vdir / "calibration.json").write_text(json.dumps(raw))
    try:
        load_calibration(vdir, sha256_file(vdir / "model.onnx"))
    except CalibrationError as err:
        assert "\n" not in str(err) and "Re-run" in str(err)


def test_calibration_fuzzing_is_refused_with_one_line_or_loaded(tmp_path):
    vdir = make_version(tmp_path, "clf", 1)
    shutil.copy(vdir / "calibration.json", vdir / "good.json")
    _fuzz(vdir)


def test_a_rename_race_never_pairs_a_model_with_another_calibration(tmp_path):
    """Two models and their calibrations renamed into place in turn while versions load: every
    loaded version's session computes what the model its calibration names computes."""
    vdir = tmp_path / "clf" / "1"
    src = {}
    for tag, seed in (("a", 1), ("b", 2)):
        build_onnx(tmp_path / tag / "model.onnx", seed=seed)
        write_calibration(tmp_path / tag)
        src[tag] = (tmp_path / tag / "model.onnx", json.loads((tmp_path / tag / "calibration.json")
                                                             .read_text())["model_sha256"])
    vdir.mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "model.onnx", vdir / "model.onnx")
    shutil.copy(tmp_path / "a" / "calibration.json", vdir / "calibration.json")
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    expected = {sha: load_version(path.parent, "ref", 1, "cpu", 1).model.run(x)
                for path, sha in src.values()}
    stop = threading.Event()

    def swapper() -> None:
        i = 0
        while not stop.is_set():
            tag = "ab"[i % 2]
            for name in ("model.onnx", "calibration.json"):
                tmp = vdir / f".{name}.tmp"
                shutil.copy(tmp_path / tag / name, tmp)
                os.replace(tmp, vdir / name)
            i += 1

    t = threading.Thread(target=swapper)
    t.start()
    loaded = refused = 0
    deadline = time.monotonic() + 8
    try:
        while time.monotonic() < deadline and loaded < 150:
            try:
                mv = load_version(vdir, "clf", 1, "cpu", 1)
            except CalibrationError:
                refused += 1                     # model and calibration from different pairs
                continue
            loaded += 1
            assert mv.model.sha256 == mv.calibration.model_sha256
            np.testing.assert_array_equal(mv.model.run(x), expected[mv.calibration.model_sha256])
    finally:
        stop.set()
        t.join()
    assert loaded >= 20, (loaded, refused)


def test_symlinks_out_of_the_repository_are_refused_unless_allowed(tmp_path):
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    make_version(repo, "clf", 1, seed=1)
    make_version(outside, "clf", 7, seed=2)
    (repo / "clf" / "2").symlink_to(outside / "clf" / "7", target_is_directory=True)
    for follow, versions in ((False, ["1"]), (True, ["1", "2"])):
        s = load_settings(model_repository=repo, poll_interval_s=0, warmup_batch_sizes=(1,),
                          follow_symlinks=follow)
        with running_server(s) as (url, _):
            assert httpx.get(url + "/v2/models/clf").json()["versions"] == versions


def test_a_threshold_outside_the_certified_scores_is_warned_about(tmp_path, caplog):
    vdir = make_version(tmp_path, "clf", 1, threshold=1e300)
    caplog.set_level(logging.WARNING, logger="serve.server.model_version")
    mv = load_version(vdir, "clf", 1, "cpu", 1)
    assert mv.calibration.threshold == 1e300
    assert any("outside the certification scores' range" in r.getMessage() and
               "defers (almost) everything" in r.getMessage() for r in caplog.records)
