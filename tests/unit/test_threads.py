"""``--intra-op-threads auto``: batches on the measured-faster session, a request alone on all cores."""

from __future__ import annotations

import time

import numpy as np
import pytest

from serve.server import threads


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


def _pick(one: dict[int, float], all_: dict[int, float]) -> tuple[threads.Sessions, dict]:
    sessions = {1: _Timed(one), 0: _Timed(all_)}
    return threads.pick_threads(lambda n: sessions[n], "auto", (1, 8)), sessions


def test_one_thread_for_batches_when_faster_all_cores_alone():
    got, s = _pick({1: 200, 8: 400}, {1: 300, 8: 1600})
    assert got.batch is s[1] and got.alone is s[0] and got.note == "1, alone: all (auto)"


def test_one_session_when_all_cores_are_faster_for_batches():
    got, s = _pick({1: 900, 8: 3000}, {1: 300, 8: 1000})
    assert got.batch is got.alone is s[0] and got.note == "all (auto)"


def test_relative_cost_is_summed_over_sizes():
    # 1 thread: 1.0 + 1.5 = 2.5; all cores: 2.0 + 1.0 = 3.0 → one thread for batches
    got, s = _pick({1: 300, 8: 1500}, {1: 600, 8: 1000})
    assert got.batch is s[1]


def test_explicit_setting_is_one_session_as_is():
    sessions = {2: _Timed({}), 0: _Timed({})}
    got = threads.pick_threads(lambda n: sessions[n], 2)
    assert got.batch is got.alone is sessions[2] and got.note == "2"
    assert threads.pick_threads(lambda n: sessions[n], "0").note == "default"


def test_one_core_machine_has_one_session(monkeypatch):
    monkeypatch.setattr(threads, "candidates", lambda: [1])
    made = []
    got = threads.pick_threads(lambda n: made.append(n) or _Timed({}), "auto")
    assert made == [1] and got.batch is got.alone
