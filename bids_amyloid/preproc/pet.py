"""PET: frame averaging, 8 mm smoothing, PET → MRI → template, SUVR.

Chain (DESIGN.md, "PET preprocessing")::

    4D PET ──mean of frames (weighted by FrameDuration)──▶ 3D mean
           ──Gaussian FWHM 8 mm (native voxels)──▶ smoothed
    mean   ──rigid → the session's skull-stripped MRI (native)──▶ pet_to_mri
           ──compose with MRI → template, one linear resampling──▶ template grid
           ──÷ mean in the GAAIN whole-cerebellum VOI──▶ SUVR

The whole volume is divided by one number: global uptake survives (never a
per-slice rescaling). Every PET scan is processed on its own, so a second PET
of the same MRI session (e.g. PiB and AV45) gets its own registration.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_amyloid.config import PreprocConfig
from bids_amyloid.errors import InputDataError
from bids_amyloid.preproc.register import compose, register_rigid
from bids_amyloid.preproc.template import (
    load_gaain_voi,
    load_nifti,
    load_template,
    resample_array,
)

if TYPE_CHECKING:
    from bids_amyloid.preproc.mri import MRIResult

log = logging.getLogger(__name__)

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
MIN_REFERENCE_COVERAGE = 0.8  # fraction of the reference VOI the PET must cover


@dataclass
class PETResult:
    """One PET scan on the template grid."""

    suvr_mni: nib.Nifti1Image  # SUVR on the template grid (cerebellar reference, GAAIN VOI)
    reference_mean: float  # mean of the smoothed PET in the reference region (before dividing)
    metrics: dict[str, float] = field(default_factory=dict)
    pet_to_mri: np.ndarray = field(default_factory=lambda: np.eye(4))  # RAS PET world → MRI world
    to_template: np.ndarray = field(default_factory=lambda: np.eye(4))  # RAS PET world → template


def frame_weights(sidecar: Path | None, n_frames: int) -> np.ndarray:
    """Frame weights: ``FrameDuration`` from the BIDS sidecar when it fits, else equal."""
    if sidecar is not None and sidecar.is_file():
        try:
            durations = json.loads(sidecar.read_text()).get("FrameDuration")
        except (OSError, json.JSONDecodeError) as err:
            raise InputDataError(f"{sidecar}: unreadable PET sidecar ({err})") from err
        if isinstance(durations, list) and len(durations) == n_frames:
            weights = np.asarray(durations, float)
            if np.all(np.isfinite(weights)) and np.all(weights > 0):
                return weights / weights.sum()
            log.warning("%s: FrameDuration not all positive; averaging frames equally", sidecar)
    return np.full(n_frames, 1.0 / n_frames)


def average_frames(image: nib.Nifti1Image, weights: np.ndarray | None = None) -> nib.Nifti1Image:
    """Weighted mean over the 4th axis (a 3D image is returned as float32 unchanged)."""
    data = np.asarray(image.dataobj, np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        w = np.full(data.shape[3], 1.0 / data.shape[3]) if weights is None else weights
        data = np.tensordot(data, w.astype(np.float32), axes=([3], [0])).astype(np.float32)
    elif data.ndim != 3:
        raise ValueError(f"PET must be 3D or 4D, got shape {data.shape}")
    return nib.Nifti1Image(data, image.affine)


def smooth_fwhm(image: nib.Nifti1Image, fwhm_mm: float) -> nib.Nifti1Image:
    """Gaussian smoothing with an isotropic FWHM in mm (per-axis sigma from the voxel size)."""
    data = np.asarray(image.dataobj, np.float32)
    if fwhm_mm <= 0:
        return nib.Nifti1Image(data.copy(), image.affine)
    voxel = np.linalg.norm(image.affine[:3, :3], axis=0)
    sigma = fwhm_mm * FWHM_TO_SIGMA / voxel
    return nib.Nifti1Image(ndimage.gaussian_filter(data, sigma, mode="constant"), image.affine)


def suvr(volume: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, float]:
    """Divide the whole volume by its mean inside ``reference`` (one global number)."""
    ref = np.asarray(reference) > 0
    values = volume[ref]
    mean = float(values.mean()) if values.size else 0.0
    if not np.isfinite(mean) or mean <= 0:
        raise ValueError(f"reference region mean is {mean:g}; cannot form SUVR")
    return (volume / mean).astype(np.float32), mean


def load_pet(pet: Path) -> nib.Nifti1Image:
    """Read a PET file and average its frames (sidecar ``FrameDuration`` weights)."""
    try:
        img = load_nifti(pet)
        frames = img.shape[3] if len(img.shape) == 4 else 1
        sidecar = Path(str(pet).removesuffix(".gz").removesuffix(".nii") + ".json")
        mean = average_frames(img, frame_weights(sidecar, frames) if frames > 1 else None)
    except (OSError, ValueError, EOFError) as err:
        raise InputDataError(f"{pet}: cannot read PET image ({err})") from err
    data = np.asarray(mean.dataobj)
    if not np.isfinite(data).all() or not (data > 0).any():
        raise InputDataError(f"{pet}: PET has no positive finite values (empty or NaN)")
    return mean


def preprocess_pet(pet: Path, mri: MRIResult, cfg: PreprocConfig, work: Path,
                   threads: int = 1) -> PETResult:
    """PET scan → SUVR on the template grid, registered through the paired MRI.

    Parameters
    ----------
    pet : Path
        The ``_pet.nii.gz`` (3D or 4D).
    mri : MRIResult
        The paired session's T1w (or other contrast) result: ``native_brain``
        is the registration target and ``to_template`` the MRI → template map.
    cfg : PreprocConfig
        ``pet_fwhm_mm``, ``suvr_reference`` (a GAAIN VOI name) and the
        registration settings.
    work : Path
        Scratch folder (ANTs writes its transform there).

    Raises
    ------
    InputDataError
        The PET file is unusable, or its field of view misses the reference region.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    mean = load_pet(pet)
    smoothed = smooth_fwhm(mean, cfg.pet_fwhm_mm)
    timings["seconds_average_smooth"] = time.perf_counter() - start

    work.mkdir(parents=True, exist_ok=True)
    # the unsmoothed frame mean holds more structure: rotation error ~0.2° instead of up
    # to 3° when registering the 8 mm smoothed image (4 mm PET voxels, simulator)
    fit = register_rigid(mri.native_brain, mean, cfg, threads=threads, work=work,
                         fixed_mask=mri.native_mask,
                         levels=(cfg.pet_registration_shrink, cfg.pet_registration_smoothing,
                                 cfg.pet_registration_iterations))
    timings["seconds_register"] = fit.seconds

    start = time.perf_counter()
    template = load_template(cfg)
    to_template = compose(mri.to_template, fit.to_fixed)
    on_template = resample_array(np.asarray(smoothed.dataobj), smoothed.affine, template.affine,
                                 template.shape, order=1, world=to_template)
    reference = np.asarray(load_gaain_voi(cfg.suvr_reference, cfg).dataobj) > 0
    coverage = resample_array(np.ones(smoothed.shape, np.float32), smoothed.affine,
                              template.affine, template.shape, order=0, world=to_template)
    covered = float((coverage[reference] > 0).mean())
    if covered < MIN_REFERENCE_COVERAGE:
        raise InputDataError(f"{pet}: the PET field of view covers only {covered:.0%} of the "
                             f"{cfg.suvr_reference} reference region after registration")
    try:
        ratio, ref_mean = suvr(on_template, reference & (coverage > 0))
    except ValueError as err:
        raise InputDataError(f"{pet}: {err}") from err
    timings["seconds_suvr"] = time.perf_counter() - start
    metrics = {"reference_mean": ref_mean, "reference_coverage": covered,
               "registration_correlation": fit.correlation, **timings}
    return PETResult(suvr_mni=nib.Nifti1Image(ratio, template.affine), reference_mean=ref_mean,
                     metrics=metrics, pet_to_mri=fit.to_fixed, to_template=to_template)
