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

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

LOG = logging.getLogger(__name__)

METRIC_NAMES = ("f1", "accuracy", "precision", "recall", "sensitivity", "specificity", "npv")
SCREENING_NAMES = ("sensitivity", "specificity", "ppv", "npv")
OPERATING_POINTS = ("0.5", "tau", "rule_out", "rule_in")


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


def bootstrap_resamples(subjects: Sequence[str], n_boot: int, seed: int
                        ) -> Iterator[np.ndarray]:
    """Sample indices of ``n_boot`` resamples drawing subjects with replacement.

    All samples of a drawn subject enter the resample together (a subject may
    have several sessions); the same seed gives the same resamples.
    """
    subj = np.asarray(subjects).ravel()
    uniq, inverse = np.unique(subj, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(uniq.size)]
    rng = np.random.default_rng(seed)
    for _ in range(max(int(n_boot), 0)):
        drawn = rng.integers(0, uniq.size, uniq.size)
        yield np.concatenate([members[k] for k in drawn])


def _percentile_ci(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def auc_with_ci(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray,
                subjects: Sequence[str], n_boot: int = 1000, seed: int = 42
                ) -> tuple[float, float, float]:
    """AUC and its 95 % percentile bootstrap CI, resampling subjects with replacement
    (:func:`bootstrap_resamples`). Resamples holding a single class are skipped.

    Returns
    -------
    (auc, low, high); NaN where undefined.
    """
    y, p = _arrays(labels, probs)
    if len(subjects) != y.size:
        raise ValueError(f"{len(subjects)} subject ids for {y.size} samples")
    point = auc(y, p)
    if np.isnan(point) or n_boot <= 0:
        return point, float("nan"), float("nan")
    scores = [float(roc_auc_score(y[idx], p[idx]))
              for idx in bootstrap_resamples(subjects, n_boot, seed)
              if np.unique(y[idx]).size == 2]
    low, high = _percentile_ci(scores)
    return point, low, high


def screening_rates(labels: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV of 0/1 decisions, and the fraction called negative
    (``pet_avoided``: at a rule-out point, the PET scans not needed). NaN for an empty
    denominator."""
    pos, neg = labels == 1, labels == 0
    tp, fn = float(np.sum(positive & pos)), float(np.sum(~positive & pos))
    tn, fp = float(np.sum(~positive & neg)), float(np.sum(positive & neg))
    nan = float("nan")
    return {"sensitivity": _ratio(tp, tp + fn, nan), "specificity": _ratio(tn, tn + fp, nan),
            "ppv": _ratio(tp, tp + fp, nan), "npv": _ratio(tn, tn + fn, nan),
            "pet_avoided": _ratio(tn + fn, labels.size, nan)}


def rule_out_threshold(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray,
                       min_sensitivity: float = 0.90) -> float:
    """The highest threshold keeping sensitivity ≥ ``min_sensitivity`` on these samples.

    Positive if p > threshold. With ``k = ceil(min_sensitivity · N₊)``, the
    k-th highest positive probability must stay above the threshold; the
    threshold is placed halfway between it and the next lower probability of
    any sample (0 if none), so as many samples as possible fall below it
    (are ruled out). NaN without positives.
    """
    y, p = _arrays(labels, probs)
    positives = np.sort(p[y == 1])[::-1]
    if positives.size == 0:
        return float("nan")
    k = int(np.ceil(min_sensitivity * positives.size - 1e-9))
    anchor = positives[max(k, 1) - 1]
    below = p[p < anchor]
    return float((anchor + (below.max() if below.size else 0.0)) / 2.0)


def rule_in_threshold(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray,
                      min_specificity: float = 0.90) -> float:
    """The lowest threshold keeping specificity ≥ ``min_specificity`` on these samples.

    With ``m = ceil(min_specificity · N₋)``, the m-th lowest negative
    probability must not exceed the threshold; the threshold is placed halfway
    between it and the next higher probability of any sample (1 if none). NaN
    without negatives.
    """
    y, p = _arrays(labels, probs)
    negatives = np.sort(p[y == 0])
    if negatives.size == 0:
        return float("nan")
    m = int(np.ceil(min_specificity * negatives.size - 1e-9))
    anchor = negatives[max(m, 1) - 1]
    above = p[p > anchor]
    return float((anchor + (above.min() if above.size else 1.0)) / 2.0)


def operating_points(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray,
                     tau: float, min_sensitivity: float, min_specificity: float
                     ) -> dict[str, float]:
    """The four thresholds a model file records, chosen on validation: ``0.5``, ``tau``
    (F1-max), ``rule_out`` (sensitivity ≥ ``min_sensitivity``), ``rule_in`` (specificity ≥
    ``min_specificity``); all on the model's (uncalibrated) probability scale."""
    return {"0.5": 0.5, "tau": float(tau),
            "rule_out": rule_out_threshold(labels, probs, min_sensitivity),
            "rule_in": rule_in_threshold(labels, probs, min_specificity)}


def operating_point_columns(labels: np.ndarray, probs: np.ndarray, subjects: Sequence[str],
                            points: dict[str, float], n_boot: int, seed: int
                            ) -> dict[str, float]:
    """Per operating point: ``threshold@P`` and SCREENING_NAMES ``@P`` with subject-bootstrap
    95 % CIs (``…@P_ci_low`` / ``_ci_high``); ``pet_avoided`` at ``rule_out`` only."""
    y, p = _arrays(labels, probs)
    resamples = list(bootstrap_resamples(subjects, n_boot, seed))
    row: dict[str, float] = {}
    for name, thr in points.items():
        keys = SCREENING_NAMES + (("pet_avoided",) if name == "rule_out" else ())
        row[f"threshold@{name}"] = float(thr)
        if not np.isfinite(thr):
            for key in keys:
                row.update({f"{key}@{name}": float("nan"), f"{key}@{name}_ci_low": float("nan"),
                            f"{key}@{name}_ci_high": float("nan")})
            continue
        point = screening_rates(y, p > thr)
        boot = [screening_rates(y[idx], p[idx] > thr) for idx in resamples]
        for key in keys:
            low, high = _percentile_ci([b[key] for b in boot])
            row.update({f"{key}@{name}": point[key], f"{key}@{name}_ci_low": low,
                        f"{key}@{name}_ci_high": high})
    return row


def metrics_row(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray,
                subjects: Sequence[str], tau: float, n_boot: int = 1000, seed: int = 42,
                points: dict[str, float] | None = None,
                calibrated: Sequence[float] | np.ndarray | None = None) -> dict[str, float]:
    """One row of a ``metrics.tsv`` (group and predict level): counts, AUC with its CI, metrics.

    Columns: ``n`` (samples), ``n_subjects``, ``n_positive``, ``auc``,
    ``auc_ci_low``, ``auc_ci_high``, ``threshold`` (τ), then every
    :data:`METRIC_NAMES` entry at 0.5 (``f1@0.5`` …) and at τ (``f1@tau`` …);
    then Brier score and ECE before and after calibration
    (:func:`bids_amyloid.calibration.calibration_columns`; ``_calibrated`` NaN
    without ``calibrated`` probabilities); then, per operating point of
    ``points`` (default 0.5 and τ), :func:`operating_point_columns`.
    """
    from bids_amyloid.calibration import calibration_columns

    y, p = _arrays(labels, probs)
    value, low, high = auc_with_ci(y, p, subjects, n_boot=n_boot, seed=seed)
    row: dict[str, float] = {"n": int(y.size), "n_subjects": len(set(subjects)),
                             "n_positive": int(y.sum()),
                             "auc": value, "auc_ci_low": low, "auc_ci_high": high,
                             "threshold": float(tau)}
    for name, thr in (("0.5", 0.5), ("tau", tau)):
        for key, val in binary_metrics(y, p, thr).items():
            row[f"{key}@{name}"] = val
    row.update(calibration_columns(y, p, calibrated))
    chosen = points if points is not None else {"0.5": 0.5, "tau": float(tau)}
    for key, val in operating_point_columns(y, p, subjects, chosen, n_boot, seed).items():
        row.setdefault(key, val)  # sensitivity@0.5 … keep binary_metrics' values (0 if empty)
    return row


def evaluation_table(predictions: pd.DataFrame, points: dict[str, dict[str, float]],
                     n_boot: int = 1000, seed: int = 42) -> pd.DataFrame:
    """``metrics.tsv`` from per-sample predictions.

    Parameters
    ----------
    predictions
        Columns ``model``, ``split``, ``participant_id``, ``label``, ``probability``, and
        ``probability_calibrated`` if the models are calibrated.
    points
        Per model, its operating points (:func:`operating_points`, chosen on validation;
        at least ``tau``).
    """
    rows = []
    for (model, split), group in predictions.groupby(["model", "split"], sort=False):
        chosen = points[str(model)]
        calibrated = (group["probability_calibrated"].to_numpy(float)
                      if "probability_calibrated" in group else None)
        row = metrics_row(group["label"].to_numpy(), group["probability"].to_numpy(),
                          group["participant_id"].astype(str).tolist(), chosen["tau"],
                          n_boot=n_boot, seed=seed, points=chosen, calibrated=calibrated)
        rows.append({"model": model, "split": split, **row})
    return pd.DataFrame(rows)


def validation_entries(labels: Sequence[float] | np.ndarray, logits: Sequence[float] | np.ndarray,
                       tau: float, min_sensitivity: float, min_specificity: float,
                       fitted_on: str = "validation") -> dict[str, Any]:
    """What a student's model file records from its validation (or, under ``--cv``,
    out-of-fold) predictions: the ``calibration`` (Platt scaling, fitted on the logits) and
    the ``operating_points`` (:func:`operating_points` on the uncalibrated probabilities)."""
    from bids_amyloid.calibration import fit_platt

    z = np.asarray(logits, dtype=float).ravel()
    y = np.asarray(labels, dtype=int).ravel()
    probs = 1.0 / (1.0 + np.exp(-z))
    points = operating_points(y, probs, tau, min_sensitivity, min_specificity)
    rates = {name: screening_rates(y, probs > thr) for name, thr in points.items()
             if np.isfinite(thr)}
    entries: dict[str, Any] = {}
    try:
        entries["calibration"] = fit_platt(z, y).to_meta(fitted_on)
    except ValueError as err:
        LOG.warning("no calibration recorded (%s on %s): probability_calibrated will be n/a",
                    err, fitted_on)
    return {**entries,
            "operating_points": points,
            "operating_constraints": {"rule_out_sensitivity": float(min_sensitivity),
                                      "rule_in_specificity": float(min_specificity)},
            "operating_point_rates": {"fitted_on": fitted_on, "n": int(y.size), **rates}}


def recorded_points(meta: dict[str, Any], tau: float) -> dict[str, float]:
    """A model file's operating points; a file from before they were recorded has 0.5 and
    ``tau`` only (rule-out and rule-in are then absent)."""
    points = {"0.5": 0.5, "tau": float(tau)}
    stored = meta.get("operating_points")
    if isinstance(stored, dict):
        for name in ("rule_out", "rule_in"):
            value = stored.get(name)
            if isinstance(value, int | float):
                points[name] = float(value)
    return points


def decisions(probs: Sequence[float] | np.ndarray, points: dict[str, float]
              ) -> dict[str, pd.Series]:
    """0/1 decision (positive if p > threshold) at each of :data:`OPERATING_POINTS`, as
    nullable integers: missing (``n/a``) where the model file has no such point."""
    p = np.asarray(probs, dtype=float).ravel()
    out = {}
    for name in OPERATING_POINTS:
        thr = points.get(name, float("nan"))
        values = [int(v > thr) if np.isfinite(thr) else None for v in p]
        out[name] = pd.Series(values, dtype="Int64")
    return out


POINT_LABELS = {"0.5": "0.5 (fixed)", "tau": "τ (F1-max on validation)",
                "rule_out": "rule-out (sensitivity constraint)",
                "rule_in": "rule-in (specificity constraint)"}


def operating_point_view(row: dict[str, Any] | pd.Series, calibrate: Any = None
                         ) -> pd.DataFrame:
    """The operating-point table of a report: one row per point of a ``metrics.tsv`` row,
    each rate as ``value [low–high]``; ``calibrate`` (a probability map, e.g.
    :meth:`bids_amyloid.calibration.PlattScaling.apply`) adds the threshold on the calibrated
    scale."""
    def cell(key: str, point: str) -> str:
        value = row.get(f"{key}@{point}", float("nan"))
        low = row.get(f"{key}@{point}_ci_low", float("nan"))
        high = row.get(f"{key}@{point}_ci_high", float("nan"))
        if not np.isfinite(value):
            return "n/a"
        ci = f" [{low:.2f}–{high:.2f}]" if np.isfinite(low) and np.isfinite(high) else ""
        return f"{value:.2f}{ci}"

    rows = []
    for point in OPERATING_POINTS:
        thr = row.get(f"threshold@{point}")
        if thr is None:
            continue
        entry = {"operating point": POINT_LABELS[point], "threshold": thr}
        if calibrate is not None:
            entry["threshold (calibrated)"] = (float(calibrate([thr])[0]) if np.isfinite(thr)
                                               else float("nan"))
        entry.update({name.upper() if len(name) == 3 else name: cell(name, point)
                      for name in SCREENING_NAMES})
        entry["PET avoided"] = cell("pet_avoided", point) if point == "rule_out" else ""
        rows.append(entry)
    return pd.DataFrame(rows)
