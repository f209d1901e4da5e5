"""The best MRI-only ranking a simulated cohort allows (the *oracle*).

The simulated MRI shows amyloid only through two numbers per session
(:mod:`bids_amyloid.sim.plan`): cortical thinning and ventricle growth, each an
age term plus a linear term in :func:`~bids_amyloid.sim.plan.mri_amyloid_signal`
plus subject- and session-level nuisance. An MRI-only model can at best
recover these two numbers from the image, so the oracle score of an MRI
session is their Fisher linear discriminant ``w · (thinning, ventricle_mm)``.
``w`` is estimated once, from the simulator's own generative process, on a
large planned cohort (no images: :func:`~bids_amyloid.sim.plan.plan_cohort`
with :func:`~bids_amyloid.sim.plan.thinning` and
:func:`~bids_amyloid.sim.plan.ventricle_growth` and the session noise),
labelled positive when the latent Centiloid exceeds :data:`REFERENCE_THRESHOLD`.
It never sees the subjects it scores.

The oracle AUC of a set of MRI sessions is the AUC of their oracle scores
against the labels the caller gives (e.g. the group level's ``cohort.tsv``).
The true values come from ``sourcedata/simulation/parameters.tsv``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bids_amyloid.sim.plan import (
    THINNING_SESSION_SD,
    VENTRICLE_SESSION_SD,
    plan_cohort,
    thinning,
    ventricle_growth,
)
from bids_amyloid.sim.writer import TRUTH_FOLDER

#: Centiloid above which a reference session counts as positive (between the
#: PiB and AV45 thresholds, 16.4 and 20.6; the direction barely depends on it).
REFERENCE_THRESHOLD = 18.5
REFERENCE_SUBJECTS = 4000
REFERENCE_SEED = 20260


def reference_sample(n_subjects: int = REFERENCE_SUBJECTS, seed: int = REFERENCE_SEED
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Morphology (n, 2: thinning, ventricle mm) and labels of every planned MRI session."""
    rng = np.random.default_rng([seed, 7])
    features, labels = [], []
    for plan in plan_cohort(n_subjects, seed, "full"):
        for ses in plan.sessions:
            if ses.kind != "mri":
                continue
            age, latent = plan.age_at(ses.day), plan.centiloid(ses.day)
            thin = thinning(age, latent, plan.thinning_offset
                            + rng.normal(0.0, THINNING_SESSION_SD))
            vent = ventricle_growth(age, latent, plan.ventricle_offset
                                    + rng.normal(0.0, VENTRICLE_SESSION_SD))
            features.append((thin, vent))
            labels.append(latent > REFERENCE_THRESHOLD)
    return np.asarray(features), np.asarray(labels, dtype=int)


def fisher_direction(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Fisher's discriminant ``Σ_w⁻¹ (μ₁ − μ₀)`` (pooled within-class covariance), unit length."""
    pos, neg = features[labels == 1], features[labels == 0]
    pooled = ((len(pos) - 1) * np.cov(pos.T) + (len(neg) - 1) * np.cov(neg.T)) / (len(features) - 2)
    w = np.linalg.solve(pooled, pos.mean(axis=0) - neg.mean(axis=0))
    return w / np.linalg.norm(w)


@functools.lru_cache(maxsize=1)
def oracle_direction() -> tuple[float, float]:
    """Weights of (thinning, ventricle mm) in the oracle score."""
    w = fisher_direction(*reference_sample())
    return float(w[0]), float(w[1])


def oracle_score(thinning_fraction: np.ndarray | float, ventricle_mm: np.ndarray | float
                 ) -> np.ndarray:
    """Oracle score(s) of sessions with the given true morphology (higher = more amyloid)."""
    w_thin, w_vent = oracle_direction()
    return w_thin * np.asarray(thinning_fraction, float) + w_vent * np.asarray(ventricle_mm, float)


def read_parameters(bids_dir: Path) -> pd.DataFrame:
    """The simulator's per-session truth table of ``bids_dir``."""
    path = Path(bids_dir) / TRUTH_FOLDER / "parameters.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no simulation truth (is {bids_dir} a simulated cohort?)")
    return pd.read_csv(path, sep="\t")


def _prefixed(label: str, prefix: str) -> str:
    return label if str(label).startswith(prefix) else f"{prefix}{label}"


def oracle_scores(bids_dir: Path, sessions: Iterable[tuple[str, str]]) -> np.ndarray:
    """Oracle scores of MRI sessions ``(subject, session)`` (with or without ``sub-``/``ses-``)."""
    table = read_parameters(bids_dir)
    table = table[table["modality"] == "mri"].set_index(["participant_id", "session_id"])
    keys = [(_prefixed(s, "sub-"), _prefixed(t, "ses-")) for s, t in sessions]
    absent = [k for k in keys if k not in table.index]
    if absent:
        raise KeyError(f"{Path(bids_dir) / TRUTH_FOLDER / 'parameters.tsv'}: no simulated MRI "
                       f"session {absent[0][0]}/{absent[0][1]}"
                       + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""))
    rows = table.loc[keys]
    return oracle_score(rows["cortical_thinning"].to_numpy(), rows["ventricle_growth_mm"].to_numpy())


def oracle_auc(bids_dir: Path, sessions: Sequence[tuple[str, str]],
               labels: Sequence[int] | np.ndarray) -> float:
    """AUC of the oracle scores of MRI ``sessions`` against ``labels`` (NaN with one class)."""
    from bids_amyloid.evaluation import auc

    y = np.asarray(labels)
    if len(y) != len(sessions):
        raise ValueError(f"{len(sessions)} sessions but {len(y)} labels")
    return auc(y, oracle_scores(bids_dir, sessions))
