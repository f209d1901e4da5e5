"""The predict run's summary page, ``report.html``: operating points, flagged sessions and,
where the dataset has Centiloid labels, calibration and the rates at each operating point."""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bids_amyloid.calibration import PlattScaling, reliability_figure
from bids_amyloid.evaluation import operating_point_view
from bids_amyloid.io import atomic_path, write_text
from bids_amyloid.pages import html_page, png_img
from bids_amyloid.predict.tables import model_operating_table, rates_source

if TYPE_CHECKING:
    from pathlib import Path

    from bids_amyloid.derivatives import PredictRun
    from bids_amyloid.predict.model import PredictModel

LOG = logging.getLogger(__name__)
CSS = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
       "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
       "img{max-width:100%}.warn{color:#a00}.note{color:#555}")
HOW_TO_READ = (
    "<p class='note'><code>probability</code> is the model's output; "
    "<code>probability_calibrated</code> the same ranking mapped (Platt scaling fitted on the "
    "model's validation set) so that, on data like the training cohort's, about 30 of 100 "
    "sessions at 0.3 are amyloid positive. Each <code>positive_at_*</code> column is the "
    "decision at one operating point below. A <b>rule-out</b> negative is the screening use: "
    "the threshold kept validation sensitivity at the configured level, so few positives fall "
    "below it and those sessions could skip amyloid PET. <b>Rule-in</b> positives are "
    "positive with high specificity. <code>reliability</code> flags a session whose "
    "preprocessing QC or whose student embedding is outside the training cohort's range; its "
    "prediction is written but should be reviewed, not used.</p>")


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0, na_rep="n/a")


def labelled_sections(evaluation: pd.DataFrame, metrics: pd.DataFrame,
                      calibration: PlattScaling | None, files: PredictRun) -> str:
    """HTML of the labelled part: reliability diagram (also written as PNG) and each set's
    operating-point rates with subject-bootstrap CIs."""
    parts = ["<h2>Against Centiloid labels</h2>"]
    y = evaluation["label"].to_numpy(int)
    calibrated = evaluation["probability_calibrated"].to_numpy(float)
    curves = {"before": (y, evaluation["probability"].to_numpy(float))}
    if np.isfinite(calibrated).all():
        curves["after"] = (y, calibrated)
    png = reliability_figure({f"{len(y)} labelled MRI–PET pairs": curves})
    with atomic_path(files.reliability_figure) as tmp:
        tmp.write_bytes(png)
    parts.append("<p class='note'>Reliability diagram: 10 equal-width probability bins, "
                 "observed fraction positive against mean probability; on the diagonal the "
                 "probabilities mean what they say. ECE: count-weighted mean distance to the "
                 "diagonal; Brier: mean squared error (lower is better).</p>"
                 + png_img(png, "reliability diagram"))
    for row in metrics.to_dict("records"):
        parts.append(f"<h3>{html.escape(str(row['set']))}: n = {int(row['n'])} "
                     f"({int(row['n_positive'])} positive), AUC {row['auc']:.3f}</h3>"
                     + _table(operating_point_view(row, calibration.apply if calibration
                                                   else None)))
    return "".join(parts)


def write_run_page(predictions: pd.DataFrame, model: PredictModel, files: PredictRun,
                   evaluation: pd.DataFrame | None = None, metrics: pd.DataFrame | None = None
                   ) -> Path:
    """``report.html`` of a predict run."""
    esc = html.escape
    flagged = predictions[predictions["reliability"].astype(str).str.startswith("flagged")]
    parts = [f"<h1>bids-amyloid predict — <code>{esc(model.name)}</code></h1>",
             f"<p>{len(predictions)} session(s) predicted, {len(flagged)} flagged as "
             f"unreliable. Model SHA-256 {esc(model.sha256[:16])}…. Per-subject pages: "
             "<code>sub-*.html</code>; all numbers in <code>predictions.tsv</code>.</p>",
             HOW_TO_READ, "<h2>Operating points of the model</h2>",
             f"<p class='note'>Thresholds on <code>probability</code>; "
             f"{esc(rates_source(model))}.</p>", _table(model_operating_table(model))]
    parts.append("<h2>Flagged sessions</h2>")
    if flagged.empty:
        parts.append("<p>none</p>")
    else:
        parts.append(_table(flagged[["participant_id", "session_id", "probability",
                                     "reliability"]]))
    if evaluation is not None and not evaluation.empty and metrics is not None:
        parts.append(labelled_sections(evaluation, metrics, PlattScaling.from_meta(model.meta),
                                       files))
    page = write_text(files.report, html_page(f"predict {model.name}", "\n".join(parts), CSS))
    LOG.info("wrote %s", page)
    return page
