"""``group --cv K``: K outer folds over subjects, out-of-fold predictions, an ensemble.

Outer fold ``k`` is a whole group run in ``fold-<k>/`` (its own ``cohort.tsv``,
model files, checkpoints, ``metrics.tsv``, ``predictions.tsv``, report). Its
split comes from the same subject-level ``StratifiedGroupKFold`` as the single
split (:func:`bids_amyloid.cohort.assign_splits`, ``n_folds = K``, the cohort's
``split_seed``): fold ``k`` is test, fold ``k+1 mod K`` validation (it chooses
the epochs, checkpoints and τ), the others train. Every subject is thus tested
exactly once and validated exactly once.

After the folds, in the run folder:

``oof_predictions.tsv``      each test sample's prediction by the student of the fold that
                             held it out (the main student: best validation F1@τ, or the
                             ``no-teacher`` baseline under that ablation), with ``fold``
``cv_metrics.tsv``           the student's test metrics per fold (τ of that fold), their
                             ``mean`` and ``sd`` over folds, and ``pooled``: all out-of-fold
                             predictions together, AUC with its subject-bootstrap CI, at the
                             τ of the raw pooled validation predictions; ``pooled_calibrated``:
                             the same after each fold's own calibration (fitted on its
                             validation fold), which puts the folds' students on one
                             probability scale before pooling, at the ensemble's τ, calibration
                             and operating points
``report.html``              per-fold and pooled metrics and the pooled reliability diagram
                             (``reliability.png``)
``student_<C>_ensemble.pt``  the K students as one model for predict (the mean of the members'
                             calibrated probabilities when every member has a calibration, else
                             of their probabilities; :mod:`bids_amyloid.models.ensemble`); its
                             τ, calibration and rule-out/rule-in points are fitted on the pooled
                             validation predictions on that scale (each subject once, by the
                             student it validated, never a test prediction;
                             :func:`ensemble_entries`)

Resume (``--resume``): a fold whose ``fold.json`` exists, for the same test
subjects, is read back, not retrained; an interrupted fold resumes from its
checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from bids_amyloid.calibration import PlattScaling
from bids_amyloid.cohort import assign_splits
from bids_amyloid.config import CohortConfig
from bids_amyloid.derivatives import GroupRun
from bids_amyloid.errors import InputMissingError, UsageError
from bids_amyloid.evaluation import (
    best_threshold,
    metrics_row,
    recorded_points,
    validation_entries,
)
from bids_amyloid.io import write_json, write_tsv
from bids_amyloid.train.context import Run, make_datasets
from bids_amyloid.train.data import check_caches
from bids_amyloid.train.outputs import evaluate
from bids_amyloid.train.plan import NO_TEACHER
from bids_amyloid.train.report import write_cv_report
from bids_amyloid.train.stages import train_stages

LOG = logging.getLogger(__name__)


def fold_cohorts(cohort: pd.DataFrame, k: int, ccfg: CohortConfig) -> list[pd.DataFrame]:
    """The cohort of each outer fold: ``split`` is test for fold ``f``, val for ``f+1 mod K``."""
    if k < 3:
        raise UsageError(f"--cv {k}: cross-validation needs K ≥ 3 folds (a test, a validation "
                         "and a training fold each)")
    base = dataclasses.replace(ccfg, n_folds=k)
    cohorts = []
    for fold in range(k):
        split, method = assign_splits(cohort, dataclasses.replace(
            base, test_fold=fold, val_fold=(fold + 1) % k))
        cohorts.append(cohort.assign(split=split))
    LOG.info("--cv %d: outer folds by %s over %d subjects", k, method,
             cohort["participant_id"].nunique())
    return cohorts


def student_name(run: Run) -> str:
    """The model name (file stem) of the fold student that enters OOF and the ensemble."""
    selection = NO_TEACHER if NO_TEACHER in run.cfg.train.ablate else ""
    return run.files.student(run.student_contrasts, selection).stem


def _subjects(frame: pd.DataFrame, split: str) -> list[str]:
    return sorted(set(frame.loc[frame["split"] == split, "participant_id"].astype(str)))


def run_fold(base: Run, fold: int, cohort: pd.DataFrame, phases: list[str],
             contrasts: tuple[str, ...]) -> GroupRun:
    """Train and evaluate one outer fold in ``fold-<k>/`` (skipped when finished, under
    ``--resume``); return its files."""
    files = base.files.fold(fold)
    tests = _subjects(cohort, "test")
    record = files.fold_record
    if base.opts.resume and record.is_file():
        if json.loads(record.read_text()).get("test_participants") == tests:
            LOG.info("fold %d: finished (%s); not retrained", fold, record)
            return files
        LOG.warning("fold %d: %s names other test subjects; training the fold again", fold,
                    record)
    if base.writer:
        record.unlink(missing_ok=True)
        write_tsv(files.cohort, cohort)
    data, usable = make_datasets(cohort, base.opts.output_dir, contrasts, base.cfg,
                                 files.folder, base.writer)
    run = dataclasses.replace(base, folder=files.folder, data=data, cohort=usable)
    LOG.info("fold %d of %d: %s", fold, base.cfg.train.cv_folds,
             ", ".join(f"{k} {len(v)}" for k, v in data.items()))
    train_stages(run, phases)
    if run.writer:
        evaluate(run)
        write_json(record, {"fold": fold, "student": student_name(run),
                            "test_participants": tests,
                            "validation_participants": _subjects(cohort, "val"),
                            "training_participants": _subjects(cohort, "train")})
    run.dist.barrier()
    return files


def fold_predictions(folds: list[GroupRun], model: str) -> pd.DataFrame:
    """The student's validation and test predictions of every fold, with ``fold``."""
    frames = []
    for k, files in enumerate(folds):
        frame = pd.read_csv(files.predictions, sep="\t", dtype={"participant_id": str})
        frames.append(frame[frame["model"] == model].assign(fold=k))
    return pd.concat(frames, ignore_index=True)


