"""The library metrics layer shared by the group and the predict level."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bids_amyloid.evaluation import binary_metrics, metrics_row


def test_precision_and_npv_with_an_empty_denominator_are_nan() -> None:
    # every probability below 0.5: nothing predicted positive (tp + fp = 0)
    none_positive = binary_metrics([1, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert math.isnan(none_positive["precision"])
    assert none_positive["npv"] == pytest.approx(2 / 3)  # tn 2 of tn + fn 3
    # every probability above 0.5: nothing predicted negative (tn + fn = 0)
    none_negative = binary_metrics([1, 0, 0], [0.6, 0.7, 0.8], 0.5)
    assert math.isnan(none_negative["npv"])
    assert none_negative["precision"] == pytest.approx(1 / 3)  # tp 1 of tp + fp 3
    # the other metrics keep their values: recall 0 of 1 positive, specificity 2/2, F1 0
    assert none_positive["recall"] == 0.0 and none_positive["specificity"] == 1.0
    assert none_positive["f1"] == 0.0


def test_metrics_row_columns_and_undefined_values() -> None:
    row = metrics_row([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], ["a", "a", "b", "c"], tau=0.35,
                      n_boot=0)
    assert list(row)[:7] == ["n", "n_subjects", "n_positive", "auc", "auc_ci_low",
                             "auc_ci_high", "threshold"]
    assert (row["n"], row["n_subjects"], row["n_positive"]) == (4, 3, 2)
    assert row["auc"] == pytest.approx(0.75)  # 3 of the 4 positive–negative pairs ordered
    assert math.isnan(row["precision@0.5"])  # nothing above 0.5
    assert row["precision@tau"] == 1.0 and row["npv@tau"] == pytest.approx(2 / 3)


# ten positives and ten negatives, every probability distinct (counted by hand below)
POSITIVES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.3, 0.2, 0.05]
NEGATIVES = [0.85, 0.55, 0.35, 0.25, 0.22, 0.15, 0.12, 0.1, 0.08, 0.02]
LABELS = [1] * 10 + [0] * 10
PROBS = POSITIVES + NEGATIVES


def test_rule_out_threshold_keeps_sensitivity_on_validation() -> None:
    from bids_amyloid.evaluation import rule_out_threshold

    thr = rule_out_threshold(LABELS, PROBS, 0.90)
    # 9 of 10 positives must stay above: the 9th highest is 0.2; the next lower probability
    # of any sample is the negative 0.15, so the threshold is halfway: 0.175
    assert thr == pytest.approx(0.175)
    assert sum(p > thr for p in POSITIVES) == 9            # sensitivity 9/10 ≥ 0.90
    assert sum(p <= thr for p in NEGATIVES) == 5            # 0.15 0.12 0.1 0.08 0.02 ruled out
    # any threshold at or above the next sample up (0.2) would lose a positive: 8/10 < 0.90
    assert sum(p > 0.2 for p in POSITIVES) == 8


def test_rule_in_threshold_keeps_specificity_on_validation() -> None:
    from bids_amyloid.evaluation import rule_in_threshold

    thr = rule_in_threshold(LABELS, PROBS, 0.90)
    # 9 of 10 negatives must be at or below: the 9th lowest is 0.55; the next higher
    # probability is the positive 0.6, so the threshold is 0.575
    assert thr == pytest.approx(0.575)
    assert sum(p <= thr for p in NEGATIVES) == 9            # specificity 9/10 ≥ 0.90
    assert sum(p > thr for p in POSITIVES) == 4             # 0.9 0.8 0.7 0.6: sensitivity 0.4
    # the next sample down (0.55) as threshold would leave 0.85 and 0.55 above: 8/10 < 0.90
    assert sum(p <= 0.55 - 1e-9 for p in NEGATIVES) == 8


@pytest.mark.parametrize("seed", range(5))
def test_operating_points_meet_their_constraints_on_random_validation_sets(seed: int) -> None:
    from bids_amyloid.evaluation import operating_points

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 37)
    probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0.001, 0.999)
    points = operating_points(labels, probs, 0.4, 0.85, 0.95)
    pos, neg = probs[labels == 1], probs[labels == 0]
    # counted directly: positives above / negatives at or below each threshold
    assert np.sum(pos > points["rule_out"]) >= 0.85 * pos.size
    assert np.sum(neg <= points["rule_in"]) >= 0.95 * neg.size
    # and each is the most useful such threshold: one more sample across breaks the constraint
    assert np.sum(pos > pos[pos > points["rule_out"]].min()) < 0.85 * pos.size
    assert np.sum(neg <= neg[neg <= points["rule_in"]].max() - 1e-12) < 0.95 * neg.size


def test_metrics_row_reports_every_operating_point_with_cis() -> None:
    from bids_amyloid.evaluation import operating_points

    subjects = [f"s{k}" for k in range(20)]
    points = operating_points(LABELS, PROBS, 0.5, 0.90, 0.90)
    row = metrics_row(LABELS, PROBS, subjects, tau=0.5, n_boot=200, seed=1, points=points)
    # hand counts at the rule-out point 0.175: predicted negative are the five negatives
    # below it and the positive 0.05
    assert row["sensitivity@rule_out"] == pytest.approx(0.9)
    assert row["specificity@rule_out"] == pytest.approx(0.5)
    assert row["npv@rule_out"] == pytest.approx(5 / 6)
    assert row["ppv@rule_out"] == pytest.approx(9 / 14)
    assert row["pet_avoided@rule_out"] == pytest.approx(6 / 20)
    # rule-in point 0.575: above it 0.9 0.8 0.7 0.6 and the negative 0.85
    assert row["ppv@rule_in"] == pytest.approx(4 / 5)
    assert row["specificity@rule_in"] == pytest.approx(0.9)
    for point in ("0.5", "tau", "rule_out", "rule_in"):
        for key in ("sensitivity", "specificity", "ppv", "npv"):
            low, high = row[f"{key}@{point}_ci_low"], row[f"{key}@{point}_ci_high"]
            assert low <= row[f"{key}@{point}"] <= high and low < high
    assert "pet_avoided@rule_in" not in row
    assert math.isnan(row["brier_calibrated"])                  # no calibrated probabilities
    assert row["brier_raw"] == pytest.approx(
        (sum((1 - p) ** 2 for p in POSITIVES) + sum(p ** 2 for p in NEGATIVES)) / 20)
