"""Calibration: Platt scaling recovers a known miscalibration and lowers the Brier score."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bids_amyloid.calibration import (
    PlattScaling,
    brier_score,
    expected_calibration_error,
    fit_platt,
    reliability_bins,
)

# the generator: true logit z ~ N(0, 1.5²), label ~ Bernoulli(sigmoid(z)); the model reports
# TEMPERATURE·z + SHIFT (over-confident, shifted as after class-balanced sampling), so the
# map back to the truth is slope 1/TEMPERATURE, intercept −SHIFT/TEMPERATURE
TEMPERATURE, SHIFT = 3.0, 1.2


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model logits, labels, true probabilities)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    truth = sigmoid(z)
    labels = (rng.random(n) < truth).astype(int)
    return TEMPERATURE * z + SHIFT, labels, truth


def test_platt_recovers_the_generators_miscalibration() -> None:
    logits, labels, _ = draw(20_000, seed=0)
    fit = fit_platt(logits, labels)
    assert fit.slope == pytest.approx(1 / TEMPERATURE, abs=0.02)
    assert fit.intercept == pytest.approx(-SHIFT / TEMPERATURE, abs=0.05)


@pytest.mark.parametrize("n_val", [60, 400])
def test_calibration_lowers_brier_and_ece_on_held_out_data(n_val: int) -> None:
    val_logits, val_labels, _ = draw(n_val, seed=1)
    test_logits, test_labels, truth = draw(20_000, seed=2)
    raw = sigmoid(test_logits)
    calibrated = fit_platt(val_logits, val_labels).apply_logits(test_logits)
    before, after = brier_score(test_labels, raw), brier_score(test_labels, calibrated)
    best = brier_score(test_labels, truth)  # the generator's own probabilities
    assert after < before - 0.02
    assert after == pytest.approx(best, abs=0.01 if n_val < 100 else 0.003)
    assert expected_calibration_error(test_labels, calibrated) < 0.5 * \
        expected_calibration_error(test_labels, raw)
    # monotone map: the ranking, hence AUC and every threshold decision, is unchanged
    assert np.array_equal(np.argsort(raw, kind="stable"), np.argsort(calibrated, kind="stable"))


def test_apply_on_probabilities_equals_apply_on_logits() -> None:
    fit = PlattScaling(0.4, -0.3, 10)
    logits = np.array([-4.0, -0.5, 0.0, 2.0, 6.0])
    assert np.allclose(fit.apply(sigmoid(logits)), sigmoid(0.4 * logits - 0.3))


def test_logits_without_signal_give_the_prevalence(caplog: pytest.LogCaptureFixture) -> None:
    logits, labels, _ = draw(500, seed=3)
    with caplog.at_level(logging.WARNING):
        fit = fit_platt(-logits, labels)  # reversed ranking: the slope stays at its bound 0
    assert fit.slope == 0.0
    n_pos = labels.sum()
    # the constant minimising the log loss of Platt's smoothed targets is their mean
    expected = (n_pos * (n_pos + 1) / (n_pos + 2)
                + (len(labels) - n_pos) / (len(labels) - n_pos + 2)) / len(labels)
    assert fit.apply_logits(np.array([0.0]))[0] == pytest.approx(expected, abs=1e-4)
    assert any("no positive signal" in r.getMessage() for r in caplog.records)


def test_model_file_entry_round_trips_and_bad_entries_are_refused() -> None:
    fit = PlattScaling(0.5, -0.2, 40)
    meta = {"calibration": fit.to_meta("validation")}
    assert PlattScaling.from_meta(meta) == fit
    assert PlattScaling.from_meta({}) is None
    with pytest.raises(ValueError, match="unknown calibration"):
        PlattScaling.from_meta({"calibration": {"method": "isotonic"}})
    with pytest.raises(ValueError, match="finite"):
        PlattScaling.from_meta({"calibration": {"method": "platt", "slope": float("nan"),
                                                "intercept": 0.0}})


def test_fit_refuses_bad_inputs() -> None:
    with pytest.raises(ValueError, match="≥ 2 samples"):
        fit_platt([0.3], [1])
    with pytest.raises(ValueError, match="0/1 labels"):
        fit_platt([0.1, 0.2], [0, 2])


def test_reliability_bins_by_hand() -> None:
    labels = [0, 0, 1, 1, 1]
    probs = [0.05, 0.15, 0.12, 0.95, 0.91]
    bins = reliability_bins(labels, probs)
    assert bins["n"].tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins.loc[1, "mean_probability"] == pytest.approx(0.135)
    assert bins.loc[1, "fraction_positive"] == pytest.approx(0.5)
    # ECE: (1·|0 − 0.05| + 2·|0.5 − 0.135| + 2·|1 − 0.93|) / 5
    assert expected_calibration_error(labels, probs) == pytest.approx(
        (0.05 + 2 * 0.365 + 2 * 0.07) / 5)