def cv_table(folds: list[GroupRun], model: str, pooled: list[dict[str, Any]]) -> pd.DataFrame:
    """``cv_metrics.tsv``: per-fold test rows, their mean and sd, then the ``pooled`` rows."""
    rows = []
    for k, files in enumerate(folds):
        metrics = pd.read_csv(files.metrics, sep="\t")
        row = metrics[(metrics["model"] == model) & (metrics["split"] == "test")]
        if len(row) != 1:
            raise ValueError(f"{files.metrics}: no test row of {model}")
        rows.append(row.drop(columns=["model", "split"]).assign(fold=str(k)))
    per_fold = pd.concat(rows, ignore_index=True)
    per_fold = per_fold[["fold", *per_fold.columns.drop("fold")]]
    numeric = per_fold.drop(columns=["fold"]).apply(pd.to_numeric, errors="coerce")
    summary = [{"fold": "mean", **numeric.mean().to_dict()},
               {"fold": "sd", **numeric.std(ddof=1).to_dict()}]
    table = pd.concat([per_fold, pd.DataFrame(summary), pd.DataFrame(pooled)],
                      ignore_index=True)
    table.insert(1, "model", model)
    return table.reindex(columns=["fold", "model", *per_fold.columns.drop("fold")])


def pooled_row(name: str, oof: pd.DataFrame, column: str, tau: float,
               entries: dict[str, Any] | None, n_boot: int, seed: int) -> dict[str, Any]:
    """One pooled row of ``cv_metrics.tsv``: the out-of-fold ``column`` of every fold together,
    at ``tau`` and the operating points (and calibration) of ``entries``."""
    calibration = PlattScaling.from_meta(entries or {})
    probs = oof[column].to_numpy(float)
    row = metrics_row(oof["label"].to_numpy(int), probs, oof["participant_id"].tolist(), tau,
                      n_boot=n_boot, seed=seed, points=recorded_points(entries or {}, tau),
                      calibrated=calibration.apply(probs) if calibration else None)
    return {"fold": name, **row}


def members_calibrated(preds: pd.DataFrame) -> bool:
    """Whether every fold student calibrated its predictions (``probability_calibrated``).

    The folds' raw probabilities need not share a scale (each student's offset is its own),
    which pooling raw scores mixes into the AUC; each fold's calibration puts them on one.
    """
    column = preds.get("probability_calibrated")
    return column is not None and bool(column.notna().all())


def ensemble_entries(base: Run, folds: list[GroupRun], val: pd.DataFrame, tau: float
                     ) -> dict[str, Any]:
    """Calibration and operating points fitted on the pooled validation predictions (each
    subject once, by the student it validated) and the members' reliability references."""
    from bids_amyloid.calibration import logit
    from bids_amyloid.models import read_model_file
    from bids_amyloid.reliability import ensemble_entry

    t = base.cfg.train
    entries = validation_entries(val["label"].to_numpy(int), logit(val["probability"]), tau,
                                 t.rule_out_sensitivity, t.rule_in_specificity,
                                 fitted_on="pooled validation predictions of the folds")
    selection = NO_TEACHER if NO_TEACHER in t.ablate else ""
    members = [read_model_file(f.student(base.student_contrasts, selection))["meta"]
               for f in folds]
    if all("reliability" in m for m in members):
        entries["reliability"] = ensemble_entry([m["reliability"] for m in members])
    return entries


