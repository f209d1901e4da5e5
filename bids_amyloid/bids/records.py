"""What the BIDS reader returns: MRI sessions, amyloid PET scans, skipped scans, the inventory.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class MRISession:
    """One MRI session and the file chosen for each contrast it has."""

    sub: str
    ses: str  # "" for a dataset without sessions
    date: datetime.date | None
    date_source: str
    images: dict[str, Path]  # contrast → NIfTI


@dataclass(frozen=True)
class PETScan:
    """One amyloid PET scan, its date and its Centiloid (or why it has none)."""

    sub: str
    ses: str
    tracer: str
    date: datetime.date | None
    date_source: str
    path: Path
    centiloid: float | None
    centiloid_note: str  # the source, or "<code>: <detail>" when missing/invalid


@dataclass(frozen=True)
class SkippedScan:
    """A PET file that cannot be used at all (unknown or non-amyloid tracer)."""

    sub: str
    ses: str
    path: Path
    reason: str  # "<code>: <detail>"


@dataclass(frozen=True)
class Inventory:
    """Everything selected from BIDS_DIR."""

    mri: tuple[MRISession, ...]
    pet: tuple[PETScan, ...]
    skipped: tuple[SkippedScan, ...] = field(default=())
