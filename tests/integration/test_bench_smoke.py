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

from serve.runtime import OnnxModel, providers_for

ROOT = Path(__file__).resolve().parents[2]
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None,
                               reason="wrk is not installed (make sysdeps)")


def _bench(*args: str, module: str = "bench", timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
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


def _num(cell: str) -> float:
    return float(cell.replace(",", ""))


@needs_wrk
def test_bench_smoke_writes_report_with_zero_errors(tmp_path: Path) -> None:
    vdir = make_version(tmp_path / "repo", "clf", 1, seed=1)
    out = tmp_path / "docs" / "bench.md"
    r = _bench("--models", "default", "--default-model", str(vdir), "--duration", "1",
               "--concurrency", "1,32", "--endpoints", "v2-json", "--batch-sizes", "1,8",
               "--runtime-seconds", "0.05", "--ceiling-threads", "1,0", "--workers", "1,2",
               "--scaling-concurrency", "32", "--record-args", "--max-queue-size 4096",
               "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    md = out.read_text()
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for heading in ("## Command", "## Machine and versions", "## Targets", "## Runtime ceiling",
                    "## HTTP ceiling (best", "## HTTP under load", "## Scaling with uvicorn workers",
                    "## Recording on vs off", "## GPU"):
        assert heading in md
    assert "python -m bench --models default" in md and "wrk" in md
    assert "intra-op threads for" in md                 # abstain's own auto choice, from its log
    runtime = _table(md, "## Runtime ceiling")
    assert runtime[0][:3] == ["model", "threads", "batch"]
    assert [(row[1], row[2]) for row in runtime[1:]] == [("1", "1"), ("1", "8"), ("all", "1"),
                                                         ("all", "8")]
    assert all(_num(row[5]) > 0 for row in runtime[1:])
    load = _table(md, "## HTTP under load")
    header, rows = load[0], load[1:]
    col = {name: i for i, name in enumerate(header)}
    got = {(row[col["server"]], row[col["threads"]], row[col["concurrency"]]) for row in rows}
    assert got == {("ceiling", t, c) for t in ("1", "all") for c in ("1", "32")} | {
        ("abstain", "auto", c) for c in ("1", "32")}
    for row in rows:
        assert row[col["errors"]] == "0", row
        assert _num(row[col["req/s"]]) > 0, row
        if row[col["server"]] == "abstain":   # batches were observed through /metrics
            assert float(row[col["mean batch"]]) >= 1.0, row
    # The ceiling per concurrency is the best thread setting's run.
    best = _table(md, "## HTTP ceiling (best")
    for row in best[1:]:
        runs = [_num(r[col["req/s"]]) for r in rows if r[col["server"]] == "ceiling"
                and r[col["concurrency"]] == row[1]]
        assert _num(row[3]) == max(runs), row
    scaling = _table(md, "## Scaling with uvicorn workers")
    assert [(row[0], row[1]) for row in scaling[1:]] == [("1", "32"), ("2", "32")]
    assert scaling[1][-1] == "1.00" and _num(scaling[2][-1]) > 0
    assert all(row[5] == "0" for row in scaling[1:])
    rec = _table(md, "## Recording on vs off")
    assert [row[0] for row in rec[1:]] == ["plain", "record"]
    assert "--max-queue-size 4096" in md
    targets = {t[0]: t for t in _table(md, "## Targets")[1:]}
    assert len(targets) == 5
    verdicts = [t[-1] for t in targets.values()]
    assert verdicts[3] == "not measured"                      # no heavy model in this run
    assert all(v in ("PASS", "MISS") for i, v in enumerate(verdicts) if i != 3)
    p99 = next(t for name, t in targets.items() if "p99" in name)
    a, c = (float(v) for v in p99[1].replace(" ms", "").split(" / "))
    assert abs(float(p99[3]) - a / c) < 0.01 + 0.01 * a / c
    assert "GPU figures" in md


@needs_wrk
def test_overload_section_replaces_its_own_section(tmp_path: Path) -> None:
    vdir = make_version(tmp_path / "repo", "clf", 1, seed=1)
    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n\n## Overload\n\nold\n\n## GPU\n\nkept\n")
    r = _bench("--default-model", str(vdir), "--duration", "1", "--connections", "32,128",
               "--sizes", "1,64", "--out", str(out), module="bench.overload")
    assert r.returncode == 0, r.stderr[-2000:]
    md = out.read_text()
    assert "old" not in md and md.count("## Overload") == 1 and md.endswith("## GPU\n\nkept\n")
    rows = _table(md, "## Overload")
    header = rows[0]
    assert "served p99 ms (server)" in header and "wrk p99 ms (all)" in header
    assert [(row[0], row[1], row[2]) for row in rows[1:]] == [
        ("1", "32", "1×"), ("1", "128", "4×"), ("64", "32", "1×"), ("64", "128", "4×")]
    col = {name: i for i, name in enumerate(header)}
    for row in rows[1:]:
        assert _num(row[col["goodput req/s"]]) > 0, row
        assert _num(row[col["RSS before MiB"]]) > 0 and _num(row[col["RSS after MiB"]]) > 0
        assert _num(row[col["drain ms"]]) > 0
    checks = md.split("### Done when (issue 16)", 1)[1].split("\n## ", 1)[0]
    assert checks.count("goodput") == 2                       # one 4× line per size
    assert checks.count("served p99") == 4 and checks.count("RSS") == 4
    assert all(ln.split(":")[0] in ("- PASS", "- MISS", "- not measured")
               for ln in checks.strip().splitlines())


def test_bench_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    r = _bench("--models", "default", "--default-model", str(tmp_path / "nothing"),
               "--duration", "1", "--workers", "0", "--out", str(tmp_path / "b.md"))
    assert r.returncode == 2
    assert "no default model" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b.md").exists()
    r = _bench("--duration", "0.5", "--out", str(tmp_path / "b.md"))
    assert r.returncode == 2 and "--duration" in r.stderr
    r = _bench("--duration", "1", "--default-model", str(tmp_path / "nothing"),
               module="bench.overload")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "--default-model" in r.stderr


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
