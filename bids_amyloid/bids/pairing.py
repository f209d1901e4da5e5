"""Pairing each PET scan with an MRI session of the same subject (closest date within a window).

One rule for every level: :func:`pair_scans` is what the participant level
registers each PET through and what the cohort lists it with. A session
qualifies when it has the T1w (the PET is registered to it) and every contrast
the run's models read (:func:`pairing_contrasts`).

``--session-label`` selects sessions by this rule too (:func:`select_sessions`):
a selected MRI session brings the PET scans paired with it, a selected PET
session brings the MRI session its PET is paired with, so PET and MRI kept in
different sessions (OASIS-3: ``ses-d0129`` MRI, ``ses-d0150`` PET) stay together.

Example
-------
>>> pairing_contrasts(("FLAIR",), ("T2w", "FLAIR"))
('T1w', 'T2w', 'FLAIR')
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from bids_amyloid.bids.records import Inventory, MRISession, PETScan, SkippedScan
from bids_amyloid.bids.tables import date_kind
from bids_amyloid.config import MRI_CONTRASTS, CohortConfig

LOG = logging.getLogger(__name__)
PET_CONTRAST = "T1w"  # every PET is registered through its MRI session's T1w
Pair = tuple[PETScan, MRISession | None, str]


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
                      ) -> list[Pair]:
    """Pair every PET scan with the closest MRI session (see :func:`pair_one`)."""
    return _pair(inv.mri, inv.pet, contrasts, window_days)


def _pair(mri: Sequence[MRISession], pets: Sequence[PETScan], contrasts: tuple[str, ...],
          window_days: int) -> list[Pair]:
    by_subject: dict[str, list[MRISession]] = defaultdict(list)
    for m in mri:
        by_subject[m.sub].append(m)
    return [(pet, *pair_one(pet, by_subject.get(pet.sub, []), contrasts, window_days))
            for pet in pets]


def pairing_contrasts(*groups: Sequence[str]) -> tuple[str, ...]:
    """The contrasts a session needs to be paired with a PET: the T1w and every one in
    ``groups`` (the cohort's and the teacher's), in the canonical order."""
    wanted = {PET_CONTRAST, *(c for group in groups for c in group)}
    unknown = sorted(wanted - set(MRI_CONTRASTS))
    if unknown:
        raise ValueError(f"unknown MRI contrast(s) {', '.join(unknown)}; "
                         f"known: {', '.join(MRI_CONTRASTS)}")
    return tuple(c for c in MRI_CONTRASTS if c in wanted)


def pair_scans(inv: Inventory, cohort: CohortConfig, teacher_contrasts: Sequence[str] = ()
               ) -> list[Pair]:
    """Every PET scan of ``inv`` with the MRI session it is registered through and listed with.

    The one pairing of the app: the participant level and the cohort both call
    it with the run's ``[cohort]`` configuration and teacher contrasts.
    """
    contrasts = pairing_contrasts(cohort.contrasts, teacher_contrasts)
    return pair_pet_with_mri(inv, contrasts, cohort.pair_window_days)


def _pet_name(pet: PETScan) -> str:
    return f"sub-{pet.sub} ses-{pet.ses} {pet.tracer} PET"


def select_sessions(inv: Inventory, labels: Sequence[str], cohort: CohortConfig,
                    teacher_contrasts: Sequence[str] = ()) -> Inventory:
    """The part of ``inv`` that ``--session-label`` selects, with each session's partners.

    Kept: MRI sessions and PET scans whose session label is in ``labels``; the
    PET scans paired (:func:`pair_scans`, on the whole inventory) with one of
    those MRI sessions; the MRI session each of those PET scans is paired with.
    Each partner added is logged with the reason. Pairing the result again gives
    the same pairs (each kept PET's partner is kept, and is still the closest).
    """
    chosen = set(labels)
    pairs = pair_scans(inv, cohort, teacher_contrasts)
    mri = {(m.sub, m.ses): m for m in inv.mri if m.ses in chosen}
    pets = {p.path: p for p in inv.pet if p.ses in chosen}
    for pet, session, reason in pairs:
        if session is None:
            continue
        apart = reason.rpartition(", ")[2]  # "paired: ses-X, 21 days apart"
        if pet.path in pets and (session.sub, session.ses) not in mri:
            mri[(session.sub, session.ses)] = session
            LOG.info("--session-label: MRI sub-%s ses-%s added: the selected %s is paired with "
                     "it (%s)", session.sub, session.ses, _pet_name(pet), apart)
        elif session.ses in chosen and pet.path not in pets:
            pets[pet.path] = pet
            LOG.info("--session-label: %s added: paired with the selected MRI ses-%s (%s)",
                     _pet_name(pet), session.ses, apart)
    for pet, session, reason in pairs:
        if pet.path in pets and session is None:
            LOG.info("--session-label: %s selected, but it pairs with no MRI session (%s)",
                     _pet_name(pet), reason)
    skipped: tuple[SkippedScan, ...] = tuple(s for s in inv.skipped if s.ses in chosen)
    kept = Inventory(tuple(m for m in inv.mri if (m.sub, m.ses) in mri),
                     tuple(p for p in inv.pet if p.path in pets), skipped)
    LOG.info("--session-label %s: %d MRI sessions and %d PET scans selected (%s)",
             " ".join(labels), len(kept.mri), len(kept.pet),
             ", ".join(f"sub-{m.sub} ses-{m.ses} MRI" for m in kept.mri) or "no MRI")
    return kept


def days_apart(mri: MRISession, pet: PETScan) -> int:
    """Absolute days between an MRI session and a PET scan (both dated)."""
    if mri.date is None or pet.date is None:
        raise ValueError(f"sub-{mri.sub}: undated session")
    return abs((mri.date - pet.date).days)
