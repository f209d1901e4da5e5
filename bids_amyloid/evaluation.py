"""Evaluation: the F1-maximising threshold τ, binary metrics, AUC with a subject bootstrap.

One library layer for the group level (validation and test of a run) and the
predict level (scoring predictions against Centiloid labels): both build their
``metrics.tsv`` rows with :func:`metrics_row`, so the columns are the same.

Example
-------
>>> labels = [0, 0, 1, 1]
>>> probs = [0.1, 0.4, 0.35, 0.8]
>>> binary_metrics(labels, probs, 0.5)["recall"]
0.5
>>> binary_metrics(labels, probs, 0.9)["precision"]  # nothing predicted positive
nan
>>> round(best_threshold(labels, probs), 3) < 0.35
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

METRIC_NAMES = ("f1", "accuracy", "precision", "recall", "sensitivity", "specificity", "npv")


def _arrays(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=int).ravel()
    p = np.asarray(probs, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    return y, p


def _ratio(num: float, den: float, empty: float) -> float:
    return float(num / den) if den > 0 else empty


def binary_metrics(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray,
                   threshold: float) -> dict[str, float]:
    """F1, accuracy, precision, recall, sensitivity, specificity and NPV at ``threshold``.

    A sample is predicted positive if its probability is strictly above the
    threshold. Precision with no predicted positive and NPV with no predicted
    negative are undefined: NaN (written ``n/a``). Recall, specificity and F1
    with an empty denominator (a class absent from ``labels``) are 0.
    """
    y, p = _arrays(labels, probs)
    pred = p > threshold
    tp = float(np.sum(pred & (y == 1)))
    fp = float(np.sum(pred & (y == 0)))
    tn = float(np.sum(~pred & (y == 0)))
    fn = float(np.sum(~pred & (y == 1)))
    recall = _ratio(tp, tp + fn, 0.0)
    return {
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, 0.0),  # = 2PR/(P+R) where both are defined
        "accuracy": _ratio(tp + tn, y.size, 0.0),
        "precision": _ratio(tp, tp + fp, float("nan")),
        "recall": recall,
        "sensitivity": recall,
        "specificity": _ratio(tn, tn + fp, 0.0),
        "npv": _ratio(tn, tn + fn, float("nan")),
    }


def best_threshold(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray,
                   grid: tuple[float, float, int] = (0.01, 0.99, 200)) -> float:
    """F1-maximising threshold over ``linspace(*grid)``.

    Thresholds at which every sample falls in one predicted class are skipped;
    ties go to the lowest threshold. Falls back to 0.5 when every threshold
    predicts a single class (e.g. constant probabilities).
    """
    y, p = _arrays(labels, probs)
    best, best_f1 = 0.5, -1.0
    for tau in np.linspace(grid[0], grid[1], int(grid[2])):
        pred = p > tau
        if pred.all() or not pred.any():
            continue
        f1 = binary_metrics(y, p, float(tau))["f1"]
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(tau), f1
    return best


def auc(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float:
    """ROC AUC, NaN when only one class is present."""
    y, p = _arrays(labels, probs)
    if np.unique(y).size < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def auc_with_ci(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray,
                subjects: Sequence[str], n_boot: int = 1000, seed: int = 42
                ) -> tuple[float, float, float]:
    """AUC and its 95 % percentile bootstrap CI, resampling subjects with replacement.

    All samples of a drawn subject enter the resample together (a subject may
    have several sessions). Resamples holding a single class are skipped.

    Returns
    -------
    (auc, low, high); NaN where undefined.
    """
    y, p = _arrays(labels, probs)
    subj = np.asarray(subjects).ravel()
    if subj.size != y.size:
        raise ValueError(f"{subj.size} subject ids for {y.size} samples")
    point = auc(y, p)
    if np.isnan(point) or n_boot <= 0:
        return point, float("nan"), float("nan")
    uniq, inverse = np.unique(subj, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(uniq.size)]
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(n_boot):
        drawn = rng.integers(0, uniq.size, uniq.size)
        idx = np.concatenate([members[k] for k in drawn])
        if np.unique(y[idx]).size < 2:
            continue
        scores.append(roc_auc_score(y[idx], p[idx]))
    if not scores:
        return point, float("nan"), float("nan")
    low, high = np.percentile(scores, [2.5, 97.5])
    return point, float(low), float(high)


def metrics_row(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray,
                subjects: Sequence[str], tau: float, n_boot: int = 1000, seed: int = 42
                ) -> dict[str, float]:
    """One row of a ``metrics.tsv`` (group and predict level): counts, AUC with its CI, metrics.

    Columns: ``n`` (samples), ``n_subjects``, ``n_positive``, ``auc``,
    ``auc_ci_low``, ``auc_ci_high``, ``threshold`` (τ), then every
    :data:`METRIC_NAMES` entry at 0.5 (``f1@0.5`` …) and at τ (``f1@tau`` …).
    """
    y, p = _arrays(labels, probs)
    value, low, high = auc_with_ci(y, p, subjects, n_boot=n_boot, seed=seed)
    row: dict[str, float] = {"n": int(y.size), "n_subjects": len(set(subjects)),
                             "n_positive": int(y.sum()),
                             "auc": value, "auc_ci_low": low, "auc_ci_high": high,
                             "threshold": float(tau)}
    for name, thr in (("0.5", 0.5), ("tau", tau)):
        for key, val in binary_metrics(y, p, thr).items():
            row[f"{key}@{name}"] = val
    return row


def evaluation_table(predictions: pd.DataFrame, taus: dict[str, float], n_boot: int = 1000,
                     seed: int = 42) -> pd.DataFrame:
    """``metrics.tsv`` from per-sample predictions.

    Parameters
    ----------
    predictions
        Columns ``model``, ``split``, ``participant_id``, ``label``, ``probability``.
    taus
        τ per model (chosen on validation).
    """
    rows = []
    for (model, split), group in predictions.groupby(["model", "split"], sort=False):
        row = metrics_row(group["label"].to_numpy(), group["probability"].to_numpy(),
                          group["participant_id"].astype(str).tolist(), taus[str(model)],
                          n_boot=n_boot, seed=seed)
        rows.append({"model": model, "split": split, **row})
    return pd.DataFrame(rows)
