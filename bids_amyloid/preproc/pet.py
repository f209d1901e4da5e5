"""PET: frame averaging, 8 mm smoothing, PET → MRI → template, SUVR.

Chain (docs/protocol.md, "PET preprocessing")::

    4D PET ──frames of the tracer's late window, rigidly realigned, mean weighted
             by FrameDuration (preproc/frames.py)──▶ 3D mean
           ──Gaussian FWHM 8 mm (native voxels)──▶ smoothed
    mean   ──rigid → the session's skull-stripped MRI (native)──▶ pet_to_mri
           ──compose with MRI → template, one linear resampling──▶ template grid
           ──÷ mean in the GAAIN whole-cerebellum VOI──▶ SUVR

The VOIs are placed on the subject by a separate affine (12 dof) registration of
the rigidly aligned MRI to the template (``voi_registration``): the SUVR image the
network sees stays rigid, but the reference region follows the head's size.

The whole volume is divided by one number: global uptake survives (never a
per-slice rescaling). Every PET scan is processed on its own, so a second PET
of the same MRI session (e.g. PiB and AV45) gets its own registration.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_amyloid.config import PreprocConfig
from bids_amyloid.errors import InputDataError
from bids_amyloid.preproc.frames import (
    FrameAverage,
    read_timing,
    realign_and_average,
    select_frames,
)
from bids_amyloid.preproc.register import compose, register_affine, register_rigid
from bids_amyloid.preproc.template import (
    load_gaain_voi,
    load_nifti,
    load_template,
    load_template_mask,
    resample_array,
)
from bids_amyloid.tracers import normalise_tracer

if TYPE_CHECKING:
    from bids_amyloid.preproc.mri import MRIResult

log = logging.getLogger(__name__)

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
MIN_REFERENCE_COVERAGE = 0.8  # fraction of the reference VOI the PET must cover
MOTION_FLAG_MM, MOTION_FLAG_DEG = 4.0, 3.0  # frame motion worth a look (attenuation mismatch)


@dataclass
class PETResult:
    """One PET scan on the template grid."""

    suvr_mni: nib.Nifti1Image  # SUVR on the template grid (cerebellar reference, GAAIN VOI)
    reference_mean: float  # mean of the smoothed PET in the reference region (before dividing)
    metrics: dict[str, float] = field(default_factory=dict)
    pet_to_mri: np.ndarray = field(default_factory=lambda: np.eye(4))  # RAS PET world → MRI world
    to_template: np.ndarray = field(default_factory=lambda: np.eye(4))  # RAS PET world → template
    frames: dict[str, Any] = field(default_factory=dict)  # FrameAverage.metadata(): sidecar, QC
    voi_to_template: np.ndarray = field(default_factory=lambda: np.eye(4))  # VOI placement map


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


def pet_tracer(pet: Path, sidecar_tracer: str | None) -> str | None:
    """The PET's tracer: the sidecar's ``TracerName``, else the file name's ``trc-`` entity."""
    if sidecar_tracer:
        return sidecar_tracer
    match = re.search(r"_trc-([A-Za-z0-9]+)", Path(pet).name)
    if match:
        try:
            return normalise_tracer(match.group(1))
        except ValueError:
            return None
    return None


def load_pet(pet: Path, cfg: PreprocConfig, threads: int = 1,
             work: Path | None = None) -> FrameAverage:
    """Read a PET file; select its window's frames, realign and average them.

    See :mod:`bids_amyloid.preproc.frames` for the window, the policy and the
    3D case. Raises InputDataError naming ``pet`` when it is unusable.
    """
    try:
        img = load_nifti(pet)
    except (OSError, ValueError, EOFError) as err:
        raise InputDataError(f"{pet}: cannot read PET image ({err})") from err
    if len(img.shape) not in (3, 4):
        raise InputDataError(f"{pet}: PET must be 3D or 4D, got shape {img.shape}")
    sidecar = Path(str(pet).removesuffix(".gz").removesuffix(".nii") + ".json")
    meta, tracer = read_timing(sidecar)
    n_frames = img.shape[3] if len(img.shape) == 4 else 1
    selection = select_frames(meta, n_frames, pet_tracer(pet, tracer), cfg, source=str(pet))
    try:
        average = realign_and_average(img, selection, cfg, threads=threads, work=work,
                                      realign=cfg.pet_realign)
    except (OSError, ValueError, EOFError) as err:
        raise InputDataError(f"{pet}: cannot read PET image ({err})") from err
    data = np.asarray(average.image.dataobj)
    if not np.isfinite(data).all() or not (data > 0).any():
        raise InputDataError(f"{pet}: PET has no positive finite values (empty or NaN)")
    return average


def place_vois(mri: MRIResult, cfg: PreprocConfig, threads: int = 1,
               work: Path | None = None) -> tuple[np.ndarray, float]:
    """Map from the rigid template space of ``mri`` to the template, for the VOIs only.

    ``cfg.voi_registration == "affine"``: a 12-dof ANTs registration of the
    rigidly aligned MRI (``mri.mni_image``) to the template, so the GAAIN VOIs
    follow the subject's head size and shape; ``"rigid"``: identity (the VOIs
    sit where the template has them). Returns the 4x4 map and its seconds.
    """
    if cfg.voi_registration == "rigid":
        return np.eye(4), 0.0
    if cfg.voi_registration != "affine":
        raise ValueError(f"voi_registration must be 'affine' or 'rigid', "
                         f"not {cfg.voi_registration!r}")
    fit = register_affine(load_template(cfg), mri.mni_image, cfg, threads=threads, work=work,
                          fixed_mask=load_template_mask(cfg))
    return fit.to_fixed, fit.seconds


