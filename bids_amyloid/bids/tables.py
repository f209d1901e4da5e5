"""Dates and table cells: ``scans.tsv``, ``sessions.tsv`` and ``participants.tsv``.

Dates, first found wins: ``scans.tsv`` ``acq_time`` of the file; ``sessions.tsv``
``acq_time``; ``sessions.tsv`` ``examination_date`` (Clinica's ADNI converter); a day
offset from a session label ``ses-d0129`` or a ``source_session_id`` like ``d0129``
(OASIS-3; such days are only comparable within one subject).

Example
-------
>>> parse_date("2012-05-04T10:11:12"), parse_date("n/a")
(datetime.date(2012, 5, 4), None)
>>> day_offset("d0129"), day_offset("M000")
(129, None)
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

LOG = logging.getLogger(__name__)
# Day offsets (OASIS-3) become dates counted from this epoch; their date_source
# starts with "day offset" and they are never compared with calendar dates.
DAY_OFFSET_EPOCH = datetime.date(1, 1, 1)
DAY_OFFSET_SOURCE = "day offset"
MISSING_CELLS = {"", "n/a", "na", "none", "null"}


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


def find_column(columns: Iterable[Any], candidates: Iterable[str]) -> str | None:
    """First of ``candidates`` among ``columns`` (case-insensitive), as spelt there."""
    lower = {str(c).lower(): str(c) for c in columns}
    for name in candidates:
        if name.lower() in lower:
            return lower[name.lower()]
    return None



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
