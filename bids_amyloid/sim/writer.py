"""Byte-reproducible BIDS files of the simulator: NIfTI, sidecars, TSVs, ground truth."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from bids_amyloid import __version__
from bids_amyloid.io import atomic_path, write_json, write_text

TRUTH_FOLDER = Path("sourcedata") / "simulation"

MRI_SIDECAR: dict[str, dict[str, Any]] = {
    "T1w": {"RepetitionTime": 2.3, "EchoTime": 0.00298, "InversionTime": 0.9, "FlipAngle": 9,
            "PulseSequenceType": "MPRAGE"},
    "T2w": {"RepetitionTime": 3.2, "EchoTime": 0.409, "FlipAngle": 120,
            "PulseSequenceType": "SPACE"},
    "FLAIR": {"RepetitionTime": 5.0, "EchoTime": 0.394, "InversionTime": 1.8, "FlipAngle": 120,
              "PulseSequenceType": "SPACE FLAIR"},
    "T2starw": {"RepetitionTime": 0.65, "EchoTime": 0.02, "FlipAngle": 20,
                "PulseSequenceType": "GRE"},
}
TRACER_SIDECAR: dict[str, dict[str, Any]] = {
    "PIB": {"TracerName": "PiB", "TracerRadionuclide": "C11", "InjectedRadioactivity": 555.0},
    "AV45": {"TracerName": "Florbetapir", "TracerRadionuclide": "F18",
             "InjectedRadioactivity": 370.0},
}


def truth_paths(bids_dir: Path, image: Path) -> tuple[Path, Path]:
    """Ground-truth JSON and true brain mask of a simulated image (``image`` may be a name).

    >>> truth_paths(Path("/d"), Path("sub-001_ses-d0000_T1w.nii.gz"))[0].name
    'sub-001_ses-d0000_T1w_truth.json'
    """
    stem = Path(image).name.removesuffix(".gz").removesuffix(".nii")
    folder = Path(bids_dir) / TRUTH_FOLDER
    return folder / f"{stem}_truth.json", folder / f"{stem}_desc-brain_mask.nii.gz"


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray,
                zooms_t: float | None = None) -> Path:
    """Write a .nii.gz whose bytes depend only on the data (gzip mtime 0, no file name)."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if zooms_t is not None:
        img.header.set_zooms((*img.header.get_zooms()[:3], zooms_t))
    payload = gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return path


def write_tsv(path: Path, frame: pd.DataFrame) -> Path:
    """TSV with ``n/a`` for missing values and a fixed float format."""
    return write_text(path, frame.to_csv(sep="\t", index=False, na_rep="n/a",
                                         float_format="%.4g", lineterminator="\n"))


def mri_sidecar(contrast: str, voxel: tuple[float, ...]) -> dict[str, Any]:
    return {"Manufacturer": "Simulated", "ManufacturersModelName": "bids-amyloid simulator",
            "MagneticFieldStrength": 3, "Modality": "MR", **MRI_SIDECAR[contrast],
            "SliceThickness": round(float(voxel[2]), 3)}


def pet_sidecar(tracer: str, durations_s: tuple[int, ...], injected_scale: float,
                time_zero: str = "09:30:00") -> dict[str, Any]:
    """A complete BIDS PET sidecar (required fields; a dynamic scan from the injection).

    Times in seconds from ``TimeZero``, which is the injection (``InjectionStart`` 0).
    """
    info = TRACER_SIDECAR[tracer]
    starts = np.concatenate([[0], np.cumsum(durations_s)[:-1]]).astype(int)
    return {
        "Manufacturer": "Simulated", "ManufacturersModelName": "bids-amyloid simulator",
        "Units": "Bq/mL", "BodyPart": "Brain",
        "TracerName": info["TracerName"], "TracerRadionuclide": info["TracerRadionuclide"],
        "InjectedRadioactivity": round(info["InjectedRadioactivity"] * injected_scale, 1),
        "InjectedRadioactivityUnits": "MBq",
        "InjectedMass": "n/a", "InjectedMassUnits": "n/a",
        "SpecificRadioactivity": "n/a", "SpecificRadioactivityUnits": "n/a",
        "ModeOfAdministration": "bolus",
        "TimeZero": time_zero, "InjectionStart": 0, "ScanStart": 0,
        "FrameTimesStart": [int(t) for t in starts],
        "FrameDuration": [int(d) for d in durations_s],
        "AcquisitionMode": "list mode", "ImageDecayCorrected": True,
        "ImageDecayCorrectionTime": 0,
        "ReconMethodName": "3D-OSEM", "ReconMethodParameterLabels": ["subsets", "iterations"],
        "ReconMethodParameterUnits": ["none", "none"], "ReconMethodParameterValues": [21, 3],
        "ReconFilterType": "Gaussian", "ReconFilterSize": 2.0,
        "AttenuationCorrection": "CT-based",
    }


def write_dataset_files(root: Path, n_subjects: int, seed: int, size: str) -> None:
    """dataset_description.json, README, and the JSON descriptions of the TSV columns."""
    write_json(root / "dataset_description.json", {
        "Name": f"bids-amyloid synthetic cohort ({n_subjects} subjects, seed {seed}, {size})",
        "BIDSVersion": "1.10.0", "DatasetType": "raw", "License": "CC0",
        "Authors": ["bids-amyloid simulator"],
        "GeneratedBy": [{"Name": "bids-amyloid-simulate", "Version": __version__}],
    })
    write_text(root / "README", (
        "Synthetic amyloid PET + MRI cohort made by bids-amyloid-simulate "
        f"(--subjects {n_subjects} --seed {seed}, size {size}).\n"
        "Heads are built around the MNI152 2009 template; see the docstring of\n"
        "bids_amyloid.simulate for how every property is generated. Ground truth\n"
        "(poses, true brain masks, generating parameters) is under sourcedata/simulation/.\n"))
    write_json(root / "participants.json", {
        "age": {"Description": "age at the first visit", "Units": "year"},
        "sex": {"Description": "sex", "Levels": {"M": "male", "F": "female"}},
    })
    write_json(root / "sessions.json", {
        "acq_time": {"Description": "date and time of the visit"},
        "centiloid": {"Description": "amyloid load of the PET scan (GAAIN cortex / whole "
                                     "cerebellum SUVR through the tracer's published equation)",
                      "Units": "CL"},
        "tracer": {"Description": "amyloid PET tracer of the session"},
    })
