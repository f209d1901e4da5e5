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
    "FBB": ("18FFBB", "FBB", "FLORBETABEN", "NEURACEQ", "18FFLORBETABEN", "BAY949172"),
    "FMM": ("18FFMM", "FMM", "FLUTEMETAMOL", "VIZAMYL", "18FFLUTEMETAMOL", "GE067"),
    "NAV4694": ("NAV4694", "18FNAV4694", "FLUTAFURANOL", "AZD4694", "18FAZD4694"),
}
_ALIASES = {alias: code for code, names in TRACERS.items() for alias in names}


_ISOTOPE = re.compile(r"^(18F|F18|11C|C11)|(18F|F18|11C|C11)$")


def normalise_tracer(name: str) -> str:
    """Return the canonical tracer code for ``name``; ValueError if unknown.

    Case, punctuation and an isotope tag before or after the name
    (``[18F]``, ``F-18``, ``(11C)``) are ignored.
    """
    key = re.sub(r"[^A-Z0-9]", "", str(name).upper())
    for candidate in (key, _ISOTOPE.sub("", key)):
        if candidate in _ALIASES:
            return _ALIASES[candidate]
    known = ", ".join(sorted(TRACERS))
    raise ValueError(f"unknown amyloid tracer {name!r} (known: {known})")
