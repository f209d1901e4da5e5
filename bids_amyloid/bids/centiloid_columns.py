"""Centiloid values of PET scans, read from the BIDS tables.

From the PET file's ``scans.tsv`` row, the PET session's ``sessions.tsv`` row, or
``participants.tsv`` (one value per subject: used only for a subject with a single
amyloid PET). The column is ``--centiloid-column`` or the first of
:data:`CENTILOID_COLUMNS` present (case-insensitive); with ``--suvr-equation`` an
SUVR column is converted instead (:mod:`bids_amyloid.centiloid`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from bids_amyloid.bids.tables import find_column, is_missing
from bids_amyloid.config import AppConfig
from bids_amyloid.errors import (
    UsageError,
)

LOG = logging.getLogger(__name__)
CENTILOID_COLUMNS = ("centiloid", "centiloids", "centiloid_fsuvr_rsf_tot_cortmean",
                     "centiloid_fsuvr_tot_cortmean", "pet_centiloid", "amyloid_centiloid")


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
        column = find_column(row, candidates)
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
