"""The predict level from start to end: model, plan, caches, inference, tables, saliency."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bids_amyloid import __version__
from bids_amyloid import derivatives as drv
from bids_amyloid.config import AppConfig, config_to_dict
from bids_amyloid.derivatives import PredictRun, session_label
from bids_amyloid.errors import EXIT_OK, EXIT_SESSION_FAILED, NothingSelectedError, UsageError
from bids_amyloid.io import remove_stale_temporaries, write_json, write_tsv
from bids_amyloid.options import RunOptions
from bids_amyloid.predict.inference import infer
from bids_amyloid.predict.model import SEEN_SPLITS, PredictModel, load_predict_model
from bids_amyloid.predict.pages import write_run_page
from bids_amyloid.predict.plan import (
    SessionPlan,
    locate_caches,
    plan_sessions,
    preprocess_missing,
)
from bids_amyloid.predict.tables import (
    EXCLUDED_COLUMNS,
    PREDICTION_COLUMNS,
    evaluation_table,
    metrics_table,
    model_points,
    predictions_table,
)

LOG = logging.getLogger(__name__)


def warn_seen_subjects(predictions: pd.DataFrame, opts: RunOptions) -> None:
    """Warn about subjects that were train or val subjects of the model (they shaped it)."""
    seen = predictions[predictions["cohort_split"].isin(SEEN_SPLITS)]
    flagged = sorted(set(seen["participant_id"]))
    if flagged and not opts.allow_training_subjects:
        shown = ", ".join(flagged[:10]) + (" …" if len(flagged) > 10 else "")
        LOG.warning("%d subject(s) were in the model's training cohort as train or val "
                    "subjects (%s): their predictions are optimistic and flagged in "
                    "cohort_split; --allow-training-subjects silences this warning",
                    len(flagged), shown)


def check_reliability(plans: list[SessionPlan], embeddings: dict[tuple[str, str], np.ndarray],
                      model: PredictModel, roots: list[Path]) -> dict[tuple[str, str], str]:
    """``reliability`` of each session (:mod:`bids_amyloid.reliability`): its embedding and
    its preprocessing QC numbers (read where its slice caches are) against the training
    cohort's; flagged sessions are logged."""
    from bids_amyloid.reliability import read_session_qc, session_reliability

    out = {}
    for plan in plans:
        sub, ses = plan.key
        first = plan.contrasts[0]
        root = next((r for r in roots
                     if plan.caches.get(first) == drv.mri_slice_cache(r, sub, ses, first)), None)
        record = read_session_qc(root, sub, ses) if root is not None else None
        emb = embeddings.get(plan.key)
        out[plan.key] = session_reliability(model.meta, None if emb is None else emb[None],
                                            record, plan.contrasts)
        if out[plan.key].startswith("flagged"):
            LOG.warning("sub-%s %s: prediction written but %s", sub, session_label(ses),
                        out[plan.key])
    return out


def run_predict(opts: RunOptions, cfg: AppConfig) -> int:
    """Predict every selected MRI session; return the exit code (1 if a session failed)."""
    if opts.model is None:
        raise UsageError("predict needs --model PATH (a student_*.pt file)")
    model = load_predict_model(opts.model, cfg)
    LOG.info("model %s: %s, contrasts %s, tau %.3f, backbone %s", model.path, model.sha256[:12],
             "+".join(model.contrasts), model.tau, model.network.backbone.info.name)
    files = PredictRun.of(opts.output_dir, model.name)
    drv.init_output(opts.output_dir, opts.bids_dir)
    if files.folder.exists():
        remove_stale_temporaries(files.folder)

    from bids_amyloid.bids import collect_inventory

    inv = collect_inventory(opts, cfg)
    plans, excluded = plan_sessions(inv.mri, model.contrasts)
    if not plans:
        write_tsv(files.excluded, pd.DataFrame(excluded), EXCLUDED_COLUMNS)
        raise NothingSelectedError(
            f"no selected MRI session has {' or '.join(model.contrasts)}, which "
            f"{model.path.name} needs ({len(excluded)} session(s) listed in {files.excluded})")
    todo = locate_caches(plans, model, opts, files.derivatives)
    failures = preprocess_missing(todo, model, opts)
    for (sub, ses), reason in sorted(failures.items()):
        excluded.append({"participant_id": f"sub-{sub}", "session_id": session_label(ses),
                         "reason": f"preprocessing_failed: {reason}"})
    ready = [p for p in plans if p.key not in failures]
    embeddings: dict[tuple[str, str], np.ndarray] = {}
    probs = infer(ready, model, embeddings=embeddings)
    reliability = check_reliability(ready, embeddings, model, [opts.output_dir, files.derivatives])
    predictions = predictions_table(ready, probs, model, reliability)
    write_tsv(files.predictions, predictions, PREDICTION_COLUMNS)
    write_tsv(files.excluded,
              pd.DataFrame(excluded).sort_values(["participant_id", "session_id"])
              if excluded else pd.DataFrame(), EXCLUDED_COLUMNS)
    warn_seen_subjects(predictions, opts)

    evaluation = evaluation_table(inv, ready, predictions, model)
    metrics = None
    if not evaluation.empty:
        write_tsv(files.evaluation, evaluation)
        metrics = metrics_table(evaluation, model, cfg)
        write_tsv(files.metrics, metrics)
        LOG.info("metrics on %d labelled MRI–PET pairs written to %s", len(evaluation),
                 files.metrics)
    write_run_page(predictions, model, files, evaluation, metrics)
    if opts.saliency and ready:
        from bids_amyloid.predict.saliency import write_saliency

        write_saliency(ready, model, predictions, files)
    elif ready:
        from bids_amyloid.predict.saliency import write_pages

        write_pages(predictions, model, files)
    write_json(files.provenance, {
        "GeneratedBy": {"Name": "bids-amyloid", "Version": __version__},
        "Model": {"Path": str(model.path), "SHA256": model.sha256,
                  "Contrasts": list(model.contrasts), "Tau": model.tau,
                  "OperatingPoints": model_points(model),
                  "Calibration": model.meta.get("calibration"),
                  "Backbone": model.network.backbone.info.to_dict()},
        "BIDSDir": str(opts.bids_dir),
        "Sessions": {"predicted": len(predictions), "excluded": len(excluded),
                     "failed": len(failures)},
        "Configuration": config_to_dict(model.cfg),
    })
    LOG.info("predicted %d session(s) → %s; %d excluded, %d failed", len(predictions),
             files.predictions, len(excluded), len(failures))
    return EXIT_SESSION_FAILED if failures else EXIT_OK
