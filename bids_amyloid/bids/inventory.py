"""The inventory of BIDS_DIR: MRI sessions and amyloid PET scans, with dates and Centiloid.

Tracer from the ``trc-`` entity, else the sidecar's ``TracerName``, else an ``acq-``
label naming a tracer (OASIS-3's raw naming); PET that is not an amyloid tracer (FDG,
tau) is skipped with a reason.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from bids_amyloid.bids.centiloid_columns import CentiloidSource, centiloid_source, read_centiloid
from bids_amyloid.bids.layout import (
    QUERY_OF_CONTRAST,
    build_layout,
    check_filters,
    entity_labels,
    name_entities,
    pick_run,
    query_files,
    sidecar_metadata,
)
from bids_amyloid.bids.pairing import select_sessions
from bids_amyloid.bids.records import Inventory, MRISession, PETScan, SkippedScan
from bids_amyloid.bids.tables import Tables, resolve_date
from bids_amyloid.bids.validation import validate_bids
from bids_amyloid.config import MRI_CONTRASTS, AppConfig
from bids_amyloid.errors import (
    InputMissingError,
    NothingSelectedError,
    UsageError,
)
from bids_amyloid.options import RunOptions
from bids_amyloid.tracers import normalise_tracer

LOG = logging.getLogger(__name__)


def _mri_sessions(layout: Any, opts: RunOptions, tables: Tables) -> list[MRISession]:
    chosen: dict[tuple[str, str], dict[str, Path]] = defaultdict(dict)
    for contrast in MRI_CONTRASTS:
        groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
        for f in query_files(layout, QUERY_OF_CONTRAST[contrast], opts):
            groups[entity_labels(f)].append(f)
        for (sub, ses), files in groups.items():
            label = f"sub-{sub}" + (f" ses-{ses}" if ses else "") + f" {contrast}"
            chosen[(sub, ses)][contrast] = pick_run(files, label)
    sessions = []
    for (sub, ses), images in sorted(chosen.items()):
        first = next(images[c] for c in MRI_CONTRASTS if c in images)
        date, source = resolve_date(tables, sub, ses, first)
        ordered = {c: images[c] for c in MRI_CONTRASTS if c in images}
        sessions.append(MRISession(sub, ses, date, source, ordered))
    return sessions


def pet_tracer(path: Path, root: Path) -> tuple[str | None, str]:
    """Canonical tracer of a PET file and where it came from, or (None, reason)."""
    ents = name_entities(path)
    names = []
    if ents.get("trc"):
        names.append((ents["trc"], "trc- entity"))
    meta = sidecar_metadata(path, root)
    if meta.get("TracerName"):
        names.append((str(meta["TracerName"]), "sidecar TracerName"))
    declared = list(names)  # trc- and TracerName declare a tracer; acq- only may name one
    if ents.get("acq"):
        names.append((ents["acq"], "acq- entity"))
    for name, where in names:
        try:
            tracer = normalise_tracer(name)
        except ValueError:
            continue
        others = {normalise_tracer(n) for n, _ in names if _known(n)} - {tracer}
        if others:
            LOG.warning("%s: tracer %s from the %s, but also %s elsewhere; using %s",
                        path, tracer, where, ", ".join(sorted(others)), tracer)
        return tracer, where
    if not declared:
        return None, "unknown_tracer: no trc- entity and no TracerName in the sidecar"
    listed = ", ".join(f"{n!r} ({w})" for n, w in declared)
    return None, f"not_amyloid_tracer: {listed} is not a known amyloid tracer"


def _known(name: str) -> bool:
    try:
        normalise_tracer(name)
    except ValueError:
        return False
    return True


def _pet_scans(layout: Any, opts: RunOptions, tables: Tables, source: CentiloidSource
               ) -> tuple[list[PETScan], list[SkippedScan]]:
    groups: dict[tuple[str, str, str], list[Path]] = defaultdict(list)
    skipped = []
    for f in query_files(layout, "pet", opts):
        sub, ses = entity_labels(f)
        tracer, where = pet_tracer(f, Path(opts.bids_dir))
        if tracer is None:
            skipped.append(SkippedScan(sub, ses, f, where))
            LOG.info("skipping %s: %s", f.name, where)
        else:
            groups[(sub, ses, tracer)].append(f)
    per_subject: dict[str, int] = defaultdict(int)
    per_session: dict[tuple[str, str], int] = defaultdict(int)
    for sub, ses, _ in groups:
        per_subject[sub] += 1
        per_session[(sub, ses)] += 1
    scans = []
    for (sub, ses, tracer), files in sorted(groups.items()):
        path = pick_run(files, f"sub-{sub} ses-{ses} {tracer} PET")
        date, date_source = resolve_date(tables, sub, ses, path)
        rows = [("scans.tsv", tables.scans_row(sub, ses, path))]
        if per_session[(sub, ses)] == 1:  # a session-level value belongs to this scan only
            rows.append(("sessions.tsv", tables.session_row(sub, ses)))
        if per_subject[sub] == 1:  # a subject-level value likewise
            rows.append(("participants.tsv", tables.participant_row(sub)))
        value, note = read_centiloid(rows, tracer, source)
        if value is None and len(rows) < 3 and note.startswith("centiloid_missing"):
            note += (" (sessions.tsv/participants.tsv values are not used for a session/subject "
                     "with several amyloid PET scans: put Centiloid in scans.tsv)")
        scans.append(PETScan(sub, ses, tracer, date, date_source, path, value, note))
    return scans, skipped


def _check_labels(opts: RunOptions, found: set[str]) -> None:
    missing = sorted(set(opts.participant_labels) - found)
    if missing:
        raise NothingSelectedError(
            f"no MRI or amyloid PET found for participant(s) {', '.join(missing)} "
            f"in {opts.bids_dir} (after filters)")


def collect_inventory(opts: RunOptions, cfg: AppConfig) -> Inventory:
    """Validate (unless skipped), index and read everything the run may use.

    Raises InvalidBIDSError (exit 16) for an invalid dataset, NothingSelectedError
    (exit 18) when the labels/filters select nothing or name absent subjects, and
    UsageError for bad filters, columns or equations.
    """
    bids_dir = Path(opts.bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputMissingError(f"{bids_dir} has no dataset_description.json: not a BIDS dataset")
    check_filters(opts.bids_filters)
    source = centiloid_source(cfg)
    absent = [s for s in opts.participant_labels if not (bids_dir / f"sub-{s}").is_dir()]
    if absent:
        raise NothingSelectedError(f"no folder for participant(s) {', '.join(absent)} "
                                   f"in {bids_dir}")
    work = Path(opts.work_dir) if opts.work_dir else Path(opts.output_dir) / "work"
    if not opts.skip_bids_validation:
        warnings = validate_bids(bids_dir, subjects=opts.participant_labels, scratch=work)
        if warnings:
            LOG.info("bids-validator-deno warnings: %s", ", ".join(warnings))
    layout = build_layout(bids_dir, work, opts.participant_labels)
    tables = Tables(bids_dir)
    mri = _mri_sessions(layout, opts, tables)
    pet, skipped = _pet_scans(layout, opts, tables, source)
    if source.column and pet and not tables.has_column(source.column):
        raise UsageError(f"--centiloid-column {source.column!r}: no such column in "
                         f"participants.tsv or any sessions.tsv/scans.tsv of {bids_dir}")
    inv = Inventory(tuple(mri), tuple(pet), tuple(skipped))
    if opts.session_labels:
        inv = _select_sessions(inv, opts, cfg)
    if not inv.mri and not inv.pet:
        raise NothingSelectedError(f"nothing selected in {bids_dir}: no MRI "
                                   f"({', '.join(MRI_CONTRASTS)}) or amyloid PET matches the "
                                   "participant/session labels and filters")
    _check_labels(opts, {m.sub for m in inv.mri} | {p.sub for p in inv.pet})
    LOG.info("found %d MRI sessions and %d amyloid PET scans of %d subjects (%d PET skipped)",
             len(inv.mri), len(inv.pet), len({m.sub for m in inv.mri} | {p.sub for p in inv.pet}),
             len(inv.skipped))
    return inv


def _select_sessions(inv: Inventory, opts: RunOptions, cfg: AppConfig) -> Inventory:
    """``--session-label``: the labelled sessions and their pairing partners (logged)."""
    present = {m.ses for m in inv.mri} | {p.ses for p in inv.pet} | {s.ses for s in inv.skipped}
    absent = [label for label in opts.session_labels if label not in present]
    if absent:
        LOG.warning("--session-label: no MRI or amyloid PET in session(s) %s (after filters)",
                    ", ".join(f"ses-{label}" for label in absent))
    try:
        return select_sessions(inv, opts.session_labels, cfg.cohort, opts.teacher_contrasts)
    except ValueError as err:
        raise UsageError(str(err)) from err
