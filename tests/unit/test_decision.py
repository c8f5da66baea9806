"""The decision rule: the score (at its own temperature) decides; the probabilities, at the
calibration's probability temperature, only report. And calibration.json's optional
``probability_temperature``: absent in files made before it, refused when not a number > 0."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from serve.calibration.artifact import (
    FILENAME,
    CalibrationError,
    load_calibration,
    new_calibration,
    save_calibration,
)
from serve.decision import DecisionRule
from serve.scores import create_score


def _cal(score: str = "msp", temperature: float = 1.0, probability_temperature=0.35,
         threshold: float = 0.6):
    return new_calibration(
        model_sha256="ab" * 32, score=score, temperature=temperature,
        probability_temperature=probability_temperature, threshold=threshold, target_risk=0.01,
        delta=0.05, method="ltt", n_tune=900, n_cert=3000, coverage=0.9, risk=0.005,
        risk_upper_bound=0.008, data_fingerprint="f" * 64)


def _softmax(z: np.ndarray, t: float) -> np.ndarray:
    e = np.exp(z / t - (z / t).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(("score", "temperature", "threshold"),
                         [("msp", 1.0, 0.6), ("msp", 1.7, 0.4), ("pnorm:2", 1.0, 0.5),
                          ("energy", 0.8, 3.0)])
def test_probabilities_use_the_probability_temperature_and_the_score_does_not(
        score: str, temperature: float, threshold: float) -> None:
    z = np.random.default_rng(0).normal(size=(4000, 10)) * 3.0
    cal = _cal(score, temperature, 0.35, threshold)
    same = dataclasses.replace(cal, probability_temperature=None)      # probabilities at T
    d, d_same = DecisionRule(cal)(z, probabilities=True), DecisionRule(same)(z, probabilities=True)
    # The decision is the score's alone: equal whatever the probability temperature.
    assert np.array_equal(d.score, d_same.score) and np.array_equal(d.reject, d_same.reject)
    assert np.array_equal(d.score, create_score(score, temperature)(z))
    assert 0 < d.reject.sum() < len(z)
    np.testing.assert_allclose(d.probabilities, _softmax(z, 0.35), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(d_same.probabilities, _softmax(z, temperature), rtol=1e-12,
                               atol=1e-300)
    assert np.abs(d.probabilities - d_same.probabilities).max() > 0.1
    assert np.array_equal(DecisionRule(cal).probabilities(z), d.probabilities)
    if score == "msp" and temperature == 1.0:     # the shipped model's case: MSP at T = 1 scores,
        assert not np.allclose(d.score, d.probabilities.max(axis=1))   # a sharper T reports


def test_a_calibration_without_the_field_loads_with_the_score_temperature(tmp_path) -> None:
    """A file written before ``probability_temperature`` existed: loads, reports probabilities at
    ``temperature``, and keeps its hash (the feedback loop keys its epochs by it)."""
    raw = json.loads(_cal(temperature=1.3).to_json())
    del raw["probability_temperature"]
    old_text = json.dumps(raw, indent=2, sort_keys=True) + "\n"
    (tmp_path / FILENAME).write_text(old_text)
    cal = load_calibration(tmp_path, "ab" * 32)
    assert cal.probability_temperature is None and cal.probs_temperature == 1.3
    assert cal.to_json() == old_text                              # same canonical JSON, same hash
    z = np.random.default_rng(1).normal(size=(50, 10))
    np.testing.assert_allclose(DecisionRule(cal)(z, probabilities=True).probabilities,
                               _softmax(z, 1.3), rtol=1e-12)
    raw["probability_temperature"] = None                         # null reads as absent
    (tmp_path / FILENAME).write_text(json.dumps(raw))
    assert load_calibration(tmp_path).probs_temperature == 1.3


def test_the_field_round_trips_and_changes_the_hash(tmp_path) -> None:
    cal = _cal(probability_temperature=0.35)
    save_calibration(cal, tmp_path)
    assert json.loads((tmp_path / FILENAME).read_text())["probability_temperature"] == 0.35
    back = load_calibration(tmp_path)
    assert back == cal and back.probs_temperature == 0.35 and back.temperature == 1.0
    assert back.sha256 != dataclasses.replace(cal, probability_temperature=None).sha256


@pytest.mark.parametrize("value", [0, -0.5, "0.35", True, [0.35], 1e999])
def test_a_bad_probability_temperature_is_refused_with_a_fix(tmp_path, value) -> None:
    text = _cal().to_json().replace('"probability_temperature": 0.35',
                                    f'"probability_temperature": {json.dumps(value)}'
                                    if value != 1e999 else '"probability_temperature": 1e999')
    (tmp_path / FILENAME).write_text(text)
    with pytest.raises(CalibrationError, match="probability_temperature|must be finite") as err:
        load_calibration(tmp_path)
    assert "Re-run `abstain calibrate`" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_new_calibration_refuses_a_bad_probability_temperature(value: float) -> None:
    with pytest.raises(CalibrationError, match="probability_temperature must be a finite number"):
        _cal(probability_temperature=value)
