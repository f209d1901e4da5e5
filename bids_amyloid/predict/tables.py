"""The predict level's tables: predictions, the labelled evaluation pairs, metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from bids_amyloid.derivatives import session_label
from bids_amyloid.predict.model import SEEN_SPLITS, PredictModel

if TYPE_CHECKING:
    from bids_amyloid.bids import Inventory
    from bids_amyloid.config import AppConfig
    from bids_amyloid.predict.plan import SessionPlan

PREDICTION_COLUMNS = ("participant_id", "session_id", "contrasts_used", "probability",
                      "positive_at_0.5", "positive_at_tau", "tau", "model", "model_sha256",
                      "cohort_split", "note")
EXCLUDED_COLUMNS = ("participant_id", "session_id", "reason")


def cohort_split(sub: str, splits: dict[str, str] | None) -> str:
    """``train``/``val``/``test`` in the model's cohort, ``none`` if not in it, ``n/a`` if the
    model file records no cohort."""
    if splits is None:
        return "n/a"
    return splits.get(sub, "none")


def predictions_table(plans: list[SessionPlan], probs: dict[tuple[str, str], float],
                      model: PredictModel) -> pd.DataFrame:
    """``predictions.tsv`` rows, sorted by participant and session."""
    tau = model.tau
    splits = model.cohort_splits
    rows = []
    for plan in plans:
        if plan.key not in probs:
            continue
        p = probs[plan.key]
        rows.append({
            "participant_id": f"sub-{plan.session.sub}",
            "session_id": session_label(plan.session.ses),
            "contrasts_used": "+".join(plan.contrasts),
            "probability": p,
            "positive_at_0.5": int(p > 0.5),
            "positive_at_tau": int(p > tau),
            "tau": tau,
            "model": model.name,
            "model_sha256": model.sha256,
            "cohort_split": cohort_split(plan.session.sub, splits),
            "note": plan.note or "n/a",
        })
    return pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))


def evaluation_table(inv: Inventory, plans: list[SessionPlan], predictions: pd.DataFrame,
                     model: PredictModel) -> pd.DataFrame:
    """Predicted MRI sessions paired with Centiloid-bearing PET scans, with labels.

    Pairing and labels follow the model's training cohort rules (window,
    thresholds, tracer names as the cohort stage reads them). Empty when the
    dataset has no usable Centiloid.
    """
    from bids_amyloid.bids import Inventory as Inv
    from bids_amyloid.bids import pair_pet_with_mri
    from bids_amyloid.cohort import label_of, threshold_for

    predicted = {(r.participant_id, r.session_id): r for r in predictions.itertuples(index=False)}
    sessions = tuple(p.session for p in plans
                     if (f"sub-{p.session.sub}", session_label(p.session.ses)) in predicted)
    pets = tuple(pet for pet in inv.pet if pet.centiloid is not None)
    if not pets or not sessions:
        return pd.DataFrame()
    pairs = pair_pet_with_mri(Inv(sessions, pets), (), model.cfg.cohort.pair_window_days)
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
                     "cohort_split": pred.cohort_split})
    return pd.DataFrame(rows)


def metrics_table(evaluation: pd.DataFrame, tau: float, cfg: AppConfig) -> pd.DataFrame:
    """Metrics of the labelled pairs, with the group level's columns
    (:func:`bids_amyloid.evaluation.metrics_row`): all pairs, and those whose subject was not
    a train or val subject of the model."""
    from bids_amyloid.evaluation import metrics_row

    sets = [("all", evaluation)]
    unseen = evaluation[~evaluation["cohort_split"].isin(SEEN_SPLITS)]
    if len(unseen) < len(evaluation):
        sets.append(("not_train_or_val", unseen))
    rows: list[dict[str, Any]] = []
    for name, frame in sets:
        if frame.empty:
            continue
        row = metrics_row(frame["label"].to_numpy(int), frame["probability"].to_numpy(float),
                          frame["participant_id"].tolist(), tau, n_boot=cfg.train.bootstrap,
                          seed=cfg.train.seed)
        rows.append({"set": name, **row})
    return pd.DataFrame(rows)
