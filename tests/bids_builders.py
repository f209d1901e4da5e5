"""Hand-built tiny BIDS datasets for tests (4×4×4 NIfTIs, written in ``tmp_path``).

Other test modules may import these builders::

    from tests.bids_builders import BidsBuilder, clinica_adni_dataset, clinica_oasis3_dataset

    b = BidsBuilder(tmp_path / "bids")
    b.anat("01", "01", "T1w")
    b.pet("01", "01", "AV45")
    b.sessions("01", [{"session_id": "ses-01", "acq_time": "2020-01-01T10:00:00", "centiloid": 30}])

Every dataset written here passes ``bids-validator-deno`` unless a test
breaks it on purpose (the PET sidecars carry every REQUIRED PET field).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

PET_SIDECAR: dict[str, Any] = {
    "Manufacturer": "Siemens",
    "ManufacturersModelName": "Biograph mCT",
    "Units": "Bq/mL",
    "TracerName": "florbetapir",
    "TracerRadionuclide": "F18",
    "InjectedRadioactivity": 370,
    "InjectedRadioactivityUnits": "MBq",
    "InjectedMass": "n/a",
    "InjectedMassUnits": "n/a",
    "SpecificRadioactivity": "n/a",
    "SpecificRadioactivityUnits": "n/a",
    "ModeOfAdministration": "bolus",
    "TimeZero": "10:00:00",
    "ScanStart": 3000,
    "InjectionStart": 0,
    "FrameTimesStart": [3000, 3300],
    "FrameDuration": [300, 300],
    "AcquisitionMode": "list mode",
    "ImageDecayCorrected": True,
    "ImageDecayCorrectionTime": 0,
    "ReconMethodName": "OSEM",
    "ReconMethodParameterLabels": ["subsets", "iterations"],
    "ReconMethodParameterUnits": ["none", "none"],
    "ReconMethodParameterValues": [21, 3],
    "ReconFilterType": "none",
    "ReconFilterSize": 0,
    "AttenuationCorrection": "CT-based",
}
TRACER_SIDECAR_NAMES = {"AV45": ("florbetapir", "F18"), "PIB": ("PiB", "C11"),
                        "FBB": ("florbetaben", "F18"), "FMM": ("flutemetamol", "F18"),
                        "NAV4694": ("NAV4694", "F18")}


def write_nifti(path: Path, shape: tuple[int, ...] = (4, 4, 4), value: float = 1.0) -> Path:
    """A tiny float32 NIfTI with 2 mm voxels (4D if ``shape`` has 4 axes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.full(shape, value, dtype=np.float32)
    data[0] = 0.0  # not constant: a few tools dislike flat images
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return path


def write_tsv(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    """Write ``rows`` as a BIDS TSV (missing cells as ``n/a``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join("n/a" if row.get(c) is None else str(row[c]) for c in columns))
    path.write_text("\n".join(lines) + "\n")
    return path


class BidsBuilder:
    """Build a BIDS dataset file by file under ``root``."""

    def __init__(self, root: Path, name: str = "tiny test dataset") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "dataset_description.json").write_text(json.dumps(
            {"Name": name, "BIDSVersion": "1.10.0", "DatasetType": "raw",
             "License": "CC0", "Authors": ["Test"]}, indent=2))
        (self.root / "README").write_text("A tiny hand-built dataset for the bids-amyloid tests.\n")

    def _folder(self, sub: str, ses: str | None, datatype: str) -> tuple[Path, str]:
        folder = self.root / f"sub-{sub}"
        stem = f"sub-{sub}"
        if ses:
            folder = folder / f"ses-{ses}"
            stem += f"_ses-{ses}"
        return folder / datatype, stem

    def anat(self, sub: str, ses: str | None, contrast: str, *, run: int | None = None,
             acq: str | None = None, ext: str = ".nii.gz") -> Path:
        """Add ``sub-<sub>[_ses-<ses>][_acq-][_run-]_<contrast>.nii.gz`` with a sidecar."""
        folder, stem = self._folder(sub, ses, "anat")
        if acq:
            stem += f"_acq-{acq}"
        if run is not None:
            stem += f"_run-{run}"
        path = write_nifti(folder / f"{stem}_{contrast}{ext}")
        (folder / f"{stem}_{contrast}.json").write_text(json.dumps({"MagneticFieldStrength": 3}))
        return path

    def pet(self, sub: str, ses: str | None, trc: str | None, *, tracer_name: str | None = None,
            acq: str | None = None, run: int | None = None, frames: int = 2) -> Path:
        """Add a 4D PET; ``trc`` is the ``trc-`` entity (None: no entity).

        ``tracer_name`` sets the sidecar's ``TracerName`` (default: from ``trc``).
        """
        folder, stem = self._folder(sub, ses, "pet")
        if trc:
            stem += f"_trc-{trc}"
        if acq:
            stem += f"_acq-{acq}"
        if run is not None:
            stem += f"_run-{run}"
        path = write_nifti(folder / f"{stem}_pet.nii.gz", shape=(4, 4, 4, frames))
        sidecar = dict(PET_SIDECAR)
        sidecar["FrameTimesStart"] = [3000 + 300 * i for i in range(frames)]
        sidecar["FrameDuration"] = [300] * frames
        if tracer_name is not None:
            sidecar["TracerName"] = tracer_name
        elif trc:
            from bids_amyloid.tracers import normalise_tracer

            try:
                name, nuclide = TRACER_SIDECAR_NAMES[normalise_tracer(trc)]
                sidecar["TracerName"], sidecar["TracerRadionuclide"] = name, nuclide
            except ValueError:
                sidecar["TracerName"] = trc
        (folder / f"{stem}_pet.json").write_text(json.dumps(sidecar, indent=1))
        return path

    def sessions(self, sub: str, rows: list[dict[str, Any]]) -> Path:
        """``sub-<sub>/sub-<sub>_sessions.tsv``; rows hold ``session_id`` = ``ses-…``."""
        return write_tsv(self.root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv", rows)

    def scans(self, sub: str, ses: str | None, rows: list[dict[str, Any]]) -> Path:
        """``scans.tsv`` of a session; ``filename`` relative to the session folder."""
        folder, stem = self._folder(sub, ses, "")
        return write_tsv(folder / f"{stem}_scans.tsv", rows)

    def participants(self, rows: list[dict[str, Any]]) -> Path:
        return write_tsv(self.root / "participants.tsv", rows)


def simple_dataset(root: Path, n_subjects: int = 10, *, positive_every: int = 2) -> BidsBuilder:
    """``n_subjects`` subjects, one session each with T1w, T2w and an AV45 PET the same day.

    Subject ``i`` (1-based, labels ``01``…) has Centiloid 40 when ``i % positive_every == 0``
    else 5, and ``acq_time`` 2020-01-<i> in sessions.tsv.
    """
    b = BidsBuilder(root)
    for i in range(1, n_subjects + 1):
        sub = f"{i:02d}"
        b.anat(sub, "01", "T1w")
        b.anat(sub, "01", "T2w")
        b.pet(sub, "01", "AV45")
        cl = 40.0 if i % positive_every == 0 else 5.0
        b.sessions(sub, [{"session_id": "ses-01", "acq_time": f"2020-01-{i:02d}T10:00:00",
                          "centiloid": cl}])
    return b


def clinica_adni_dataset(root: Path) -> BidsBuilder:
    """The layout of Clinica's ``adni-to-bids``, as it writes it.

    ``sub-ADNI011S0002`` with ``ses-M000`` (T1w + ``trc-18FAV45`` PET + an FDG PET)
    and ``ses-M024`` (T1w only, 2 years later); ``sub-ADNI022S0004`` with ``ses-M000``
    (two T1w runs, AV45 PET). Dates in ``sessions.tsv`` ``examination_date``; the
    amyloid measure only as the ADNIMERGE SUVR column ``adni_av45`` (no Centiloid).
    """
    b = BidsBuilder(root, name="ADNI (Clinica adni-to-bids layout)")
    s1, s2 = "ADNI011S0002", "ADNI022S0004"
    b.anat(s1, "M000", "T1w")
    b.pet(s1, "M000", "18FAV45")
    b.pet(s1, "M000", "18FFDG", tracer_name="FDG")
    b.anat(s1, "M024", "T1w")
    b.anat(s2, "M000", "T1w", run=1)
    b.anat(s2, "M000", "T1w", run=2)
    b.pet(s2, "M000", "18FAV45")
    b.sessions(s1, [
        {"session_id": "ses-M000", "examination_date": "2010-06-01", "diagnosis": "CN",
         "adni_av45": 1.05, "adni_fdg": 1.3},
        {"session_id": "ses-M024", "examination_date": "2012-06-05", "diagnosis": "CN",
         "adni_av45": None, "adni_fdg": None},
    ])
    b.sessions(s2, [
        {"session_id": "ses-M000", "examination_date": "2011-03-15", "diagnosis": "AD",
         "adni_av45": 1.45, "adni_fdg": 1.1},
    ])
    b.participants([
        {"participant_id": f"sub-{s1}", "sex": "M", "alternative_id_1": "011_S_0002"},
        {"participant_id": f"sub-{s2}", "sex": "F", "alternative_id_1": "022_S_0004"},
    ])
    return b


def clinica_oasis3_dataset(root: Path) -> BidsBuilder:
    """The layout of Clinica's ``oasis3-to-bids``: MR and PET on different days.

    Sessions are day offsets from study entry (``ses-d0129``): no calendar dates
    anywhere. ``sub-OAS30001``: MR at d0129 (T1w, T2w) and d0757 (T1w), PiB PET at
    d0150 (CL 2.5) and AV45 PET at d1000 (CL 55.0, 243 days after d0757). The PET
    of ``sub-OAS30002`` has no ``trc-`` entity (tracer only in the sidecar's
    ``TracerName``) and is 700 days from its only MR. Centiloid in ``sessions.tsv`` under the PUP column
    name ``Centiloid_fSUVR_rsf_TOT_CORTMEAN``.
    """
    b = BidsBuilder(root, name="OASIS-3 (Clinica oasis3-to-bids layout)")
    s1, s2 = "OAS30001", "OAS30002"
    b.anat(s1, "d0129", "T1w")
    b.anat(s1, "d0129", "T2w")
    b.anat(s1, "d0757", "T1w")
    b.pet(s1, "d0150", "PIB")
    b.pet(s1, "d1000", "AV45")
    b.anat(s2, "d0000", "T1w")
    b.pet(s2, "d0700", None, tracer_name="AV45")
    col = "Centiloid_fSUVR_rsf_TOT_CORTMEAN"
    b.sessions(s1, [
        {"session_id": "ses-d0129", "age": 65.2, col: None},
        {"session_id": "ses-d0150", "age": 65.3, col: 2.5},
        {"session_id": "ses-d0757", "age": 67.0, col: None},
        {"session_id": "ses-d1000", "age": 67.7, col: 55.0},
    ])
    b.sessions(s2, [
        {"session_id": "ses-d0000", "age": 71.0, col: None},
        {"session_id": "ses-d0700", "age": 72.9, col: 30.0},
    ])
    b.participants([{"participant_id": f"sub-{s1}", "sex": "F"},
                    {"participant_id": f"sub-{s2}", "sex": "M"}])
    return b
