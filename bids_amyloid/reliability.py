"""Is a session like the training cohort? The predict level's reliability flag.

Two checks, each against numbers the group level stores in the model file
(``meta["reliability"]``, a few kB):

- **embedding**: the student's pooled embedding (128-d) of the session, as a
  standardised distance to the training embeddings' mean,
  ``sqrt(mean(((e − mean) / sd)²))`` with the per-dimension mean and sd of
  the train split; flagged beyond the 99th percentile of the same distance
  over the train and validation sessions (validation is included because the
  network has fitted its training sessions and would otherwise set too tight
  a limit);
- **preprocessing QC**: the participant level's QC numbers of the session
  (``…_desc-anat_qc.json``: brain-mask Dice with the template, correlation
  with the template after registration, ANTs registration correlation, per
  contrast) below the 1st percentile of the training sessions' values, and
  the participant level's own QC flags (``Flags`` in that file).

A flagged session is still predicted; ``predictions.tsv`` and its page say why.

Example
-------
>>> ref = fit_embedding_reference(np.eye(4)[[0, 1, 2, 3] * 5] * 0.1 + 1.0)
>>> ref.distance(np.full((1, 4), 1.025)).round(3).tolist()  # the mean itself
[0.0]
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_amyloid import derivatives as drv

LOG = logging.getLogger(__name__)
EMBEDDING_PERCENTILE = 99.0
QC_PERCENTILE = 1.0
# QC numbers where low means a worse strip/registration (participant/staging.py, preproc/mri.py)
QC_KEYS = ("template_mask_dice", "template_correlation", "registration_correlation")
_MIN_SD = 1e-6


@dataclass(frozen=True)
class EmbeddingReference:
    """Per-dimension mean and sd of the training embeddings, and the distance limit."""

    mean: np.ndarray
    sd: np.ndarray
    limit: float

    def distance(self, embeddings: np.ndarray) -> np.ndarray:
        """Standardised distance of each row of ``embeddings`` (N, D) to the training mean."""
        e = np.atleast_2d(np.asarray(embeddings, dtype=float))
        if e.shape[1] != self.mean.size:
            raise ValueError(f"embeddings of size {e.shape[1]}, the reference has {self.mean.size}")
        return np.sqrt(np.mean(((e - self.mean) / self.sd) ** 2, axis=1))

    def to_meta(self) -> dict[str, Any]:
        return {"mean": [float(v) for v in self.mean], "sd": [float(v) for v in self.sd],
                "limit": float(self.limit), "percentile": EMBEDDING_PERCENTILE}

    @classmethod
    def from_meta(cls, entry: dict[str, Any]) -> EmbeddingReference:
        mean, sd = np.asarray(entry["mean"], float), np.asarray(entry["sd"], float)
        if mean.shape != sd.shape or mean.ndim != 1 or not np.isfinite(entry["limit"]):
            raise ValueError("the model file's embedding reference is malformed")
        return cls(mean, sd, float(entry["limit"]))


def fit_embedding_reference(train: np.ndarray, val: np.ndarray | None = None
                            ) -> EmbeddingReference:
    """Reference from the train split's embeddings (N, D); the limit is the 99th percentile
    of the distances of train and ``val`` embeddings together."""
    train = np.atleast_2d(np.asarray(train, dtype=float))
    if train.shape[0] < 2:
        raise ValueError(f"an embedding reference needs ≥ 2 training embeddings, got "
                         f"{train.shape[0]}")
    mean = train.mean(axis=0)
    sd = np.maximum(train.std(axis=0), _MIN_SD)
    ref = EmbeddingReference(mean, sd, float("inf"))
    pool = train if val is None or len(val) == 0 else np.vstack([train, np.asarray(val, float)])
    return EmbeddingReference(mean, sd, float(np.percentile(ref.distance(pool),
                                                            EMBEDDING_PERCENTILE)))


def read_session_qc(root: Path, sub: str, ses: str) -> dict[str, Any] | None:
    """The participant level's QC record of an MRI session (``Numbers``, ``Flags``), or None."""
    path = drv.qc_numbers_path(root, sub, ses)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as err:
        LOG.warning("unreadable QC numbers %s: %s", path, err)
        return None
    return record if isinstance(record, dict) else None


def cohort_qc_records(out: Path, rows: Any) -> list[dict[str, Any] | None]:
    """QC records of the distinct MRI sessions of cohort ``rows`` (columns ``participant_id``,
    ``mri_session``), read from the participant level's outputs in ``out``."""
    keys = sorted({(str(r.participant_id).removeprefix("sub-"),
                    "" if r.mri_session in ("n/a", "") else str(r.mri_session).removeprefix("ses-"))
                   for r in rows.itertuples(index=False)})
    return [read_session_qc(out, sub, ses) for sub, ses in keys]


