"""The predict level's tables: predictions, the labelled evaluation pairs, metrics."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bids_amyloid.calibration import PlattScaling
from bids_amyloid.derivatives import session_label
from bids_amyloid.evaluation import OPERATING_POINTS, decisions, recorded_points
from bids_amyloid.predict.model import SEEN_SPLITS, PredictModel

if TYPE_CHECKING:
    from bids_amyloid.bids import Inventory
    from bids_amyloid.config import AppConfig
    from bids_amyloid.predict.plan import SessionPlan

PREDICTION_COLUMNS = ("participant_id", "session_id", "contrasts_used", "probability",
                      "probability_calibrated", "positive_at_0.5", "positive_at_tau",
                      "positive_at_rule_out", "positive_at_rule_in", "tau", "rule_out_threshold",
                      "rule_in_threshold", "reliability", "model", "model_sha256",
                      "cohort_split", "note")
EXCLUDED_COLUMNS = ("participant_id", "session_id", "reason")
LOG = logging.getLogger(__name__)


def cohort_split(sub: str, splits: dict[str, str] | None) -> str:
    """``train``/``val``/``test`` in the model's cohort, ``none`` if not in it, ``n/a`` if the
    model file records no cohort."""
    if splits is None:
        return "n/a"
    return splits.get(sub, "none")


def model_calibration(model: PredictModel) -> PlattScaling | None:
    """The model file's calibration; None (and a warning) for a file from before it was
    recorded."""
    try:
        calibration = PlattScaling.from_meta(model.meta)
    except ValueError as err:
        raise ValueError(f"{model.path}: {err}") from err
    if calibration is None:
        LOG.warning("%s records no calibration: probability_calibrated is n/a", model.path.name)
    return calibration


def model_points(model: PredictModel) -> dict[str, float]:
    """The model file's operating points (0.5 and τ at least)."""
    return recorded_points(model.meta, model.tau)


def predictions_table(plans: list[SessionPlan], probs: dict[tuple[str, str], float],
                      model: PredictModel, reliability: dict[tuple[str, str], str] | None = None
                      ) -> pd.DataFrame:
    """``predictions.tsv`` rows, sorted by participant and session.

    Decisions at every operating point compare ``probability`` (the model's output) with
    the model file's thresholds; ``probability_calibrated`` is the same ranking, mapped by
    the model file's calibration.
    """
    tau = model.tau
    splits = model.cohort_splits
    calibration = model_calibration(model)
    points = model_points(model)
    done = [plan for plan in plans if plan.key in probs]
    p = np.array([probs[plan.key] for plan in done], dtype=float)
    calibrated = calibration.apply(p) if calibration is not None else np.full(p.size, np.nan)
    decided = decisions(p, points)
    rows = []
    for k, plan in enumerate(done):
        rows.append({
            "participant_id": f"sub-{plan.session.sub}",
            "session_id": session_label(plan.session.ses),
            "contrasts_used": "+".join(plan.contrasts),
            "probability": p[k],
            "probability_calibrated": calibrated[k],
            **{f"positive_at_{name}": decided[name].iloc[k] for name in OPERATING_POINTS},
            "tau": tau,
            "rule_out_threshold": points.get("rule_out", float("nan")),
            "rule_in_threshold": points.get("rule_in", float("nan")),
            "reliability": (reliability or {}).get(plan.key, "n/a"),
            "model": model.name,
            "model_sha256": model.sha256,
            "cohort_split": cohort_split(plan.session.sub, splits),
            "note": plan.note or "n/a",
        })
    frame = pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))
    for name in OPERATING_POINTS:
        frame[f"positive_at_{name}"] = frame[f"positive_at_{name}"].astype("Int64")
    return frame


