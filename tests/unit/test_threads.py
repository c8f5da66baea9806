"""``--intra-op-threads auto``: one thread is kept only when clearly faster at every size."""

from __future__ import annotations

import time

import numpy as np
import pytest

from serve import threads


class _Timed:
    """A stand-in session whose run takes a fixed time per batch size (busy-waits, no sleep)."""

    provider = "CPUExecutionProvider"
    input_shape = (3,)
    input_dtype = np.dtype(np.float32)
    path = "fake.onnx"

    def __init__(self, us_per_batch: dict[int, float]) -> None:
        self.us = us_per_batch

    def run(self, x: np.ndarray) -> np.ndarray:
        end = time.perf_counter() + self.us[len(x)] * 1e-6
        while time.perf_counter() < end:
            pass
        return np.zeros((len(x), 2), np.float32)


@pytest.fixture(autouse=True)
def _two_cores(monkeypatch):
    monkeypatch.setattr(threads, "candidates", lambda: [1, 0])
    monkeypatch.setattr(threads, "BUDGET_S", 0.01)


def _pick(one: dict[int, float], all_: dict[int, float]) -> str:
    sessions = {1: _Timed(one), 0: _Timed(all_)}
    model, note = threads.pick_threads(lambda n: sessions[n], "auto", (1, 8))
    assert model is sessions[1 if note.startswith("1") else 0]
    return note


def test_one_thread_kept_when_clearly_faster_everywhere():
    assert _pick({1: 200, 8: 400}, {1: 800, 8: 1600}) == "1 (auto)"


def test_all_cores_when_one_thread_wins_only_a_little():
    # 1.2× faster back to back is within what serving's idle gaps give back to spinning workers
    assert _pick({1: 500, 8: 1000}, {1: 600, 8: 1200}) == "all (auto)"


def test_all_cores_when_one_thread_is_clearly_faster_at_one_size_only():
    assert _pick({1: 200, 8: 1000}, {1: 800, 8: 1100}) == "all (auto)"


def test_all_cores_when_faster():
    assert _pick({1: 900, 8: 3000}, {1: 300, 8: 1000}) == "all (auto)"


def test_explicit_setting_is_used_as_is():
    sessions = {2: _Timed({}), 0: _Timed({})}
    assert threads.pick_threads(lambda n: sessions[n], 2)[1] == "2"
    assert threads.pick_threads(lambda n: sessions[n], "0")[1] == "default"
