"""Evaluation metrics used by training: they live in :mod:`bids_amyloid.evaluation`.

Kept so the training modules' imports resolve; new code imports
:mod:`bids_amyloid.evaluation` directly.
"""

from bids_amyloid.evaluation import (
    METRIC_NAMES,
    auc,
    auc_with_ci,
    best_threshold,
    binary_metrics,
    evaluation_table,
    metrics_row,
)

__all__ = ["METRIC_NAMES", "auc", "auc_with_ci", "best_threshold", "binary_metrics",
           "evaluation_table", "metrics_row"]
