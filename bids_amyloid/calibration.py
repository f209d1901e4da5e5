"""Probability calibration: Platt scaling fitted on validation, Brier score, ECE, reliability bins.

Why Platt (slope and intercept on the logit) rather than a one-parameter
temperature: the group level draws training batches with inverse class
frequency (``train/data.py``, ``WeightedEpochSampler``), so the network learns
as if half the cohort were positive, and its logits are shifted by the log
prior odds of the real cohort. A temperature keeps logit 0 at probability
0.5 and cannot undo that shift; Platt's intercept does, and its slope does
what a temperature does (``slope = 1 / T``). Two parameters fitted by maximum
likelihood on the validation sessions (out-of-fold ones under ``--cv``) with
Platt's (1999) target smoothing (positives ``(N₊+1)/(N₊+2)``, negatives
``1/(N₋+2)``), which keeps a perfectly separated small validation set from
sending the slope to infinity. The slope is kept ≥ 0, so the map never
reverses the model's ranking: AUC and every decision at a threshold are the
same on the calibrated and the uncalibrated scale (thresholds are stored on
the model's own probability scale; :meth:`PlattScaling.apply` maps them too).

Expected calibration error (ECE): 10 equal-width bins of the probability over
[0, 1], right-closed (bin k holds ``k/10 < p ≤ (k+1)/10``, the first also
``p = 0``); ECE is the sample-weighted mean over non-empty bins of
``|observed positive fraction − mean probability|``.

Example
-------
>>> round(brier_score([0, 1, 1, 0], [0.1, 0.8, 0.6, 0.3]), 6)  # (.01 + .04 + .16 + .09) / 4
0.075
>>> round(expected_calibration_error([0, 1, 1, 0], [0.12, 0.82, 0.62, 0.32]), 3)  # one per bin
0.25
>>> float(PlattScaling(slope=1.0, intercept=0.0, n=0).apply([0.2])[0])  # the identity map
0.2
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

LOG = logging.getLogger(__name__)
N_BINS = 10
METHOD = "platt"
_EPS = 1e-12


def logit(probs: Sequence[float] | np.ndarray) -> np.ndarray:
    """log(p / (1 − p)), with p clipped away from 0 and 1."""
    p = np.clip(np.asarray(probs, dtype=float), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


@dataclass(frozen=True)
class PlattScaling:
    """``p_calibrated = sigmoid(slope · logit + intercept)``; ``n``: validation samples fitted."""

    slope: float
    intercept: float
    n: int

    def apply_logits(self, logits: Sequence[float] | np.ndarray) -> np.ndarray:
        """Calibrated probabilities from the model's logits."""
        return _sigmoid(self.slope * np.asarray(logits, dtype=float) + self.intercept)

    def apply(self, probs: Sequence[float] | np.ndarray) -> np.ndarray:
        """Calibrated probabilities from the model's probabilities (or thresholds)."""
        return self.apply_logits(logit(probs))

    def to_meta(self, fitted_on: str) -> dict[str, Any]:
        """The model file's ``calibration`` entry."""
        return {"method": METHOD, "slope": float(self.slope), "intercept": float(self.intercept),
                "n": int(self.n), "fitted_on": fitted_on}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> PlattScaling | None:
        """The calibration a model file records, None if it records none.

        Raises
        ------
        ValueError
            The entry is there but not a Platt scaling with finite numbers.
        """
        entry = meta.get("calibration")
        if entry is None:
            return None
        if not isinstance(entry, dict) or entry.get("method") != METHOD:
            raise ValueError(f"unknown calibration entry {entry!r} (expected method {METHOD!r})")
        slope, intercept = entry.get("slope"), entry.get("intercept")
        if not (isinstance(slope, int | float) and isinstance(intercept, int | float)
                and np.isfinite(slope) and np.isfinite(intercept)):
            raise ValueError(f"calibration entry {entry!r} has no finite slope and intercept")
        return cls(float(slope), float(intercept), int(entry.get("n", 0)))


