"""The stage tags of ``[preproc]`` fields and the PET late-frame windows.

A leaf module (no project imports) so that :mod:`bids_amyloid.config` stays small;
``config`` re-exports every name here.

>>> from bids_amyloid.config import PreprocConfig
>>> PreprocConfig.__dataclass_fields__["pet_fwhm_mm"].metadata["stage"]
'pet'
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

# Each [preproc] field is tagged with the stage whose outputs it shapes, here and
# nowhere else: the participant restart hash per modality, the parameters each
# sidecar records and predict's "PET-only parameters" are derived from these tags,
# and tests/test_config.py checks that every field has one. A new field is declared
# with mri_field(...), pet_field(...) or slice_field(...), never with a plain default.
MRI, PET, SLICE = "mri", "pet", "slice"  # MRI image + transform | PET SUVR | slice caches
PREPROC_STAGES = (MRI, PET, SLICE)


def _tagged(stage: str, default: Any) -> Any:
    return field(default=default, metadata={"stage": stage})


def mri_field(default: Any) -> Any:
    """A ``[preproc]`` field that shapes the MRI images (and so everything after them)."""
    return _tagged(MRI, default)


def pet_field(default: Any) -> Any:
    """A ``[preproc]`` field that shapes only the PET outputs."""
    return _tagged(PET, default)


def slice_field(default: Any) -> Any:
    """A ``[preproc]`` field that shapes only the sagittal slice caches."""
    return _tagged(SLICE, default)


#: Late-frame windows (minutes after injection) of the Centiloid calibrations: Klunk et al.
#: 2015 (PiB 50-70), Navitsky et al. 2018 (AV45 50-60), Rowe et al. 2017 (FBB 90-110),
#: Battle et al. 2018 (FMM 90-110), Rowe et al. 2016 (NAV4694 50-70). OASIS-3's PUP uses
#: PiB 30-60 and AV45 50-70 instead (set [preproc.pet_windows] to follow it).
PET_WINDOWS_MIN: dict[str, tuple[float, float]] = {
    "PIB": (50.0, 70.0), "AV45": (50.0, 60.0), "FBB": (90.0, 110.0), "FMM": (90.0, 110.0),
    "NAV4694": (50.0, 70.0)}
