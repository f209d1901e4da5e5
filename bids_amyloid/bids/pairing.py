"""Pairing each PET scan with an MRI session of the same subject (closest date within a window).
"""

from __future__ import annotations

import logging
from collections import defaultdict

from bids_amyloid.bids.records import Inventory, MRISession, PETScan
from bids_amyloid.bids.tables import date_kind

LOG = logging.getLogger(__name__)


def _candidates_text(sessions: list[MRISession]) -> str:
    return ", ".join(f"ses-{m.ses}: {'+'.join(m.images)}" for m in sessions)


def pair_one(pet: PETScan, sessions: list[MRISession], contrasts: tuple[str, ...],
             window_days: int) -> tuple[MRISession | None, str]:
    """The closest MRI session of ``pet``'s subject with all ``contrasts`` within the window.

    Returns ``(session, "paired: …")`` or ``(None, "<code>: <detail>")`` with code
    ``no_mri``, ``missing_contrast``, ``no_date``, ``dates_not_comparable`` or
    ``no_mri_within_window``. Ties: earlier MRI first, then session label.
    """
    who = f"sub-{pet.sub}"
    if not sessions:
        return None, f"no_mri: {who} has no MRI session"
    complete = [m for m in sessions if all(c in m.images for c in contrasts)]
    if not complete:
        return None, (f"missing_contrast: no MRI session of {who} has all of "
                      f"{'+'.join(contrasts)} ({_candidates_text(sessions)})")
    if pet.date is None:
        return None, f"no_date: PET {pet.path.name}: {pet.date_source}"
    dated = [m for m in complete if m.date is not None]
    if not dated:
        return None, f"no_date: no MRI session of {who} with {'+'.join(contrasts)} has a date"
    comparable = [m for m in dated if date_kind(m.date_source) == date_kind(pet.date_source)]
    if not comparable:
        return None, (f"dates_not_comparable: PET date from {pet.date_source}, MRI dates from "
                      f"{dated[0].date_source}")
    pet_date = pet.date

    def distance(m: MRISession) -> tuple[int, bool, str]:
        mri_date = m.date or pet_date  # every candidate is dated
        return abs((mri_date - pet_date).days), mri_date > pet_date, m.ses

    best = min(comparable, key=distance)
    days = distance(best)[0]
    if days > window_days:
        return None, (f"no_mri_within_window: closest MRI with {'+'.join(contrasts)} is "
                      f"ses-{best.ses}, {days} days from the PET (window {window_days})")
    return best, f"paired: ses-{best.ses}, {days} days apart"


def pair_pet_with_mri(inv: Inventory, contrasts: tuple[str, ...], window_days: int
                      ) -> list[tuple[PETScan, MRISession | None, str]]:
    """Pair every PET scan with the closest MRI session (see :func:`pair_one`)."""
    by_subject: dict[str, list[MRISession]] = defaultdict(list)
    for m in inv.mri:
        by_subject[m.sub].append(m)
    return [(pet, *pair_one(pet, by_subject.get(pet.sub, []), contrasts, window_days))
            for pet in inv.pet]


def days_apart(mri: MRISession, pet: PETScan) -> int:
    """Absolute days between an MRI session and a PET scan (both dated)."""
    if mri.date is None or pet.date is None:
        raise ValueError(f"sub-{mri.sub}: undated session")
    return abs((mri.date - pet.date).days)
