"""Outputs of a group run: ``predictions.tsv``, ``metrics.tsv``, figures and ``report.html``.

Figures are drawn with matplotlib's object API (no pyplot state, no display
needed) and embedded in the HTML as base64 PNG, so the report is one file.
"""

from __future__ import annotations

import html
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_amyloid import __version__
from bids_amyloid.calibration import PlattScaling, reliability_figure
from bids_amyloid.config import AppConfig, dump_config
from bids_amyloid.derivatives import GroupRun
from bids_amyloid.evaluation import (
    OPERATING_POINTS,
    decisions,
    evaluation_table,
    operating_point_view,
)
from bids_amyloid.io import atomic_path, write_text, write_tsv
from bids_amyloid.pages import html_page, png_img
from bids_amyloid.train.data import SliceCacheDataset

LOG = logging.getLogger(__name__)


def prediction_frame(dataset: SliceCacheDataset, out: dict[str, np.ndarray], model: str,
                     split: str, tau: float, points: dict[str, float] | None = None,
                     calibration: PlattScaling | None = None) -> pd.DataFrame:
    """Per-sample predictions of one model on one split.

    ``probability`` is the model's output; ``probability_calibrated`` the same
    after the model file's calibration (``n/a`` without one); ``positive@P``
    the decision at each operating point (thresholds on ``probability``;
    ``n/a`` where the file records no such point).
    """
    rows = dataset.rows.iloc[out["index"].astype(int)].reset_index(drop=True)
    logits = out["logit"].astype(float)
    probs = 1.0 / (1.0 + np.exp(-logits))
    chosen = points if points is not None else {"0.5": 0.5, "tau": float(tau)}
    frame = pd.DataFrame({
        "model": model, "split": split,
        "participant_id": rows["participant_id"].astype(str),
        "mri_session": rows["mri_session"].astype(str),
        "pet_session": rows["pet_session"].astype(str),
        "tracer": rows["tracer"].astype(str),
        "centiloid": pd.to_numeric(rows["centiloid"], errors="coerce"),
        "label": rows["label"].astype(int),
        "probability": probs,
        "probability_calibrated": (calibration.apply_logits(logits) if calibration is not None
                                   else np.full(probs.size, np.nan)),
        **{f"positive@{name}": column for name, column in decisions(probs, chosen).items()},
        "threshold_tau": tau,
    })
    return frame


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _write_png(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _roc_axes(ax: Any) -> None:
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")


def _roc(ax: Any, labels: np.ndarray, probs: np.ndarray, label: str, **style: Any) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    if np.unique(labels).size < 2:
        return
    fpr, tpr, _ = roc_curve(labels, probs)
    ax.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(labels, probs):.2f})", **style)