def fit_platt(logits: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray
              ) -> PlattScaling:
    """Fit Platt scaling to validation (or out-of-fold) logits by maximum likelihood.

    Targets are smoothed as Platt (1999); the slope is bounded to ``[0, 1000]``.
    A slope of 0 (the logits carry no positive signal on these samples) makes
    every calibrated probability the smoothed prevalence, and is logged.

    Raises
    ------
    ValueError
        Fewer than 2 samples, or a label other than 0/1, or non-finite logits.
    """
    from scipy.optimize import minimize

    z = np.asarray(logits, dtype=float).ravel()
    y = np.asarray(labels, dtype=float).ravel()
    if z.size != y.size or z.size < 2:
        raise ValueError(f"calibration needs ≥ 2 samples with one label each ({z.size} logits, "
                         f"{y.size} labels)")
    if not np.isin(y, (0.0, 1.0)).all() or not np.isfinite(z).all():
        raise ValueError("calibration needs 0/1 labels and finite logits")
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    target = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def nll(params: np.ndarray) -> tuple[float, np.ndarray]:
        s = params[0] * z + params[1]
        # -[t log σ(s) + (1 - t) log(1 - σ(s))] = logaddexp(0, s) - t s
        loss = np.logaddexp(0.0, s) - target * s
        resid = _sigmoid(s) - target
        return float(loss.mean()), np.array([np.mean(resid * z), np.mean(resid)])

    result = minimize(nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                      bounds=[(0.0, 1000.0), (None, None)])
    slope, intercept = (float(v) for v in result.x)
    if slope <= 1e-9:
        LOG.warning("calibration: the logits carry no positive signal on the %d samples fitted "
                    "(slope 0): every calibrated probability is %.3f", z.size,
                    float(_sigmoid(np.array(intercept))))
    return PlattScaling(slope, intercept, int(z.size))


def brier_score(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray
                ) -> float:
    """Mean squared difference between probability and 0/1 outcome (NaN when empty)."""
    y = np.asarray(labels, dtype=float).ravel()
    p = np.asarray(probs, dtype=float).ravel()
    return float(np.mean((p - y) ** 2)) if y.size else float("nan")


def reliability_bins(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray,
                     n_bins: int = N_BINS) -> pd.DataFrame:
    """Per equal-width bin: ``low``, ``high``, ``n``, ``mean_probability``, ``fraction_positive``
    (NaN for an empty bin)."""
    y = np.asarray(labels, dtype=float).ravel()
    p = np.asarray(probs, dtype=float).ravel()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=True), 0, n_bins - 1)
    rows = []
    for k in range(n_bins):
        inside = which == k
        count = int(inside.sum())
        rows.append({"low": edges[k], "high": edges[k + 1], "n": count,
                     "mean_probability": float(p[inside].mean()) if count else float("nan"),
                     "fraction_positive": float(y[inside].mean()) if count else float("nan")})
    return pd.DataFrame(rows)


def expected_calibration_error(labels: Sequence[float] | np.ndarray,
                               probs: Sequence[float] | np.ndarray, n_bins: int = N_BINS
                               ) -> float:
    """ECE over ``n_bins`` equal-width bins (module docstring); NaN when empty."""
    bins = reliability_bins(labels, probs, n_bins)
    used = bins[bins["n"] > 0]
    if used.empty:
        return float("nan")
    gap = (used["fraction_positive"] - used["mean_probability"]).abs()
    return float((gap * used["n"]).sum() / used["n"].sum())


def calibration_columns(labels: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray,
                        calibrated: Sequence[float] | np.ndarray | None) -> dict[str, float]:
    """``metrics.tsv`` columns: Brier and ECE before (``_raw``) and after (``_calibrated``)."""
    after = calibrated if calibrated is not None else np.full(len(probs), np.nan)
    finite = calibrated is not None and bool(np.isfinite(np.asarray(after, float)).all())
    return {"brier_raw": brier_score(labels, probs),
            "brier_calibrated": brier_score(labels, after) if finite else float("nan"),
            "ece_raw": expected_calibration_error(labels, probs),
            "ece_calibrated": expected_calibration_error(labels, after) if finite
            else float("nan")}


def reliability_figure(panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]) -> bytes:
    """PNG reliability diagram: observed positive fraction vs mean probability per bin.

    One panel per ``panels`` entry (its title); each maps a curve label (e.g.
    ``"before"``, ``"after"``) to ``(labels, probs)``. Marker size follows the
    bin's sample count; the legend gives each curve's ECE and Brier score.
    """
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.4 * max(len(panels), 1), 4.6))
    for k, (title, curves) in enumerate(panels.items()):
        ax = fig.add_subplot(1, max(len(panels), 1), k + 1)
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
        for name, (y, p) in curves.items():
            bins = reliability_bins(y, p)
            used = bins[bins["n"] > 0]
            line = ax.plot(used["mean_probability"], used["fraction_positive"], marker=".",
                           label=f"{name}: ECE {expected_calibration_error(y, p):.3f}, "
                                 f"Brier {brier_score(y, p):.3f}")[0]
            ax.scatter(used["mean_probability"], used["fraction_positive"], color=line.get_color(),
                       s=10 + 90 * used["n"] / max(int(used["n"].max()), 1), alpha=0.35)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel(f"mean predicted probability ({N_BINS} equal-width bins)")
        ax.set_ylabel("observed fraction positive")
        ax.set_title(title, fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()