def evaluation_table(inv: Inventory, plans: list[SessionPlan], predictions: pd.DataFrame,
                     model: PredictModel) -> pd.DataFrame:
    """Predicted MRI sessions paired with Centiloid-bearing PET scans, with labels.

    Pairing and labels follow the model's training cohort rules (window,
    thresholds, tracer names as the cohort stage reads them). Empty when the
    dataset has no usable Centiloid.
    """
    from bids_amyloid.bids import Inventory as Inv
    from bids_amyloid.bids import pair_scans
    from bids_amyloid.cohort import label_of, threshold_for

    predicted = {(r.participant_id, r.session_id): r for r in predictions.itertuples(index=False)}
    sessions = tuple(p.session for p in plans
                     if (f"sub-{p.session.sub}", session_label(p.session.ses)) in predicted)
    pets = tuple(pet for pet in inv.pet if pet.centiloid is not None)
    if not pets or not sessions:
        return pd.DataFrame()
    pairs = pair_scans(Inv(sessions, pets), model.cfg.cohort)
    rows = []
    for pet, mri, _ in pairs:
        if mri is None or pet.centiloid is None:
            continue
        pred = predicted[(f"sub-{mri.sub}", session_label(mri.ses))]
        days = abs((mri.date - pet.date).days) if mri.date and pet.date else None
        threshold = threshold_for(pet.tracer, model.cfg.cohort)
        rows.append({"participant_id": f"sub-{mri.sub}", "session_id": session_label(mri.ses),
                     "pet_session": session_label(pet.ses), "tracer": pet.tracer,
                     "centiloid": float(pet.centiloid), "threshold": threshold,
                     "label": label_of(float(pet.centiloid), threshold),
                     "days_apart": days, "probability": pred.probability,
                     "probability_calibrated": pred.probability_calibrated,
                     "cohort_split": pred.cohort_split})
    return pd.DataFrame(rows)


def metrics_table(evaluation: pd.DataFrame, model: PredictModel, cfg: AppConfig
                  ) -> pd.DataFrame:
    """Metrics of the labelled pairs, with the group level's columns
    (:func:`bids_amyloid.evaluation.metrics_row`: AUC, Brier and ECE before/after calibration,
    each operating point with CIs): all pairs, and those whose subject was not a train or
    val subject of the model."""
    from bids_amyloid.evaluation import metrics_row

    sets = [("all", evaluation)]
    unseen = evaluation[~evaluation["cohort_split"].isin(SEEN_SPLITS)]
    if len(unseen) < len(evaluation):
        sets.append(("not_train_or_val", unseen))
    points = model_points(model)
    rows: list[dict[str, Any]] = []
    for name, frame in sets:
        if frame.empty:
            continue
        calibrated = frame["probability_calibrated"].to_numpy(float)
        row = metrics_row(frame["label"].to_numpy(int), frame["probability"].to_numpy(float),
                          frame["participant_id"].tolist(), model.tau, n_boot=cfg.train.bootstrap,
                          seed=cfg.train.seed, points=points,
                          calibrated=calibrated if np.isfinite(calibrated).all() else None)
        rows.append({"set": name, **row})
    return pd.DataFrame(rows)


def model_operating_table(model: PredictModel) -> pd.DataFrame:
    """The model file's operating points for a page: threshold (model and calibrated scale)
    and the rates the group level measured where it chose them (validation, or out-of-fold
    under ``--cv``)."""
    from bids_amyloid.evaluation import POINT_LABELS

    calibration = PlattScaling.from_meta(model.meta)
    rates = model.meta.get("operating_point_rates") or {}
    rows = []
    for name, thr in model_points(model).items():
        measured = rates.get(name) or {}
        rows.append({"operating point": POINT_LABELS[name], "threshold": thr,
                     "threshold (calibrated)": float(calibration.apply([thr])[0])
                     if calibration is not None else float("nan"),
                     **{key: measured.get(key, float("nan"))
                        for key in ("sensitivity", "specificity", "ppv", "npv")}})
    return pd.DataFrame(rows)


def rates_source(model: PredictModel) -> str:
    """Where the model file's operating-point rates were measured, for a caption."""
    rates = model.meta.get("operating_point_rates") or {}
    if not rates:
        return "the model file records no rates at its operating points"
    return f"rates measured on {rates.get('fitted_on', 'validation')} (n = {rates.get('n')})"