def _roc_legend(ax: Any) -> None:
    """The curves' legend, or a note where no curve could be drawn (a single class)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "one class only: no ROC", ha="center", va="center",
                transform=ax.transAxes)


def load_histories(paths: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    return {phase: json.loads(p.read_text()) for phase, p in paths.items() if p.is_file()}


def roc_epochs_figure(histories: dict[str, list[dict[str, Any]]]) -> bytes | None:
    """Validation ROC of each phase's first and last epoch (cf. the paper's Fig. 8)."""
    from matplotlib.figure import Figure

    phases = [p for p, rows in histories.items() if rows and "_probs" in rows[0]]
    if not phases:
        return None
    fig = Figure(figsize=(4.2 * len(phases), 4.2))
    for k, phase in enumerate(phases):
        ax = fig.add_subplot(1, len(phases), k + 1)
        rows = histories[phase]
        for row, style in ((rows[0], {"color": "tab:orange", "ls": "--"}),
                           (rows[-1], {"color": "tab:blue"})):
            _roc(ax, np.asarray(row["_labels"]), np.asarray(row["_probs"]),
                 f"epoch {row['epoch']}", **style)
        _roc_axes(ax)
        ax.set_title(f"{phase}: validation")
        _roc_legend(ax)
    return _png(fig)


def roc_test_figure(predictions: pd.DataFrame) -> bytes | None:
    """ROC of every model on the test split (validation if there is no test split)."""
    from matplotlib.figure import Figure

    split = "test" if (predictions["split"] == "test").any() else "val"
    subset = predictions[predictions["split"] == split]
    if subset.empty:
        return None
    fig = Figure(figsize=(4.6, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    for model, group in subset.groupby("model", sort=False):
        _roc(ax, group["label"].to_numpy(), group["probability"].to_numpy(), str(model))
    _roc_axes(ax)
    ax.set_title(f"final models: {split}")
    _roc_legend(ax)
    return _png(fig)


def curves_figure(histories: dict[str, list[dict[str, Any]]]) -> bytes | None:
    """Training loss and validation metrics per epoch, one column per phase."""
    from matplotlib.figure import Figure

    phases = [p for p, rows in histories.items() if rows]
    if not phases:
        return None
    fig = Figure(figsize=(4.2 * len(phases), 6.4))
    for k, phase in enumerate(phases):
        frame = pd.DataFrame([{a: b for a, b in r.items() if not a.startswith("_")}
                              for r in histories[phase]])
        top = fig.add_subplot(2, len(phases), k + 1)
        for col in [c for c in frame.columns
                    if c.startswith("train_") and c not in ("train_samples", "train_valid")]:
            top.plot(frame["epoch"], frame[col], marker=".", label=col[6:])
        top.set_title(f"{phase}: training losses")
        top.legend(fontsize=7)
        bottom = fig.add_subplot(2, len(phases), len(phases) + k + 1)
        for col in ("val_auc", "val_f1@0.5", "val_f1@tau", "val_cosine", "val_score",
                    "val_valid_triplets"):
            if col in frame and frame[col].notna().any():
                bottom.plot(frame["epoch"], frame[col], marker=".", label=col[4:])
        bottom.set_title(f"{phase}: validation")
        bottom.set_xlabel("epoch")
        bottom.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _img(data: bytes | None, alt: str) -> str:
    if data is None:
        return f"<p><em>{html.escape(alt)}: not available</em></p>"
    return png_img(data, alt)


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="n/a",
                         border=0, classes="t")


def cohort_summary(cohort: pd.DataFrame) -> pd.DataFrame:
    """Sessions, subjects and % positive per split (the paper's Table 1)."""
    rows = []
    for split in ("train", "val", "test"):
        part = cohort[cohort["split"] == split]
        rows.append({"split": split, "pairs": len(part),
                     "subjects": part["participant_id"].nunique(),
                     "positive %": 100.0 * part["label"].mean() if len(part) else float("nan"),
                     "tracers": ", ".join(sorted(part["tracer"].astype(str).unique()))})
    return pd.DataFrame(rows)


def metrics_view(metrics: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader looks at first."""
    out = metrics[["model", "split", "n", "n_positive"]].copy()
    out[["n", "n_positive"]] = out[["n", "n_positive"]].astype(int)
    out["AUC [95% CI]"] = [f"{a:.3f} [{lo:.3f}–{hi:.3f}]" for a, lo, hi in
                           zip(metrics["auc"], metrics["auc_ci_low"], metrics["auc_ci_high"],
                               strict=True)]
    for col in ("f1@0.5", "accuracy@0.5", "threshold", "f1@tau", "accuracy@tau",
                "sensitivity@tau", "specificity@tau", "npv@tau", "brier_raw", "brier_calibrated",
                "ece_raw", "ece_calibrated"):
        out[col] = metrics[col]
    return out


def _normalise_points(taus: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per model, its operating points; a bare τ stands for ``{0.5, τ}``."""
    return {str(model): dict(value) if isinstance(value, dict)
            else {"0.5": 0.5, "tau": float(value)} for model, value in taus.items()}


def calibration_split(predictions: pd.DataFrame) -> str:
    """The split the calibration figures and operating-point tables use: test, else val."""
    return "test" if (predictions["split"] == "test").any() else "val"


def reliability_test_figure(predictions: pd.DataFrame) -> bytes | None:
    """Reliability diagram of each calibrated model on the test split, before and after."""
    split = calibration_split(predictions)
    subset = predictions[predictions["split"] == split]
    panels = {}
    for model, group in subset.groupby("model", sort=False):
        calibrated = group["probability_calibrated"].to_numpy(float) \
            if "probability_calibrated" in group else np.array([np.nan])
        if not np.isfinite(calibrated).all():
            continue
        y = group["label"].to_numpy(int)
        panels[f"{model}: {split}"] = {"before": (y, group["probability"].to_numpy(float)),
                                       "after": (y, calibrated)}
    return reliability_figure(panels) if panels else None


def operating_point_tables(metrics: pd.DataFrame, split: str,
                           calibrations: dict[str, PlattScaling | None]) -> str:
    """HTML: per model, its operating points on ``split`` (rates with subject-bootstrap CIs)."""
    parts = []
    for row in metrics[metrics["split"] == split].to_dict("records"):
        if not any(f"threshold@{p}" in row and np.isfinite(row[f"threshold@{p}"])
                   for p in OPERATING_POINTS[2:]):
            continue
        calibration = calibrations.get(str(row["model"]))
        view = operating_point_view(row, calibration.apply if calibration else None)
        parts.append(f"<h3><code>{html.escape(str(row['model']))}</code> on {split} "
                     f"(n = {int(row['n'])}, {int(row['n_positive'])} positive)</h3>"
                     + _table(view))
    return "".join(parts) or "<p><em>no model records rule-out/rule-in points</em></p>"


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table.t { border-collapse: collapse; font-size: 0.9em; }
table.t td, table.t th { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: right; }
img { max-width: 100%; } pre { background: #f6f6f6; padding: 1em; font-size: 0.8em; }
.note { color: #555; }
"""
BODY = """<h1>bids-amyloid {version} — group run <code>{name}</code></h1>
<ul class="note">{notes}</ul>
<h2>Cohort</h2>{cohort}
<h2>Metrics</h2>
<p class="note">Positive if p &gt; threshold. τ maximises F1 on validation; AUC CI: 95 % bootstrap
resampling subjects ({n_boot}×). Validation chose epochs, checkpoints and τ, so its figures are
optimistic; test is the honest estimate. Two students are kept: best validation F1@τ
(<code>student_*.pt</code>) and best validation teacher–student cosine
(<code>*_best-cosine.pt</code>).</p>
{metrics}
<h2>Calibration</h2>
<p class="note">The model's probabilities are recalibrated by Platt scaling
(<code>sigmoid(a·logit + b)</code>, fitted on validation, stored in the model file), which is
needed because training draws classes at equal rates. The diagram bins the {split} predictions
into 10 equal-width probability bins and plots the observed fraction positive against the mean
predicted probability: on the diagonal, a probability of 0.3 means 3 in 10 are positive.
ECE is the count-weighted mean distance to the diagonal; Brier is the mean squared error of
the probability (lower is better for both). Calibration never changes the ranking, so AUC and
every decision below are the same before and after.</p>{reliability}
<h2>Operating points</h2>
<p class="note">Thresholds chosen on validation (on the model's probability; the calibrated
equivalent alongside): 0.5; τ (F1-max); <b>rule-out</b>, the highest threshold keeping
validation sensitivity ≥ {rule_out:.2f} — a session below it would skip amyloid PET, and
<i>PET avoided</i> is the fraction of sessions below it, NPV the chance such a session is truly
negative; <b>rule-in</b>, the lowest threshold keeping validation specificity ≥ {rule_in:.2f}.
Rates on {split} with 95 % subject-bootstrap CIs; on small test sets the CIs are wide.</p>
{operating_points}
<h2>ROC curves</h2>{roc_test}{roc_epochs}
<h2>Training</h2>{curves}
<h2>Configuration</h2><details><summary>config.toml</summary><pre>{config}</pre></details>"""


def write_outputs(files: GroupRun, cfg: AppConfig, cohort: pd.DataFrame,
                  predictions: pd.DataFrame, taus: dict[str, Any],
                  history_paths: dict[str, Path], notes: list[str] | None = None,
                  calibrations: dict[str, PlattScaling | None] | None = None) -> pd.DataFrame:
    """Write predictions, metrics, figures and the HTML report; return the metrics table.

    ``taus``: per model its operating points (or a bare τ); ``calibrations``: per model the
    model file's calibration, for the thresholds' calibrated equivalents.
    """
    write_tsv(files.predictions, predictions)
    metrics = evaluation_table(predictions, _normalise_points(taus), n_boot=cfg.train.bootstrap,
                               seed=cfg.train.seed)
    write_tsv(files.metrics, metrics)
    histories = load_histories(history_paths)
    figures = {"roc_epochs": roc_epochs_figure(histories),
               "roc_test": roc_test_figure(predictions),
               "reliability": reliability_test_figure(predictions),
               "training_curves": curves_figure(histories)}
    for name, data in figures.items():
        if data is not None:
            _write_png(files.figure(name), data)
    name = files.folder.name
    split = calibration_split(predictions)
    body = BODY.format(
        name=html.escape(name), version=__version__,
        notes="".join(f"<li>{html.escape(n)}</li>" for n in notes or []),
        cohort=_table(cohort_summary(cohort)), n_boot=cfg.train.bootstrap,
        metrics=_table(metrics_view(metrics)), split=split,
        reliability=_img(figures["reliability"], f"reliability diagram, {split}"),
        rule_out=cfg.train.rule_out_sensitivity, rule_in=cfg.train.rule_in_specificity,
        operating_points=operating_point_tables(metrics, split, calibrations or {}),
        roc_test=_img(figures["roc_test"], "ROC of the final models"),
        roc_epochs=_img(figures["roc_epochs"], "validation ROC, first vs last epoch"),
        curves=_img(figures["training_curves"], "training curves"),
        config=html.escape(dump_config(cfg)))
    write_text(files.report, html_page(f"bids-amyloid group run {name}", body, CSS))
    LOG.info("wrote %s", files.report)
    return metrics


CV_COLUMNS = ("threshold", "f1@tau", "sensitivity@tau", "specificity@tau", "npv@tau",
              "threshold@rule_out", "sensitivity@rule_out", "npv@rule_out",
              "pet_avoided@rule_out", "brier_raw", "brier_calibrated", "ece_raw", "ece_calibrated")
CV_BODY = """<h1>bids-amyloid cross-validation {name}</h1>
<p>bids-amyloid {version}. {k} outer folds over subjects: each fold's student is tested on its
held-out fold (its τ, calibration and operating points come from its own validation fold).
<code>mean</code> and <code>sd</code> are over the folds; <code>pooled</code> puts every
subject's out-of-fold prediction together (AUC with a {n_boot}× subject-bootstrap 95 % CI);
<code>pooled_calibrated</code> does so after each fold's calibration, at the ensemble's
operating points. Per-fold files: <code>fold-&lt;k&gt;/report.html</code>.</p>
<h2>Per fold and pooled (test)</h2>{table}
<h2>Calibration of the pooled out-of-fold predictions</h2>{reliability}
"""


def cv_view(table: pd.DataFrame) -> pd.DataFrame:
    """``cv_metrics.tsv`` as a reader wants it: AUC with CI, then the operating points."""
    out = pd.DataFrame({"fold": table["fold"].astype(str),
                        "n": [f"{float(v):g}" for v in table["n"]],
                        "n_positive": [f"{float(v):g}" for v in table["n_positive"]]})
    out["AUC [95% CI]"] = [f"{a:.3f}" if not np.isfinite(lo) else f"{a:.3f} [{lo:.3f}–{hi:.3f}]"
                           for a, lo, hi in zip(table["auc"].astype(float),
                                                table["auc_ci_low"].astype(float),
                                                table["auc_ci_high"].astype(float), strict=True)]
    for col in CV_COLUMNS:
        if col in table:
            out[col] = pd.to_numeric(table[col], errors="coerce")
    return out


def write_cv_report(files: GroupRun, cfg: AppConfig, table: pd.DataFrame,
                    oof: pd.DataFrame) -> None:
    """The run-level page of ``--cv``: per-fold and pooled metrics, pooled reliability diagram."""
    figure = reliability_test_figure(oof)
    if figure is not None:
        _write_png(files.figure("reliability"), figure)
    body = CV_BODY.format(name=html.escape(files.folder.name), version=__version__,
                          k=cfg.train.cv_folds, n_boot=cfg.train.bootstrap,
                          table=_table(cv_view(table)),
                          reliability=_img(figure, "reliability diagram, out-of-fold"))
    write_text(files.report, html_page(f"bids-amyloid cross-validation {files.folder.name}",
                                       body, CSS))
    LOG.info("wrote %s", files.report)
