"""training/calibration.py: ECE and temperature scaling on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from training import calibration


def calibrated_set(count: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels drawn *from* those probabilities: calibrated by construction."""
    rng = np.random.default_rng(seed)
    probabilities = softmax(rng.normal(0, 2.0, (count, classes)), axis=1)
    labels = np.array([rng.choice(classes, p=p) for p in probabilities])
    return probabilities, labels


def test_ece_of_a_calibrated_set_is_near_zero():
    probabilities, labels = calibrated_set(20_000, 5, seed=0)
    assert calibration.expected_calibration_error(probabilities, labels) < 0.015


def test_ece_of_an_overconfident_set_is_its_gap():
    # Every answer says 90% but only 60% are right: one filled bin, gap 0.3.
    probabilities = np.tile([0.9, 0.1], (10, 1))
    labels = np.array([0] * 6 + [1] * 4)
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(0.3)


def test_reliability_bins_are_equal_width_and_count_everything():
    probabilities = np.array([[1.0, 0.0], [0.5, 0.5], [0.52, 0.48], [0.99, 0.01]])
    table = calibration.reliability(probabilities, np.array([0, 1, 0, 0]), bins=15)
    assert np.allclose(np.diff(table["edges"]), 1 / 15)
    assert table["count"].sum() == 4
    assert table["count"][14] == 2  # 1.0 lands in the last bin, with 0.99
    assert table["count"][7] == 2  # 0.5 and 0.52 lie in [7/15, 8/15)


def test_a_known_temperature_is_recovered():
    # Labels drawn from softmax(z); the model reports 2.5 * z: the best temperature is 2.5.
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 1.5, (20_000, 10))
    labels = np.array([rng.choice(10, p=p) for p in softmax(true_logits, axis=1)])
    assert calibration.fit_temperature(2.5 * true_logits, labels) == pytest.approx(2.5, rel=0.05)


def test_temperature_scaling_lowers_ece_and_keeps_the_answers():
    rng = np.random.default_rng(2)
    true_logits = rng.normal(0, 1.5, (5_000, 10))
    labels = np.array([rng.choice(10, p=p) for p in softmax(true_logits, axis=1)])
    logits = 3 * true_logits
    temperature = calibration.fit_temperature(logits, labels)
    before = calibration.scaled_probabilities(logits)
    after = calibration.scaled_probabilities(logits, temperature)
    assert np.array_equal(before.argmax(1), after.argmax(1))
    assert calibration.expected_calibration_error(after, labels) < calibration.expected_calibration_error(before, labels) / 3
