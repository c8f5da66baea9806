"""A/B of two abstain checkouts on one machine: the same wrk points, interleaved, medians.

``python -m bench`` runs once per checkout, minutes apart, and on a shared 2-core VM two such
runs of the *same* code differed by 20% at c=32. Here both servers run side by side (idle while
the other is measured) and each round measures A then B (then B then A in the next round), so
slow stretches of the machine fall on both alike; the report is each point's median over the
rounds and the B/A ratio.

    python -m bench.ab --a /tmp/venv-base/bin/python:/work/wt-base:serve.cli \\
                       --b .venv/bin/python:.:serve.cli.main

A side is ``PYTHON:CHECKOUT:CLI_MODULE``: the interpreter, the checkout it serves from (its
working directory and ``PYTHONPATH``), and the module whose ``serve`` subcommand starts the server
(``serve.cli`` before serve/ was grouped by job, ``serve.cli.main`` after).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.harness import ModelInfo, request_bodies
from bench.servers import child_env, free_port, http, run_server
from bench.wrk import LoadResult, run_wrk, write_script

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def side_server(spec: str, repo: Path, log: Path, threads: str) -> Iterator[str]:
    """Start one side's ``abstain serve`` with ``python -m bench``'s flags; yields its URL.

    The child runs in its checkout with only that checkout on ``PYTHONPATH`` (``python -m``
    puts the working directory first on ``sys.path``: elsewhere it would import other code).
    """
    python, checkout, module = spec.split(":")
    checkout = str(Path(checkout).resolve())
    port = free_port()
    cmd = [python, "-m", module, "serve", str(repo.resolve()), "--host", "127.0.0.1",
           "--port", str(port), "--poll-interval-s", "0", "--log-level", "warning",
           "--intra-op-threads", threads, "--max-batch-size", "64"]
    env = {**child_env({}), "PYTHONPATH": checkout}
    base = f"http://127.0.0.1:{port}"
    with run_server(cmd, env, base + "/readyz", log, f"abstain serve ({checkout})",
                  cwd=Path(checkout)):
        yield base


def _threads(base: str) -> str:
    status, body = http(base + "/v1/models")
    models = json.loads(body).get("models", []) if status == 200 else []
    return ", ".join(f"{m['name']}: {m.get('threads', '?')}" for m in models) or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="PYTHON:CHECKOUT:CLI_MODULE (the baseline)")
    p.add_argument("--b", required=True, help="PYTHON:CHECKOUT:CLI_MODULE (the candidate)")
    p.add_argument("--repo", type=Path, default=ROOT / "models", help="model repository")
    p.add_argument("--model", default="mnist1d-maxsup")
    p.add_argument("--concurrency", default="1,32", help="comma-separated (default: 1,32)")
    p.add_argument("--rounds", type=int, default=10, help="even: each order (A then B, B then A) "
                   "equally often (default: 10)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    p.add_argument("--threads", default="auto", help="--intra-op-threads of both (default: auto; "
                   "auto measures its plan at start-up, so two servers may choose differently)")
    a = p.parse_args(argv)
    conc = [int(c) for c in a.concurrency.split(",")]
    info = ModelInfo("default", a.model, a.repo, (40,), "", 10)
    path, body, headers = request_bodies(info, "input")["v2-json"]
    work = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    script = write_script(work / "post.lua", body, headers)
    runs: dict[tuple[str, int], list[LoadResult]] = {}
    with side_server(a.a, a.repo, work / "a.log", a.threads) as url_a, \
            side_server(a.b, a.repo, work / "b.log", a.threads) as url_b:
        urls = {"A": url_a + path, "B": url_b + path}
        for side, base in (("A", url_a), ("B", url_b)):
            print(f"{side}: threads {_threads(base)}", flush=True)
        for url in urls.values():                                   # warm-up, not measured
            run_wrk(url, script, 32, 2)
        for r in range(a.rounds):
            order = ("A", "B") if r % 2 == 0 else ("B", "A")
            for c in conc:
                for side in order:
                    res = run_wrk(urls[side], script, c, a.duration)
                    runs.setdefault((side, c), []).append(res)
                    print(f"round {r + 1} {side} c={c}: {res.requests / res.duration_s:,.0f} req/s "
                          f"p50 {res.p50_ms:.3f} ms p99 {res.p99_ms:.2f} ms errors {res.errors}",
                          flush=True)
    print(f"\nover {a.rounds} rounds of {a.duration:g} s (v2 JSON, one sample, {a.model}); "
          "B/A: the geometric mean of each round's paired ratio [its range]")
    print("| point | A (median) | B (median) | B/A |\n|---|---|---|---|")
    for c in conc:
        for what, unit, get in (("req/s", "", lambda x: x.requests / x.duration_s),
                                ("p50", " ms", lambda x: x.p50_ms)):
            va, vb = [get(x) for x in runs[("A", c)]], [get(x) for x in runs[("B", c)]]
            ratios = [b / a_ for a_, b in zip(va, vb, strict=True)]
            gm = math.exp(statistics.fmean(math.log(r) for r in ratios))
            fmt = "{:,.0f}" if not unit else "{:.3f}"
            print(f"| c={c} {what} | {fmt.format(statistics.median(va))}{unit} | "
                  f"{fmt.format(statistics.median(vb))}{unit} | {gm:.3f} "
                  f"[{min(ratios):.2f}, {max(ratios):.2f}] |")
        errs = {s: sum(x.errors for x in runs[(s, c)]) for s in "AB"}
        if errs["A"] or errs["B"]:
            print(f"| c={c} errors | {errs['A']} | {errs['B']} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
