"""The participant level's plan: jobs (an MRI session and its PET scans), units and results.

A *job* is one MRI session (its requested contrasts, T1w first) plus every PET
scan paired with it; within a job each *unit* (the MRI session, then each PET
scan) succeeds or fails on its own (:mod:`bids_amyloid.participant.worker`).

Example
-------
>>> unit_tag("01"), unit_tag("02", "AV45"), unit_tag("", "PIB"), unit_tag("")
('ses-01', 'ses-02_trc-AV45', 'trc-PIB', 'mri')
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib

from bids_amyloid.bids.pairing import PET_CONTRAST
from bids_amyloid.config import MRI_CONTRASTS, AppConfig

LOG = logging.getLogger(__name__)
OUT_OF_WINDOW = "no_mri_within_window"  # pairing reason code of bids.pair_one


@dataclass(frozen=True)
class PetJob:
    """One PET scan to register through its job's MRI session."""

    ses: str
    tracer: str
    path: Path


@dataclass(frozen=True)
class SessionJob:
    """One MRI session's contrasts and the PET scans paired with it."""

    sub: str
    ses: str
    images: dict[str, Path]  # contrast → raw NIfTI, in MRI_CONTRASTS order
    pets: tuple[PetJob, ...] = ()


@dataclass(frozen=True)
class RunContext:
    """What every job needs besides its own inputs (picklable for worker processes)."""

    out: Path
    work: Path
    bids_dir: Path | None
    cfg: AppConfig
    threads: int = 1
    overwrite: bool = False
    log_level: int = logging.INFO


@dataclass(frozen=True)
class UnitResult:
    """Outcome of one unit: the MRI session (``tracer`` None) or one PET scan."""

    sub: str
    ses: str
    tracer: str | None = None
    error: str | None = None
    seconds: float = 0.0
    log: Path | None = None

    @property
    def label(self) -> str:
        return unit_tag(self.ses, self.tracer, " ")


def ses_tag(ses: str) -> str:
    """``ses-<label>``, or ``""`` for a dataset without sessions."""
    return f"ses-{ses}" if ses else ""


def unit_tag(ses: str, tracer: str | None = None, sep: str = "_") -> str:
    """Name of a unit in logs and file names: ``ses-01``, ``ses-02_trc-AV45``, ``mri``."""
    parts = [p for p in (ses_tag(ses), f"trc-{tracer}" if tracer else "") if p]
    return sep.join(parts) or "mri"


@dataclass
class Steps:
    """The image functions a job calls (``bids_amyloid.preproc`` science modules)."""

    preprocess_mri_session: Callable[..., dict[str, Any]]
    preprocess_pet: Callable[..., Any]
    extract_mri_slices: Callable[..., tuple[Any, list[int]]]
    extract_pet_slices: Callable[..., tuple[Any, list[int]]]
    load_template: Callable[..., nib.Nifti1Image]


def session_contrasts(available: dict[str, Path], wanted: Sequence[str]) -> dict[str, Path]:
    """The wanted contrasts a session has, plus its T1w (other contrasts register to it)."""
    keep = set(wanted) | {PET_CONTRAST}
    return {c: available[c] for c in MRI_CONTRASTS if c in available and c in keep}


def plan_jobs(sessions: Sequence[Any], contrasts: Sequence[str],
              pets_by_session: dict[tuple[str, str], list[PetJob]]) -> list[SessionJob]:
    """One job per MRI session having a wanted contrast (or PET to register)."""
    jobs = []
    for ses in sorted(sessions, key=lambda s: (s.sub, s.ses)):
        pets = tuple(pets_by_session.get((ses.sub, ses.ses), ()))
        images = session_contrasts(ses.images, contrasts)
        if not pets and not any(c in ses.images for c in contrasts):
            LOG.debug("sub-%s %s: none of %s; skipped", ses.sub, unit_tag(ses.ses), ", ".join(contrasts))
            continue
        jobs.append(SessionJob(ses.sub, ses.ses, images, pets))
    return jobs
