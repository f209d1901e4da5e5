"""Amyloid PET tracer names: the many spellings found in the wild → one code.

Example
-------
>>> normalise_tracer("18FAV45"), normalise_tracer("florbetapir"), normalise_tracer("11CPIB")
('AV45', 'AV45', 'PIB')
"""

from __future__ import annotations

import re

TRACERS: dict[str, tuple[str, ...]] = {
    "AV45": ("18FAV45", "AV45", "FLORBETAPIR", "FBP", "AMYVID", "18FFLORBETAPIR"),
    "PIB": ("11CPIB", "PIB", "PITTSBURGHCOMPOUNDB", "11CPITTSBURGHCOMPOUNDB"),
    "FBB": ("18FFBB", "FBB", "FLORBETABEN", "NEURACEQ", "18FFLORBETABEN"),
    "FMM": ("18FFMM", "FMM", "FLUTEMETAMOL", "VIZAMYL", "18FFLUTEMETAMOL", "GE067"),
    "NAV4694": ("NAV4694", "18FNAV4694", "FLUTAFURANOL", "AZD4694", "18FAZD4694"),
}
_ALIASES = {alias: code for code, names in TRACERS.items() for alias in names}


def normalise_tracer(name: str) -> str:
    """Return the canonical tracer code for ``name``; ValueError if unknown."""
    key = re.sub(r"[^A-Z0-9]", "", name.upper())
    try:
        return _ALIASES[key]
    except KeyError:
        known = ", ".join(sorted(TRACERS))
        raise ValueError(f"unknown amyloid tracer {name!r} (known: {known})") from None
