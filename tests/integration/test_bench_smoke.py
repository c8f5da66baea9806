"""`python -m bench` end to end with tiny durations: real wrk, real servers, real report files.

No timing is asserted: only that every stage ran, the report has its structure, and no request
failed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from server_support import make_version

from serve.server.runtime import OnnxModel, providers_for

ROOT = Path(__file__).resolve().parents[2]
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None,
                               reason="wrk is not installed (make sysdeps)")


def _bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _table(md: str, heading: str) -> list[list[str]]:
    """Rows (header first, separator dropped) of the first markdown table after ``heading``."""
    lines = md.split(heading, 1)[1].splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = []
    for ln in lines[first:]:
        if not ln.startswith("|"):
            break
        if not set(ln) <= set("|-"):
            rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


@needs_wrk
def test_bench_smoke_writes_report_with_zero_errors(tmp_path: Path) -> None:
    vdir = make_version(tmp_path / "repo", "clf", 1, seed=1)
    out = tmp_path / "docs" / "bench.md"
    r = _bench("--models", "default", "--default-model", str(vdir), "--duration", "1",
               "--concurrency", "1,32", "--endpoints", "v2-json", "--batch-sizes", "1,8",
               "--runtime-seconds", "0.05", "--out", str(out), "--workers", "1,2",
               "--record-args", "--max-inflight 100", "--overload", "--overload-duration", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    md = out.read_text()
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for heading in ("## Command", "## Machine and versions", "## Targets", "## Runtime ceiling",
                    "## HTTP under load", "## GPU"):
        assert heading in md
    assert "python -m bench --models default" in md and "wrk" in md
    runtime = _table(md, "## Runtime ceiling")
    assert runtime[0][:2] == ["model", "batch"]
    assert [row[1] for row in runtime[1:]] == ["1", "8"]
    assert all(float(row[4].replace(",", "")) > 0 for row in runtime[1:])
    load = _table(md, "## HTTP under load")
    header, rows = load[0], load[1:]
    assert header[:6] == ["model", "server", "threads", "workers", "endpoint", "concurrency"]
    got = {(row[1], row[2], row[3], row[5]) for row in rows}
    want = {("ceiling", t, "1", c) for t in ("1", "all") for c in ("1", "32")}
    want |= {("abstain", "auto", "1", c) for c in ("1", "32")}
    want |= {("abstain", "auto", "2", c) for c in ("32", "128")}
    want |= {("abstain+record", "auto", "1", "32")}
    assert got == want, got
    col = {name: i for i, name in enumerate(header)}
    for row in rows:
        assert row[col["errors"]] == "0", row
        assert float(row[col["req/s"]].replace(",", "")) > 0, row
        if row[1] == "abstain":   # batches were observed through /metrics
            assert float(row[col["mean batch"]]) >= 1.0, row
    targets = {t[0]: t[-1] for t in _table(md, "## Targets")[1:]}
    assert len(targets) == 5, targets
    assert targets["heavy model vs raw runtime"] == "not measured"      # no heavy model here
    assert sum(v in ("PASS", "MISS") for v in targets.values()) == 4
    assert any("p99" in name for name in targets) and any("recording" in n for n in targets)
    workers = _table(md, "## Worker processes")
    assert workers[0] == ["concurrency", "1 worker req/s", "workers", "req/s", "ratio"]
    overload = _table(md, "## Overload")
    assert [(r[0], r[2]) for r in overload[1:]] == [
        (s, f"{m}×") for s in ("1", "64", "64 --overload-queue-ms 5") for m in (1, 2, 4, 16)]
    section = md.split("## Overload", 1)[1]
    checks = [ln for ln in section.splitlines() if ln.endswith(("| PASS |", "| MISS |"))]
    assert len(checks) >= 12, section
    assert "GPU figures are still to be measured" in md


def test_bench_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    r = _bench("--models", "default", "--default-model", str(tmp_path / "nothing"),
               "--duration", "1", "--out", str(tmp_path / "b.md"))
    assert r.returncode == 2
    assert "no default model" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b.md").exists()
    r = _bench("--duration", "0.5", "--out", str(tmp_path / "b.md"))
    assert r.returncode == 2 and "--duration" in r.stderr


def test_gpu_path_falls_back_to_cpu_without_cuda(tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback is not what runs here")
    vdir = make_version(tmp_path / "repo", "clf", 1, seed=2)
    m = OnnxModel(vdir / "model.onnx", device="auto")
    assert m.providers == ["CPUExecutionProvider"] and m.provider == "CPUExecutionProvider"
    assert providers_for("auto") == ["CPUExecutionProvider"]
    m.warmup((1, 8))
    assert m.run(np.zeros((3, 8), np.float32)).shape == (3, 4)
    r = _bench("--device", "cuda", "--out", str(tmp_path / "b.md"))
    assert r.returncode == 2
    assert "CUDAExecutionProvider" in r.stderr and "--device cpu" in r.stderr
    assert "Traceback" not in r.stderr


def test_gpu_check_says_in_one_line_that_there_is_no_cuda(tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: make gpu-check runs for real here")
    r = subprocess.run([sys.executable, "bench/gpu_check.py"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "no CUDA provider" in r.stderr and "Traceback" not in r.stderr


def test_bench_servers_drop_stray_abstain_settings_but_keep_tensorrt(monkeypatch) -> None:
    from bench.servers import child_env

    monkeypatch.setenv("ABSTAIN_API_KEY", "secret")
    monkeypatch.setenv("ABSTAIN_TENSORRT", "1")
    env = child_env({})
    assert "ABSTAIN_API_KEY" not in env and env["ABSTAIN_TENSORRT"] == "1"