def qc_reference(records: list[dict[str, Any] | None], contrasts: tuple[str, ...]
                 ) -> dict[str, dict[str, float]]:
    """Per contrast and :data:`QC_KEYS` entry: the 1st percentile of the training sessions'
    values (keys without values are left out)."""
    out: dict[str, dict[str, float]] = {}
    for contrast in contrasts:
        for key in QC_KEYS:
            values = [float(r["Numbers"][contrast][key]) for r in records
                      if r and isinstance(r.get("Numbers", {}).get(contrast), dict)
                      and isinstance(r["Numbers"][contrast].get(key), int | float)]
            values = [v for v in values if np.isfinite(v)]
            if values:
                out.setdefault(contrast, {})[key] = float(np.percentile(values, QC_PERCENTILE))
    return out


def reference_meta(train_embeddings: np.ndarray, val_embeddings: np.ndarray | None,
                   qc_records: list[dict[str, Any] | None], contrasts: tuple[str, ...]
                   ) -> dict[str, Any]:
    """The model file's ``reliability`` entry (group level)."""
    return {"embedding": fit_embedding_reference(train_embeddings, val_embeddings).to_meta(),
            "qc_low": qc_reference(qc_records, contrasts), "qc_percentile": QC_PERCENTILE,
            "n_qc_sessions": sum(r is not None for r in qc_records)}


def ensemble_entry(member_entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``reliability`` entry of an ensemble from its members' entries (each member's model
    file holds one): every member's embedding reference, in member order (the ensemble's
    embedding is the members' side by side), and per QC number the median of the members'
    floors."""
    if not member_entries:
        raise ValueError("an ensemble's reliability entry needs its members' entries")
    floors: dict[str, dict[str, list[float]]] = {}
    for entry in member_entries:
        for contrast, keys in entry.get("qc_low", {}).items():
            for key, value in keys.items():
                floors.setdefault(contrast, {}).setdefault(key, []).append(float(value))
    return {"members": [entry["embedding"] for entry in member_entries],
            "qc_low": {c: {k: float(np.median(v)) for k, v in keys.items()}
                       for c, keys in floors.items()},
            "qc_percentile": QC_PERCENTILE}


def embedding_reasons(entry: dict[str, Any], embedding: np.ndarray) -> list[str]:
    """Why an embedding (1, D) is outside the training cohort's range (empty: inside).

    An ensemble's entry (``members``) splits it into the members' embeddings; it is
    flagged when most members place it beyond their limit.
    """
    if "members" in entry:
        refs = [EmbeddingReference.from_meta(m) for m in entry["members"]]
        parts = np.split(np.atleast_2d(embedding), np.cumsum([r.mean.size for r in refs])[:-1],
                         axis=1)
        beyond = [float(r.distance(part)[0]) > r.limit for r, part in zip(refs, parts,
                                                                           strict=True)]
        if sum(beyond) * 2 > len(refs):
            return [f"student embedding beyond its training cohort's "
                    f"{EMBEDDING_PERCENTILE:g}th-percentile distance for {sum(beyond)} of "
                    f"{len(refs)} ensemble members"]
        return []
    ref = EmbeddingReference.from_meta(entry["embedding"])
    dist = float(ref.distance(embedding)[0])
    if dist > ref.limit:
        return [f"student embedding distance {dist:.2f} to the training cohort beyond its "
                f"{EMBEDDING_PERCENTILE:g}th percentile {ref.limit:.2f}"]
    return []


def qc_reasons(record: dict[str, Any] | None, contrasts: tuple[str, ...],
               low: dict[str, dict[str, float]]) -> list[str]:
    """Why a session's preprocessing QC is outside the training cohort's range (empty: fine)."""
    if record is None:
        return []
    reasons = []
    for contrast in contrasts:
        numbers = record.get("Numbers", {}).get(contrast) or {}
        for key, floor in low.get(contrast, {}).items():
            value = numbers.get(key)
            if isinstance(value, int | float) and not value >= floor:
                reasons.append(f"{contrast} {key} {value:.3f} below the training cohort's "
                               f"{QC_PERCENTILE:g}st percentile {floor:.3f}")
        reasons.extend(f"{contrast} QC: {flag}" for flag in record.get("Flags", {}).get(contrast,
                                                                                         []))
    return reasons


def reliability_label(reasons: list[str], unchecked: list[str]) -> str:
    """``predictions.tsv``'s ``reliability``: ``ok``, ``ok (not checked: …)`` or
    ``flagged: reason; reason``."""
    if reasons:
        return "flagged: " + "; ".join(reasons)
    if unchecked:
        return "ok (not checked: " + "; ".join(unchecked) + ")"
    return "ok"


def session_reliability(meta: dict[str, Any], embedding: np.ndarray | None,
                        qc_record: dict[str, Any] | None, contrasts: tuple[str, ...]) -> str:
    """The ``reliability`` value of one session under a model file's ``meta``."""
    entry = meta.get("reliability")
    if not isinstance(entry, dict):
        return reliability_label([], ["the model file records no training-cohort reference"])
    reasons, unchecked = [], []
    if embedding is not None and ("embedding" in entry or "members" in entry):
        reasons.extend(embedding_reasons(entry, embedding))
    else:
        unchecked.append("embedding")
    if qc_record is None:
        unchecked.append("no preprocessing QC numbers")
    reasons.extend(qc_reasons(qc_record, contrasts, entry.get("qc_low", {})))
    return reliability_label(reasons, unchecked)
