"""Reading real-world BIDS: MRI sessions, amyloid PET scans, dates and Centiloid.

What is read, and from where:

- **Images** with pybids (a layout built with ``validate=False``; its database
  lives in the work dir or in memory, never in BIDS_DIR): T1w, T2w, FLAIR,
  T2starw under ``anat/``, ``*_pet.nii[.gz]`` under ``pet/``. Each query can be
  narrowed by ``--bids-filter-file`` (keys ``t1w``, ``t2w``, ``flair``,
  ``t2starw``, ``pet``; values are pybids entity filters, ``null`` = entity
  absent, ``"*"`` = any value). Several runs of one contrast in a session: the
  lowest ``run`` (then the file name) is used, and the choice is logged.
- **Tracer** from the ``trc-`` entity, else the sidecar's ``TracerName``, else
  an ``acq-`` label naming a tracer (OASIS-3's raw naming); aliases are
  normalised (:func:`bids_amyloid.tracers.normalise_tracer`). PET that is not
  an amyloid tracer (FDG, tau) is skipped with a reason.
- **Dates**, first found wins: ``scans.tsv`` ``acq_time`` of the file;
  ``sessions.tsv`` ``acq_time``; ``sessions.tsv`` ``examination_date``
  (Clinica's ADNI converter); a day offset from a session label ``ses-d0129``
  or a ``source_session_id`` like ``d0129`` (OASIS-3; such days are only
  comparable within one subject). The source is kept with each date.
- **Centiloid** from the PET file's ``scans.tsv`` row, the PET session's
  ``sessions.tsv`` row, or ``participants.tsv`` (one value per subject: used
  only for a subject with a single amyloid PET). The column is
  ``--centiloid-column`` or the first of :data:`CENTILOID_COLUMNS` present
  (case-insensitive). With ``--suvr-equation`` an SUVR column is converted
  instead, with an equation from :mod:`bids_amyloid.centiloid`.

Problems with one scan never stop the run: they are recorded as
``"<code>: <detail>"`` notes that the cohort turns into exclusion reasons.

Example
-------
>>> parse_date("2012-05-04T10:11:12"), parse_date("n/a")
(datetime.date(2012, 5, 4), None)
>>> day_offset("d0129"), day_offset("M000")
(129, None)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bids_amyloid.config import MRI_CONTRASTS, AppConfig
from bids_amyloid.errors import (
    InputMissingError,
    InvalidBIDSError,
    NothingSelectedError,
    UsageError,
)
from bids_amyloid.options import RunOptions
from bids_amyloid.tracers import normalise_tracer

LOG = logging.getLogger(__name__)

CENTILOID_COLUMNS = ("centiloid", "centiloids", "centiloid_fsuvr_rsf_tot_cortmean",
                     "centiloid_fsuvr_tot_cortmean", "pet_centiloid", "amyloid_centiloid")
NIFTI_EXTENSIONS = [".nii.gz", ".nii"]
BASE_QUERIES: dict[str, dict[str, Any]] = {
    "t1w": {"datatype": "anat", "suffix": "T1w"},
    "t2w": {"datatype": "anat", "suffix": "T2w"},
    "flair": {"datatype": "anat", "suffix": "FLAIR"},
    "t2starw": {"datatype": "anat", "suffix": "T2starw"},
    "pet": {"datatype": "pet", "suffix": "pet"},
}
QUERY_OF_CONTRAST = {"T1w": "t1w", "T2w": "t2w", "FLAIR": "flair", "T2starw": "t2starw"}
# Day offsets (OASIS-3) become dates counted from this epoch; their date_source
# starts with "day offset" and they are never compared with calendar dates.
DAY_OFFSET_EPOCH = datetime.date(1, 1, 1)
DAY_OFFSET_SOURCE = "day offset"
MISSING_CELLS = {"", "n/a", "na", "none", "null"}
IGNORED_FOLDERS = re.compile(r"^/(code|models|sourcedata|stimuli|derivatives|work)(/|$)")


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


# --------------------------------------------------------------------------- parsing


def is_missing(value: Any) -> bool:
    """True for an empty/``n/a`` TSV cell (or None)."""
    return value is None or str(value).strip().lower() in MISSING_CELLS


def parse_date(text: Any) -> datetime.date | None:
    """ISO date/datetime (``acq_time``, ``examination_date``) or ``MM/DD/YYYY`` → date."""
    if is_missing(text):
        return None
    value = str(text).strip()
    if re.match(r"^\d{4}-\d{2}-\d{2}", value):
        try:
            return datetime.date.fromisoformat(value[:10])
        except ValueError:
            return None
    try:
        return datetime.datetime.strptime(value, "%m/%d/%Y").date()
    except ValueError:
        return None


def day_offset(label: Any) -> int | None:
    """OASIS-style day offset: ``d0129`` / ``ses-d0129`` / ``OAS30001_MR_d0129`` → 129."""
    if is_missing(label):
        return None
    match = re.search(r"(?:^|[_-])d(\d+)$", str(label).strip())
    return int(match.group(1)) if match else None


def date_kind(source: str) -> str:
    """``"offset"`` for day-offset dates, ``"calendar"`` otherwise (never compared)."""
    return "offset" if source.startswith(DAY_OFFSET_SOURCE) else "calendar"


def read_tsv(path: Path) -> pd.DataFrame | None:
    """A BIDS TSV as strings (cells untouched), or None if absent."""
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        LOG.warning("%s: cannot read (%s); ignored", path, err)
        return None


def _column(columns: Iterable[Any], candidates: Iterable[str]) -> str | None:
    """First of ``candidates`` among ``columns`` (case-insensitive), as spelt there."""
    lower = {str(c).lower(): str(c) for c in columns}
    for name in candidates:
        if name.lower() in lower:
            return lower[name.lower()]
    return None


# --------------------------------------------------------------------------- tables


class Tables:
    """participants.tsv, sessions.tsv and scans.tsv of a dataset, read once each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.participants = read_tsv(root / "participants.tsv")
        self._sessions: dict[str, dict[str, dict[str, str]]] = {}
        self._scans: dict[tuple[str, str], dict[str, dict[str, str]]] = {}

    def participant_row(self, sub: str) -> dict[str, str]:
        table = self.participants
        if table is None or "participant_id" not in table.columns:
            return {}
        rows = table[table["participant_id"].str.removeprefix("sub-") == sub]
        return rows.iloc[0].to_dict() if len(rows) else {}

    def session_row(self, sub: str, ses: str) -> dict[str, str]:
        if sub not in self._sessions:
            table = read_tsv(self.root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv")
            rows: dict[str, dict[str, str]] = {}
            if table is not None and "session_id" in table.columns:
                for row in table.to_dict("records"):
                    rows[str(row["session_id"]).removeprefix("ses-")] = row
            self._sessions[sub] = rows
        return self._sessions[sub].get(ses, {})

    def scans_row(self, sub: str, ses: str, path: Path) -> dict[str, str]:
        folder = self.root / f"sub-{sub}" / (f"ses-{ses}" if ses else "")
        key = (sub, ses)
        if key not in self._scans:
            stem = f"sub-{sub}_ses-{ses}" if ses else f"sub-{sub}"
            table = read_tsv(folder / f"{stem}_scans.tsv")
            rows: dict[str, dict[str, str]] = {}
            if table is not None and "filename" in table.columns:
                for row in table.to_dict("records"):
                    rows[str(row["filename"]).strip().lstrip("./")] = row
            self._scans[key] = rows
        try:
            rel = path.relative_to(folder).as_posix()
        except ValueError:
            return {}
        return self._scans[key].get(rel, {})

    def has_column(self, name: str) -> bool:
        """Whether any participants/sessions/scans table has column ``name``."""
        lower = name.lower()
        tables = [self.participants, *(read_tsv(p) for p in sorted(self.root.glob(
            "sub-*/sub-*_sessions.tsv"))), *(read_tsv(p) for p in sorted(self.root.glob(
                "sub-*/**/sub-*_scans.tsv")))]
        return any(t is not None and lower in {str(c).lower() for c in t.columns} for t in tables)


def resolve_date(tables: Tables, sub: str, ses: str, path: Path) -> tuple[datetime.date | None, str]:
    """The acquisition date of ``path`` and where it came from (see module docstring)."""
    session = tables.session_row(sub, ses)
    cells = [("scans.tsv", "acq_time", tables.scans_row(sub, ses, path).get("acq_time")),
             ("sessions.tsv", "acq_time", session.get("acq_time")),
             ("sessions.tsv", "examination_date", session.get("examination_date"))]
    for table, column, cell in cells:
        date = parse_date(cell)
        if date is not None:
            return date, f"{table} {column}"
        if not is_missing(cell):
            LOG.warning("sub-%s ses-%s: cannot read %s %s %r as a date; trying the next source",
                        sub, ses, table, column, cell)
    days = day_offset(ses)
    if days is not None:
        return DAY_OFFSET_EPOCH + datetime.timedelta(days=days), f"{DAY_OFFSET_SOURCE} ses-{ses}"
    source_id = session.get("source_session_id")
    days = day_offset(source_id)
    if days is not None:
        return (DAY_OFFSET_EPOCH + datetime.timedelta(days=days),
                f"{DAY_OFFSET_SOURCE} source_session_id {source_id}")
    return None, ("no date: no acq_time in scans.tsv/sessions.tsv, no examination_date, "
                  "no day-offset session label")


# --------------------------------------------------------------------------- Centiloid


@dataclass(frozen=True)
class CentiloidSource:
    """How Centiloid is read: a column, or an SUVR column put through equations."""

    column: str | None  # user's --centiloid-column (None: auto-detect)
    equations: dict[str, Any]  # tracer → SUVREquation; empty = read Centiloid directly

    def candidates(self, tracer: str) -> tuple[str, ...]:
        if self.column:
            return (self.column,)
        if self.equations:
            return self.equations[tracer].columns
        return CENTILOID_COLUMNS


def centiloid_source(cfg: AppConfig) -> CentiloidSource:
    """Build the Centiloid reading rule from the config (UsageError on bad keys)."""
    equations: dict[str, Any] = {}
    if cfg.cohort.suvr_equation:
        from bids_amyloid.centiloid import parse_equations

        try:
            equations = parse_equations(cfg.cohort.suvr_equation)
        except ValueError as err:
            raise UsageError(f"--suvr-equation: {err}") from err
    return CentiloidSource(cfg.cohort.centiloid_column, equations)


def _cell_values(rows: list[tuple[str, dict[str, str]]], candidates: tuple[str, ...]
                 ) -> list[tuple[str, str]]:
    """Non-empty (``"<table> <column>"``, raw cell) pairs, first matching column per table."""
    found = []
    for table_name, row in rows:
        column = _column(row, candidates)
        if column is not None and not is_missing(row.get(column)):
            found.append((f"{table_name} {column}", str(row[column]).strip()))
    return found


def read_centiloid(rows: list[tuple[str, dict[str, str]]], tracer: str,
                   source: CentiloidSource) -> tuple[float | None, str]:
    """Centiloid of one scan from its candidate rows (most specific first).

    Returns ``(value, source description)`` or ``(None, "<code>: <detail>")`` with
    code ``centiloid_missing``, ``centiloid_non_numeric``, ``centiloid_nan``,
    ``centiloid_contradictory`` or ``no_suvr_equation``.
    """
    if source.equations and tracer not in source.equations:
        chosen = ", ".join(f"{e.key} ({t})" for t, e in sorted(source.equations.items()))
        return None, f"no_suvr_equation: no SUVR equation chosen for {tracer} (chosen: {chosen})"
    candidates = source.candidates(tracer)
    found = _cell_values(rows, candidates)
    if not found:
        what = "SUVR" if source.equations else "Centiloid"
        return None, f"centiloid_missing: no {what} value in columns {', '.join(candidates)}"
    values = []
    for where, raw in found:
        try:
            value = float(raw)
        except ValueError:
            return None, f"centiloid_non_numeric: {where} = {raw!r}"
        if not math.isfinite(value):
            return None, f"centiloid_nan: {where} = {raw!r}"
        values.append(value)
    if max(values) - min(values) > 1e-6:
        listed = ", ".join(f"{w} = {r}" for w, r in found)
        return None, f"centiloid_contradictory: {listed}"
    where, raw = found[0]
    if source.equations:
        eq = source.equations[tracer]
        value = round(eq.to_centiloid(values[0]), 2)  # the equations carry 0.01 CL at best
        return value, f"{where} SUVR {raw} -> Centiloid via {eq.key}"
    return values[0], where


# --------------------------------------------------------------------------- validation


def validator_executable() -> str:
    """``bids-validator-deno`` next to this Python, else on PATH."""
    local = Path(sys.executable).parent / "bids-validator-deno"
    if local.is_file():
        return str(local)
    found = shutil.which("bids-validator-deno")
    if found is None:
        raise UsageError("bids-validator-deno not found (pip install bids-validator-deno), "
                         "or pass --skip-bids-validation")
    return found


def _subset_view(bids_dir: Path, subjects: tuple[str, ...], scratch: Path) -> Path:
    """A folder of symlinks: BIDS_DIR's top-level files plus the chosen subjects only."""
    view = Path(tempfile.mkdtemp(prefix=".tmp-bids-view-", dir=scratch))
    for entry in sorted(bids_dir.iterdir()):
        is_subject = entry.name.startswith("sub-") and entry.is_dir()
        if not is_subject or entry.name.removeprefix("sub-") in subjects:
            (view / entry.name).symlink_to(entry.resolve())
    return view


def validate_bids(bids_dir: Path, timeout: float = 3600.0, subjects: tuple[str, ...] = (),
                  scratch: Path | None = None) -> list[str]:
    """Run ``bids-validator-deno``; raise InvalidBIDSError if it reports errors.

    With ``subjects`` and a ``scratch`` folder, only those subjects (and the
    top-level files) are validated, through a view of symlinks in ``scratch``:
    an array job of one subject does not re-validate the whole dataset.
    Returns the warning codes (with counts) for logging.
    """
    target, view = bids_dir, None
    if subjects and scratch is not None:
        try:
            scratch.mkdir(parents=True, exist_ok=True)
            target = view = _subset_view(bids_dir, subjects, scratch)
        except OSError as err:
            LOG.info("validating all of %s (no subset view: %s)", bids_dir, err)
    cmd = [validator_executable(), "--format", "json", str(target)]
    LOG.info("validating %s%s with bids-validator-deno (skip with --skip-bids-validation)",
             bids_dir, f" (sub-{', sub-'.join(subjects)})" if view else "")
    # deno caches compiled code under ~/.cache unless told otherwise: keep $HOME
    # untouched (read-only under Apptainer) by giving it a folder of its own.
    deno_dir = Path(tempfile.mkdtemp(prefix=".tmp-deno-", dir=scratch if view else None))
    env = {**os.environ, "DENO_DIR": str(deno_dir), "DENO_NO_UPDATE_CHECK": "1"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env=env)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise InvalidBIDSError(f"bids-validator-deno could not check {bids_dir}: {err}") from err
    finally:
        if view is not None:
            shutil.rmtree(view, ignore_errors=True)
        shutil.rmtree(deno_dir, ignore_errors=True)
    try:
        issues = json.loads(done.stdout)["issues"]["issues"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        tail = (done.stderr or done.stdout).strip()[-1000:]
        raise InvalidBIDSError(f"bids-validator-deno failed on {bids_dir} "
                               f"(exit {done.returncode}): {tail}") from err
    errors = [i for i in issues if i.get("severity") == "error"]
    if errors:
        lines = [f"  {i.get('code')}: {i.get('location', '')} {i.get('subCode') or ''}".rstrip()
                 for i in errors[:10]]
        more = f"\n  … and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise InvalidBIDSError(
            f"{bids_dir} is not valid BIDS ({len(errors)} errors):\n" + "\n".join(lines) + more
            + "\nrun bids-validator-deno on it for the full report, or pass --skip-bids-validation")
    counts: dict[str, int] = defaultdict(int)
    for issue in issues:
        counts[str(issue.get("code"))] += 1
    return [f"{code} ×{n}" for code, n in sorted(counts.items())]


# --------------------------------------------------------------------------- pybids


def _fingerprint(root: Path) -> str:
    """Hash of every file's relative path, size and mtime (cache key of the layout)."""
    digest = hashlib.sha256(f"{root.resolve()}\0index_metadata=False\n".encode())
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            try:
                st = path.stat()
            except OSError:
                continue
            digest.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build_layout(bids_dir: Path, work_dir: Path | None, subjects: tuple[str, ...] = ()) -> Any:
    """A pybids layout of ``bids_dir`` (``validate=False``).

    With ``subjects``, only their folders are indexed (array jobs stay fast) and
    nothing is cached. Otherwise the database is cached under
    ``work_dir/pybids/<fingerprint>`` (built under a temporary name, then renamed),
    so a changed dataset gets a new index. BIDS_DIR itself is never written.
    """
    import bids
    from bids.layout.validation import ALWAYS_IGNORE

    ignore: list[Any] = [IGNORED_FOLDERS, *ALWAYS_IGNORE]
    if subjects:
        keep = "|".join(re.escape(s) for s in subjects)
        ignore.append(re.compile(rf"^/sub-(?!({keep})(/|$))"))
    # Sidecars are not indexed (3x faster on big datasets): the one field needed,
    # TracerName, is read by sidecar_metadata() for PET files only.
    indexer = bids.BIDSLayoutIndexer(validate=False, ignore=ignore, index_metadata=False)
    if subjects or work_dir is None:
        return bids.BIDSLayout(bids_dir, validate=False, indexer=indexer)
    cache = work_dir / "pybids" / _fingerprint(bids_dir)
    if (cache / "layout_index.sqlite").is_file():
        LOG.debug("pybids: reusing the index in %s", cache)
        return bids.BIDSLayout(bids_dir, validate=False, database_path=cache, indexer=indexer)
    tmp = cache.with_name(f".tmp-{cache.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        LOG.warning("cannot cache the pybids index in %s (%s): indexing in memory", cache, err)
        return bids.BIDSLayout(bids_dir, validate=False, indexer=indexer)
    bids.BIDSLayout(bids_dir, validate=False, database_path=tmp, indexer=indexer)
    try:
        os.replace(tmp, cache)
    except OSError:  # another process cached the same dataset first
        shutil.rmtree(tmp, ignore_errors=True)
    return bids.BIDSLayout(bids_dir, validate=False, database_path=cache, indexer=indexer)


def _query(key: str, filters: dict[str, Any]) -> dict[str, Any]:
    """Base query of ``key`` with the user's filters (null → entity absent, "*" → any)."""
    from bids.layout import Query

    query = dict(BASE_QUERIES[key])
    for entity, value in filters.get(key, {}).items():
        if value is None:
            query[entity] = Query.NONE
        elif value == "*":
            query[entity] = Query.ANY
        else:
            query[entity] = value
    query["extension"] = NIFTI_EXTENSIONS
    return query


def check_filters(filters: dict[str, Any]) -> None:
    """``--bids-filter-file`` keys must be query names mapping to objects."""
    unknown = sorted(set(filters) - set(BASE_QUERIES))
    if unknown:
        raise UsageError(f"--bids-filter-file: unknown keys {unknown}; "
                         f"allowed: {', '.join(BASE_QUERIES)}")
    for key, value in filters.items():
        if not isinstance(value, dict):
            raise UsageError(f"--bids-filter-file: {key!r} must map to an object of entities")


def _get(layout: Any, key: str, opts: RunOptions) -> list[Path]:
    query = _query(key, opts.bids_filters)
    if opts.participant_labels:
        query["subject"] = list(opts.participant_labels)
    if opts.session_labels:
        query["session"] = list(opts.session_labels)
    try:
        return [Path(p) for p in layout.get(return_type="filename", **query)]
    except (ValueError, TypeError) as err:
        raise UsageError(f"--bids-filter-file: pybids refused the {key!r} query: {err}") from err


def name_entities(path: Path) -> dict[str, str]:
    """``sub-01_ses-2_trc-AV45_pet.nii.gz`` → ``{"sub": "01", "ses": "2", "trc": "AV45"}``.

    Parsed from the file name (pybids already matched it; asking its database
    per file is far slower on large datasets).
    """
    stem = path.name.split(".")[0]
    pairs = (part.split("-", 1) for part in stem.split("_")[:-1] if "-" in part)
    return {key: value for key, value in pairs}


def _labels(path: Path) -> tuple[str, str]:
    ents = name_entities(path)
    return ents["sub"], ents.get("ses", "")


def _run_key(path: Path) -> tuple[int, str]:
    run = name_entities(path).get("run", "0")
    return (int(run) if run.isdigit() else 0), path.name


def pick_run(files: list[Path], what: str) -> Path:
    """The lowest ``run`` (then file name) of ``files``; logs the choice if several."""
    ordered = sorted(files, key=_run_key)
    if len(ordered) > 1:
        LOG.info("%s: %d candidates, using %s (lowest run, then name; others: %s) — "
                 "narrow it with --bids-filter-file", what, len(ordered), ordered[0].name,
                 ", ".join(f.name for f in ordered[1:]))
    return ordered[0]


# --------------------------------------------------------------------------- inventory


def _mri_sessions(layout: Any, opts: RunOptions, tables: Tables) -> list[MRISession]:
    chosen: dict[tuple[str, str], dict[str, Path]] = defaultdict(dict)
    for contrast in MRI_CONTRASTS:
        groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
        for f in _get(layout, QUERY_OF_CONTRAST[contrast], opts):
            groups[_labels(f)].append(f)
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


def sidecar_metadata(path: Path, root: Path) -> dict[str, Any]:
    """JSON metadata of ``path`` by the BIDS inheritance principle.

    Every ``*_<suffix>.json`` from the file's folder up to ``root`` whose
    entities are a subset of the file's applies; more specific ones (deeper,
    then more entities) override less specific ones.
    """
    stem = path.name.split(".")[0]
    *entities, suffix = stem.split("_")
    chain: list[tuple[int, int, Path]] = []
    folder, depth = path.parent, 0
    while True:
        for candidate in folder.glob(f"*{suffix}.json"):
            *cand_entities, cand_suffix = candidate.name[: -len(".json")].split("_")
            if cand_suffix == suffix and set(cand_entities) <= set(entities):
                chain.append((-depth, len(cand_entities), candidate))
        if folder == root or folder.parent == folder:
            break
        folder, depth = folder.parent, depth + 1
    merged: dict[str, Any] = {}
    for _, _, candidate in sorted(chain):
        try:
            data = json.loads(candidate.read_text())
        except (OSError, json.JSONDecodeError) as err:
            LOG.warning("%s: unreadable sidecar (%s); ignored", candidate, err)
            continue
        if isinstance(data, dict):
            merged.update(data)
    return merged


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
    for f in _get(layout, "pet", opts):
        sub, ses = _labels(f)
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
    if not mri and not pet:
        raise NothingSelectedError(f"nothing selected in {bids_dir}: no MRI "
                                   f"({', '.join(MRI_CONTRASTS)}) or amyloid PET matches the "
                                   "participant/session labels and filters")
    _check_labels(opts, {m.sub for m in mri} | {p.sub for p in pet})
    LOG.info("found %d MRI sessions and %d amyloid PET scans of %d subjects (%d PET skipped)",
             len(mri), len(pet), len({m.sub for m in mri} | {p.sub for p in pet}), len(skipped))
    return Inventory(tuple(mri), tuple(pet), tuple(skipped))


# --------------------------------------------------------------------------- pairing


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