def write_ensemble(base: Run, folds: list[GroupRun], tau: float,
                   entries: dict[str, Any] | None = None, member_calibration: bool = False
                   ) -> None:
    """The ensemble file of the folds' students, beside the ``fold-<k>/`` folders."""
    from bids_amyloid.models import save_ensemble

    selection = NO_TEACHER if NO_TEACHER in base.cfg.train.ablate else ""
    contrasts = base.student_contrasts
    members = [files.student(contrasts, selection) for files in folds]
    meta = {"role": "student", "contrasts": list(contrasts), "run_name": base.opts.run_name,
            "thresholds": {"0.5": 0.5, "tau": float(tau)},
            "tau_source": "F1-maximising on the pooled validation predictions of the folds"
                          + (" (each calibrated by its fold)" if member_calibration else ""),
            "cv_folds": len(folds), "selection": selection or "best val f1@tau",
            **(entries or {})}
    save_ensemble(base.files.ensemble(contrasts, selection), members, meta,
                  folds=list(range(len(folds))), member_calibration=member_calibration)


def run_cv(base: Run, cohort: pd.DataFrame, phases: list[str],
           contrasts: tuple[str, ...]) -> pd.DataFrame | None:
    """All outer folds, then (rank 0) OOF predictions, ``cv_metrics.tsv`` and the ensemble.

    ``base`` is the run without data (its folder is the run folder); ``contrasts``
    are those the datasets read (teacher's and student's). Returns the CV table on
    rank 0, None elsewhere.
    """
    k = base.cfg.train.cv_folds
    usable, missing = check_caches(cohort, base.opts.output_dir, contrasts, with_pet=True)
    if len(missing):        # folds over the rows that can be used: every one tested once
        LOG.warning("%d cohort rows lack slice caches and are left out of every fold (listed in "
                    "%s); run the participant level for them", len(missing), base.files.missing)
        if base.writer:
            write_tsv(base.files.missing, missing)
    if usable.empty:
        raise InputMissingError(
            f"--cv {k}: none of the {len(cohort)} cohort pairs has slice caches in "
            f"{base.opts.output_dir}: run the participant level first (contrasts "
            f"{', '.join(contrasts)} and PET)")
    folds = [run_fold(base, fold, fc, phases, contrasts)
             for fold, fc in enumerate(fold_cohorts(usable, k, base.cfg.cohort))]
    if not base.writer:
        return None
    model = student_name(base)
    preds = fold_predictions(folds, model)
    oof = preds[preds["split"] == "test"].reset_index(drop=True)
    val = preds[preds["split"] == "val"]
    write_tsv(base.files.oof_predictions, oof)
    t = base.cfg.train

    def tau_of(frame: pd.DataFrame) -> float:
        return best_threshold(frame["label"].to_numpy(int), frame["probability"].to_numpy(float),
                              t.threshold_grid)

    calibrated = members_calibrated(preds)
    # the ensemble works on the members' calibrated scale when they all have one: its τ,
    # calibration and operating points come from the pooled calibrated validation predictions
    ens_val = val.assign(probability=val["probability_calibrated"]) if calibrated else val
    tau = tau_of(ens_val)
    entries = ensemble_entries(base, folds, ens_val, tau)
    if calibrated:
        pooled = [pooled_row("pooled", oof, "probability", tau_of(val), None, t.bootstrap, t.seed),
                  pooled_row("pooled_calibrated", oof, "probability_calibrated", tau, entries,
                             t.bootstrap, t.seed)]
    else:
        pooled = [pooled_row("pooled", oof, "probability", tau, entries, t.bootstrap, t.seed)]
    table = cv_table(folds, model, pooled)
    write_tsv(base.files.cv_metrics, table)
    write_cv_report(base.files, base.cfg, table, oof)
    write_ensemble(base, folds, tau, entries, member_calibration=calibrated)
    log_summary(table, k)
    return table


def log_summary(table: pd.DataFrame, k: int) -> None:
    """Per-fold AUC, mean ± sd, and the pooled AUC with its CI, in the log."""
    by = table.set_index("fold")
    folds = ", ".join(f"{by.loc[str(f), 'auc']:.3f}" for f in range(k))
    pooled = by.loc["pooled"]
    LOG.info("--cv %d test AUC per fold: %s; mean %.3f ± %.3f (sd); pooled out-of-fold AUC "
             "%.3f (95%% CI %.3f–%.3f, subject bootstrap)", k, folds, by.loc["mean", "auc"],
             by.loc["sd", "auc"], pooled["auc"], pooled["auc_ci_low"], pooled["auc_ci_high"])
    if "pooled_calibrated" in by.index:
        cal = by.loc["pooled_calibrated"]
        LOG.info("--cv %d pooled out-of-fold AUC after each fold's calibration: %.3f (95%% CI "
                 "%.3f–%.3f)", k, cal["auc"], cal["auc_ci_low"], cal["auc_ci_high"])
    if not np.isfinite(float(pooled["auc"])):
        LOG.warning("pooled AUC undefined: the out-of-fold predictions hold a single class")
