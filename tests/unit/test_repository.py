"""Repository discovery, name validation, version lookup and refusal of broken versions."""

from __future__ import annotations

import asyncio

import pytest
from server_support import make_version, write_calibration

from serve.monitoring.monitor import Monitor
from serve.server.repository import ModelNotFound, ModelRepository, scan, valid_name
from serve.server.settings import ModelSource


@pytest.mark.parametrize(("name", "ok"), [("clf", True), ("mnist1d-maxsup", True), ("a.b_c", True),
                                          ("..", False), ("a..b", False), ("", False),
                                          ("../etc", False), ("a/b", False), (".hidden", False)])
def test_names_are_validated(name, ok):
    assert valid_name(name) is ok


def test_scan_finds_only_valid_names_and_positive_versions(tmp_path):
    for p in ("clf/1", "clf/2", "clf/0", "clf/01", "clf/x", "bad name/1", ".git/1"):
        (tmp_path / p).mkdir(parents=True)
    assert sorted(scan(tmp_path)) == [("clf", 1), ("clf", 2)]


def test_load_get_and_refuse(tmp_path):
    make_version(tmp_path, "clf", 1, seed=1)
    make_version(tmp_path, "clf", 3, seed=3)
    make_version(tmp_path, "clf", 5, seed=5)
    write_calibration(tmp_path / "clf" / "5", sha="0" * 64)          # wrong hash
    (tmp_path / "clf" / "7").mkdir()                                   # no files at all

    async def main():
        repo = ModelRepository(ModelSource(tmp_path, device="cpu", warmup_batch_sizes=(1,)),
                               monitor=Monitor())
        report = await repo.reload()
        again = await repo.reload()
        return repo, report, again

    repo, report, again = asyncio.run(main())
    assert report.loaded == ["clf/1", "clf/3"]
    assert set(report.failed) == {"clf/5", "clf/7"}
    assert "Re-run `abstain calibrate`" in report.failed["clf/5"]
    assert again.loaded == [] and "unchanged since it was refused" in again.failed["clf/5"]
    assert repo.get("clf").version == 3 and repo.get("clf", "1").version == 1
    with pytest.raises(ModelNotFound, match="versions: 1, 3"):
        repo.get("clf", "5")
    with pytest.raises(ModelNotFound, match="serving: clf"):
        repo.get("other")
    summary = repo.get("clf").summary()
    assert summary["provider"] == "CPUExecutionProvider"
    assert summary["calibration"]["threshold"] == 0.6


def test_a_file_symlinked_out_of_the_root_skips_its_version(tmp_path):
    root, outside = tmp_path / "repo", tmp_path / "elsewhere"
    make_version(root, "clf", 1, seed=1)
    make_version(root, "clf", 2, seed=2)
    outside.mkdir()
    (outside / "probe.npz").write_bytes(b"secret")
    (root / "clf" / "2" / "probe.npz").symlink_to(outside / "probe.npz")
    assert sorted(scan(root)) == [("clf", 1)]
    assert sorted(scan(root, follow_symlinks=True)) == [("clf", 1), ("clf", 2)]