def voi_on_subject(name: str, to_template: np.ndarray, cfg: PreprocConfig) -> np.ndarray:
    """GAAIN VOI ``name`` (bool) on the template grid, moved onto the subject's rigid space.

    ``to_template`` maps the rigid template space to the template (from
    :func:`place_vois`); the VOI is resampled linearly and kept where ≥ 0.5.
    """
    voi = load_gaain_voi(name, cfg)
    if np.allclose(to_template, np.eye(4)):
        return np.asarray(voi.dataobj) > 0
    moved = resample_array(np.asarray(voi.dataobj, np.float32), voi.affine, voi.affine,
                           voi.shape, order=1, world=np.linalg.inv(to_template))
    return moved >= 0.5


def pet_flags(result: PETResult) -> list[str]:
    """QC warnings of one PET: window not honoured, large frame motion."""
    flags = []
    info = result.frames
    if info.get("FrameWindowFlag"):
        flags.append(f"PET frames: {info['FrameWindowFlag']}")
    moved = max(info.get("FrameMotionTranslationMM") or [0.0])
    turned = max(info.get("FrameMotionRotationDeg") or [0.0])
    if moved > MOTION_FLAG_MM or turned > MOTION_FLAG_DEG:
        flags.append(f"PET frame motion up to {moved:.1f} mm / {turned:.1f}° (realigned): check "
                     "the attenuation correction")
    return flags


def frames_description(frames: dict[str, Any]) -> str:
    """One phrase for the sidecar's Description: which frames made the SUVR image."""
    n, used = frames.get("NumberOfFrames", 1), frames.get("FramesUsed", [0])
    if n == 1:
        return "3D image used as provided"
    window = frames.get("FrameWindowMinutes")
    moved = " realigned and" if frames.get("FrameMotionTranslationMM") else ""
    what = f"frames {used[0]}–{used[-1]} of {n}" if used == list(range(used[0], used[-1] + 1)) \
        else f"frames {used} of {n}"
    where = f" ({window[0]:g}–{window[1]:g} min after injection)" if window else ""
    flag = f"; {frames['FrameWindowFlag']}" if frames.get("FrameWindowFlag") else ""
    return f"{what}{where}{moved} averaged{flag}"


def sidecar_fields(result: PETResult, cfg: PreprocConfig) -> dict[str, Any]:
    """Frame and VOI-placement facts for the SUVR sidecar (None values left out)."""
    placement = ("affine (12 dof) registration of the rigidly aligned MRI to the template, "
                 "used for the VOIs only" if cfg.voi_registration == "affine"
                 else "rigid (the template's VOIs)")
    return {**{k: v for k, v in result.frames.items() if v is not None},
            "CentiloidVOIPlacement": placement}


def preprocess_pet(pet: Path, mri: MRIResult, cfg: PreprocConfig, work: Path,
                   threads: int = 1) -> PETResult:
    """PET scan → SUVR on the template grid, registered through the paired MRI.

    Parameters
    ----------
    pet : Path
        The ``_pet.nii.gz`` (3D, or 4D with its sidecar's frame timing).
    mri : MRIResult
        The paired session's T1w (or other contrast) result: ``native_brain``
        is the registration target and ``to_template`` the MRI → template map.
    cfg : PreprocConfig
        ``pet_windows``/``pet_window_policy``/``pet_realign`` (frames),
        ``pet_fwhm_mm``, ``suvr_reference`` (a GAAIN VOI name),
        ``voi_registration`` and the registration settings.
    work : Path
        Scratch folder (ANTs writes its transforms there).

    Raises
    ------
    InputDataError
        The PET file is unusable, its frames miss the tracer's window (see
        ``pet_window_policy``), or its field of view misses the reference region.
    """
    timings: dict[str, float] = {}
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    frames = load_pet(pet, cfg, threads=threads, work=work)
    mean = frames.image
    smoothed = smooth_fwhm(mean, cfg.pet_fwhm_mm)
    timings["seconds_frames_smooth"] = time.perf_counter() - start

    # the unsmoothed frame mean holds more structure: rotation error ~0.2° instead of up
    # to 3° when registering the 8 mm smoothed image (4 mm PET voxels, simulator)
    fit = register_rigid(mri.native_brain, mean, cfg, threads=threads, work=work,
                         fixed_mask=mri.native_mask,
                         levels=(cfg.pet_registration_shrink, cfg.pet_registration_smoothing,
                                 cfg.pet_registration_iterations))
    timings["seconds_register"] = fit.seconds
    voi_map, timings["seconds_voi_registration"] = place_vois(mri, cfg, threads, work)

    start = time.perf_counter()
    template = load_template(cfg)
    to_template = compose(mri.to_template, fit.to_fixed)
    on_template = resample_array(np.asarray(smoothed.dataobj), smoothed.affine, template.affine,
                                 template.shape, order=1, world=to_template)
    reference = voi_on_subject(cfg.suvr_reference, voi_map, cfg)
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
    cortex = voi_on_subject("ctx", voi_map, cfg)
    timings["seconds_suvr"] = time.perf_counter() - start
    metrics = {"reference_mean": ref_mean, "reference_coverage": covered,
               "cortical_suvr": float(ratio[cortex].mean()),
               "voi_scale": float(np.cbrt(abs(np.linalg.det(voi_map[:3, :3])))),
               "registration_correlation": fit.correlation,
               "frames_used": float(len(frames.selection.used)),
               "frame_max_translation_mm": frames.max_translation_mm,
               "frame_max_rotation_deg": frames.max_rotation_deg, **timings}
    return PETResult(suvr_mni=nib.Nifti1Image(ratio, template.affine), reference_mean=ref_mean,
                     metrics=metrics, pet_to_mri=fit.to_fixed, to_template=to_template,
                     frames=frames.metadata(), voi_to_template=voi_map)
