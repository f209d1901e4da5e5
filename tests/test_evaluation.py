"""The library metrics layer shared by the group and the predict level."""

from __future__ import annotations

import math

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
