"""A trained run's outputs: every model file scored on validation and test, then the report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bids_amyloid.calibration import PlattScaling
from bids_amyloid.derivatives import CheckpointFolder
from bids_amyloid.evaluation import recorded_points
from bids_amyloid.train import report
from bids_amyloid.train.context import SPLITS, Run
from bids_amyloid.train.plan import NO_TEACHER, PHASES
from bids_amyloid.train.stages import load_network, predict_split


def model_files(run: Run) -> list[tuple[str, Path, str, tuple[str, ...]]]:
    """``(name, path, role, contrasts)`` of each model file the run has."""
    files: list[tuple[str, Path, str, tuple[str, ...]]] = []
    teacher = run.opts.teacher or run.files.teacher
    if teacher.is_file():
        files.append(("teacher", teacher, "teacher", run.teacher_contrasts))
    for selection in ("", "best-cosine", NO_TEACHER):
        path = run.files.student(run.student_contrasts, selection)
        if path.is_file():
            files.append((path.stem, path, "student", run.student_contrasts))
    return files


def evaluation_predictions(run: Run) -> tuple[pd.DataFrame, dict[str, float],
                                              dict[str, dict[str, float]],
                                              dict[str, PlattScaling | None]]:
    """Per-sample validation and test predictions of every model file, and each one's τ,
    operating points and calibration."""
    frames, taus, points, calibrations = [], {}, {}, {}
    for name, path, role, contrasts in model_files(run):
        model, meta = load_network(path, run)
        taus[name] = float(meta.get("thresholds", {}).get("tau", 0.5))
        points[name] = recorded_points(meta, taus[name])
        calibrations[name] = PlattScaling.from_meta(meta)
        for split in SPLITS[1:]:
            if len(run.data[split]) == 0:
                continue
            out = predict_split(run, model, role, contrasts, split)
            frames.append(report.prediction_frame(run.data[split], out, name, split, taus[name],
                                                  points[name], calibrations[name]))
    return pd.concat(frames, ignore_index=True), taus, points, calibrations


def evaluate(run: Run) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and metrics of every model file of the run, and its report (rank 0).

    Returns ``(predictions, metrics)``, the rows of ``predictions.tsv`` and ``metrics.tsv``.
    """
    predictions, _, points, calibrations = evaluation_predictions(run)
    histories = {p: CheckpointFolder(run.ckpt(p)).history for p in (*PHASES, NO_TEACHER)}
    metrics = report.write_outputs(run.files, run.cfg, run.cohort, predictions, points,
                                   histories, notes=notes(run), calibrations=calibrations)
    return predictions, metrics


def notes(run: Run) -> list[str]:
    """The report's notes on how the run was set up."""
    cfg = run.cfg
    lines = [f"backbone: {cfg.model.backbone}" + (
        " (randomly initialised, test/demo only)" if cfg.model.backbone != "biomedclip" else ""),
        f"teacher contrasts: {'+'.join(run.teacher_contrasts)}; student contrasts: "
        f"{'+'.join(run.student_contrasts)}",
        f"Centiloid gap for negatives: {cfg.contrastive.cl_gap}"]
    if cfg.train.ablate:
        lines.append("ablations: " + ", ".join(cfg.train.ablate))
    if run.opts.teacher:
        lines.append(f"cross-dataset distillation from {run.opts.teacher} (phases 1–2 skipped)")
    lines.append("validation chose the epochs, the checkpoints and τ; test is reported for both "
                 "student selections, labelled")
    return lines
