"""The cascade's batcher under concurrency (serve/server/cascade_batch.py), on the shipped mnist1d
cascade with real onnxruntime sessions and the server's own batchers, in one event loop.

Many requests at once take the batched path: a stage's finished requests are decided together
and their deferrals go to stage 2 as one submission per stage-1 batch. Every answer must still be
what the cascade's rules give each sample alone, stage 2 must see exactly the deferrals (beside its
own traffic), and a stage's failure must fail exactly the requests whose samples it held.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from serve.calibration.cascade_artifact import load_cascade_calibration, read_spec
from serve.decision import DecisionRule
from serve.errors import AbstainError
from serve.server.app import create_app
from serve.server.runtime import OnnxModel
from serve.server.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
pytestmark = pytest.mark.timeout(120)


def _inputs() -> np.ndarray:
    with np.load(MODELS / "mnist1d-maxsup" / "1" / "probe.npz") as f:
        return f["x"][:240].astype(np.float32)


def _expected(x: np.ndarray) -> dict[str, np.ndarray]:
    """Each sample's answer under the cascade's rules, computed without the server."""
    d = MODELS / "mnist1d-cascade" / "1"
    cal = load_cascade_calibration(d, read_spec(d))
    z1 = OnnxModel(MODELS / "mnist1d-mlp" / "1" / "model.onnx").run(x)
    z2 = OnnxModel(MODELS / "mnist1d-maxsup" / "1" / "model.onnx").run(x)
    d1, d2 = DecisionRule(cal.stages[0])(z1), DecisionRule(cal.stages[1])(z2)
    one = ~d1.reject
    return {"stage": np.where(one, 1, 2), "label": np.where(one, d1.label, d2.label),
            "score": np.where(one, d1.score, d2.score), "reject": np.where(one, False, d2.reject)}


def _sizes(n: int) -> list[int]:
    """Requests of 1, 2, 3 and 5 samples covering ``n`` samples."""
    out, cycle = [], [1, 2, 3, 5]
    while sum(out) < n:
        out.append(min(cycle[len(out) % 4], n - sum(out)))
    return out


async def _app():
    app = create_app(load_settings(model_repository=MODELS, poll_interval_s=0,
                                   warmup_batch_sizes=(1,)))
    await app.repo.reload()
    return app


def test_concurrent_requests_get_each_samples_own_answer_and_stage_two_only_deferrals() -> None:
    x = _inputs()
    want = _expected(x)
    deferred = int((want["stage"] == 2).sum())
    assert deferred > 20 and len(x) - deferred > 10           # both stages have work

    async def run():
        app = await _app()
        cascade = app.repo.get("mnist1d-cascade").batcher
        first, second = (app.repo.get(m).batcher for m in ("mnist1d-mlp", "mnist1d-maxsup"))
        recorded: list[tuple] = []
        cascade.on_record = lambda tags, sizes, out: recorded.append((tags, sizes, out))
        b1, b2 = (first.stats.runs, first.stats.requests), (second.stats.samples,
                                                            second.stats.requests)
        sizes = _sizes(len(x))
        starts = np.cumsum([0, *sizes])
        deadline = time.monotonic() + 30
        calls = [cascade.result(x[a:b], deadline, False, (f"r{i}", None))
                 for i, (a, b) in enumerate(zip(starts[:-1], starts[1:], strict=True))]
        own = [second.result(x[i:i + 1], deadline, False, (f"own{i}", None)) for i in range(20)]
        outs = await asyncio.gather(*calls, *own)
        runs1 = first.stats.runs - b1[0]
        submissions2 = second.stats.requests - b2[1] - len(own)
        seen2 = second.stats.samples - b2[0]
        stats = cascade.stats.as_dict()
        await app.repo.close()
        return sizes, starts, outs[:len(calls)], runs1, submissions2, seen2, stats, recorded

    sizes, starts, outs, runs1, submissions2, seen2, stats, recorded = asyncio.run(run())
    got = {k: np.concatenate([o[k] for o in outs]) for k in ("stage", "label", "score", "reject")}
    for k in ("stage", "label", "reject"):
        assert np.array_equal(got[k], want[k]), k
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5)
    assert all(len(o["logits"]) == n for o, n in zip(outs, sizes, strict=True))
    # Stage 2 saw its own 20 samples and exactly the deferrals, in at most one submission per
    # stage-1 batch (fewer than the requests that had a deferral).
    assert seen2 == 20 + deferred
    with_deferral = sum(bool((want["stage"][a:b] == 2).any())
                        for a, b in zip(starts[:-1], starts[1:], strict=True))
    assert 1 <= submissions2 <= runs1 < with_deferral
    assert stats["requests"] == len(sizes) and stats["samples"] == len(x)
    assert stats["stages"]["1"] == {"reached": len(x), "answered": len(x) - deferred}
    assert stats["stages"]["2"]["reached"] == deferred
    assert stats["deferred"] == int(want["reject"].sum())
    # The decision store's hook: every request once, its rows with its answer and its input.
    rows = {}
    for tags, ns, out in recorded:
        assert len(out["label"]) == len(out["input"]) == sum(ns)
        at = np.cumsum([0, *ns])
        for t, a, b in zip(tags, at[:-1], at[1:], strict=True):
            rows[t[0]] = {k: v[a:b] for k, v in out.items()}
    assert len(recorded) < len(sizes) and sorted(rows) == sorted(f"r{i}" for i in range(len(sizes)))
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
        assert np.array_equal(rows[f"r{i}"]["stage"], want["stage"][a:b])
        assert np.array_equal(rows[f"r{i}"]["input"], x[a:b])


def test_a_full_stage_two_fails_exactly_the_requests_with_a_deferral() -> None:
    x = _inputs()[:60]
    want = _expected(x)

    async def run():
        app = await _app()
        cascade = app.repo.get("mnist1d-cascade").batcher
        second = app.repo.get("mnist1d-maxsup").batcher
        second.reserve(10**9)                  # admitted requests hold all of stage 2's room
        deadline = time.monotonic() + 30
        outs = await asyncio.gather(*(cascade.result(x[i:i + 1], deadline, False, (f"r{i}", None))
                                      for i in range(len(x))), return_exceptions=True)
        second.unreserve(10**9)
        late = await asyncio.gather(cascade.result(x[:4], time.monotonic() - 1.0, False, ("l", None)),
                                    return_exceptions=True)
        await app.repo.close()
        return outs, late[0]

    outs, late = asyncio.run(run())
    for o, stage in zip(outs, want["stage"], strict=True):
        if stage == 1:
            assert isinstance(o, dict) and o["stage"].tolist() == [1]
        else:
            assert isinstance(o, AbstainError) and o.status == 503, o
            assert "samples queued" in str(o)
    assert isinstance(late, AbstainError) and late.status == 504 and "deadline" in str(late)
