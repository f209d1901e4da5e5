"""The per-session MRI chain: N4 → brain extraction → intensity → rigid → template.

For each contrast of one MRI session (T1w first when present)::

    native ──N4 (Otsu mask)──▶ corrected ──HD-BET──▶ brain mask
           ──clip 0.5–99.5 % · min–max · gamma 0.9 inside the brain──▶ normalised
           ──rigid: T1w → template; other contrasts → T1w, composed with T1w → template
           ──one linear resampling onto the template 1 mm grid──▶ mni_image, mni_mask

Without a T1w, each contrast is registered to the template directly. Images
are never written here: the caller (:mod:`bids_amyloid.participant`) names and writes
derivatives; only the transform ``.mat`` goes to ``work``.

Example
-------
>>> # results = preprocess_mri_session({"T1w": Path("sub-01_T1w.nii.gz")}, cfg, work)
>>> # results["T1w"].mni_image.shape == (197, 233, 189)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_amyloid.config import PreprocConfig
from bids_amyloid.errors import InputDataError
from bids_amyloid.preproc.bias import n4_correct
from bids_amyloid.preproc.intensity import normalise_intensity
from bids_amyloid.preproc.register import RigidFit, compose, register_rigid, write_itk_transform
from bids_amyloid.preproc.skullstrip import skull_strip
from bids_amyloid.preproc.template import (
    load_nifti,
    load_template,
    load_template_mask,
    resample_array,
)

log = logging.getLogger(__name__)

MIN_BRAIN_ML = 300.0  # a brain mask smaller than this is a failed extraction
MAX_BRAIN_ML = 3000.0


@dataclass
class MRIResult:
    """One contrast of one MRI session, preprocessed."""

    contrast: str
    mni_image: nib.Nifti1Image  # [0, 1] (clip, min–max, gamma), template 1 mm grid, float32
    mni_mask: nib.Nifti1Image  # brain mask on the template grid, uint8
    native_image: nib.Nifti1Image  # N4-corrected, native grid (QC)
    native_mask: nib.Nifti1Image  # brain mask, native grid (QC, Dice vs truth)
    native_brain: nib.Nifti1Image  # skull-stripped N4 image, native grid (PET target)
    transform_file: Path  # native → template rigid, ITK/ANTs .mat in the work dir
    to_template: np.ndarray  # 4x4 RAS mm: native world → template world
    metrics: dict[str, float] = field(default_factory=dict)


def load_mri(path: Path) -> nib.Nifti1Image:
    """Read a 3D anatomical image as float32 (a trailing singleton 4th axis is dropped)."""
    try:
        img = load_nifti(path)
        data = np.asarray(img.dataobj, np.float32)
    except (OSError, ValueError, EOFError) as err:
        raise InputDataError(f"{path}: cannot read image ({err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputDataError(f"{path}: anatomical image must be 3D, got shape {data.shape}")
    finite = np.isfinite(data)
    if not finite.any() or np.ptp(data[finite]) == 0:
        raise InputDataError(f"{path}: image is empty, all NaN or constant")
    return nib.Nifti1Image(np.where(finite, data, 0.0).astype(np.float32), img.affine, img.header)


def _to_template_grid(image: nib.Nifti1Image, to_template: np.ndarray,
                      template: nib.Nifti1Image) -> np.ndarray:
    return resample_array(np.asarray(image.dataobj, np.float32), image.affine, template.affine,
                          template.shape, order=1, world=to_template)


def _process_contrast(contrast: str, path: Path, cfg: PreprocConfig, work: Path, threads: int,
                      reference: MRIResult | None) -> MRIResult:
    times: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[f"seconds_{name}"] = now - clock
        clock = now

    image = load_mri(path)
    try:
        corrected = n4_correct(image, cfg, threads=threads)
    except ValueError as err:
        raise InputDataError(f"{path}: N4 bias correction failed ({err})") from err
    affine = corrected.affine  # the input's, kept by n4_correct
    del image  # the raw volume is not needed past N4 (peak memory during skull stripping)
    lap("n4")
    mask = skull_strip(corrected, cfg.skull_strip, tta=cfg.hdbet_tta, mode=cfg.hdbet_mode,
                       mirrors=cfg.hdbet_tta_mirrors, threads=threads, bf16=cfg.hdbet_bf16)
    mask_data = np.asarray(mask.dataobj) > 0
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    volume_ml = float(mask_data.sum()) * voxel_ml
    if not MIN_BRAIN_ML <= volume_ml <= MAX_BRAIN_ML:
        raise InputDataError(f"{path}: brain extraction gave an implausible {volume_ml:.0f} ml "
                             f"(expected {MIN_BRAIN_ML:.0f}–{MAX_BRAIN_ML:.0f} ml)")
    brain = nib.Nifti1Image(np.asarray(corrected.dataobj) * mask_data, affine)
    lap("skullstrip")
    try:
        normalised = normalise_intensity(corrected, mask, cfg.clip_percentiles, cfg.gamma)
    except ValueError as err:
        raise InputDataError(f"{path}: {err}") from err
    lap("intensity")

    template = load_template(cfg)
    fit: RigidFit
    if reference is None:
        fit = register_rigid(template, normalised, cfg, threads=threads, work=work,
                             fixed_mask=load_template_mask(cfg))
        to_template = fit.to_fixed
    else:
        ref_norm = normalise_intensity(reference.native_image, reference.native_mask,
                                       cfg.clip_percentiles, cfg.gamma)
        fit = register_rigid(ref_norm, normalised, cfg, threads=threads, work=work,
                             fixed_mask=reference.native_mask)
        to_template = compose(reference.to_template, fit.to_fixed)
    lap("register")

    mni_mask = _to_template_grid(mask, to_template, template) >= 0.5
    mni = np.clip(_to_template_grid(normalised, to_template, template), 0.0, 1.0) * mni_mask
    tpl_mask = np.asarray(load_template_mask(cfg).dataobj) > 0
    corr = float(np.corrcoef(mni[tpl_mask], np.asarray(template.dataobj)[tpl_mask])[0, 1])
    transform = write_itk_transform(to_template, work / f"{contrast}_to_template_xfm.mat")
    lap("resample")

    mni_mask_img = nib.Nifti1Image(mni_mask.astype(np.uint8), template.affine)
    mni_mask_img.set_data_dtype(np.uint8)
    metrics = {
        "mask_volume_ml": volume_ml,
        "registration_correlation": fit.correlation,
        "template_correlation": corr,
        **times,
        "seconds_total": float(sum(times.values())),
    }
    log.info("%s: brain %.0f ml, template r=%.3f, %.1f s", path.name, volume_ml, corr,
             metrics["seconds_total"])
    return MRIResult(contrast=contrast, mni_image=nib.Nifti1Image(mni.astype(np.float32),
                                                                  template.affine),
                     mni_mask=mni_mask_img, native_image=corrected, native_mask=mask,
                     native_brain=brain, transform_file=transform, to_template=to_template,
                     metrics=metrics)


def preprocess_mri_session(images: dict[str, Path], cfg: PreprocConfig, work: Path,
                           threads: int = 1) -> dict[str, MRIResult]:
    """Preprocess every contrast of one MRI session.

    Parameters
    ----------
    images : dict
        Contrast (``"T1w"``, ``"T2w"``, ``"FLAIR"``, ``"T2starw"``) → NIfTI path.
    cfg : PreprocConfig
        The preprocessing protocol.
    work : Path
        Scratch folder for this session (transform files are written here).
    threads : int
        ITK and torch threads.

    Returns
    -------
    dict
        Contrast → :class:`MRIResult`, T1w first when present.

    Raises
    ------
    InputDataError
        An input image is unusable or its brain extraction is implausible.
    """
    if not images:
        raise ValueError("preprocess_mri_session needs at least one image")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    order = sorted(images, key=lambda c: (c != "T1w", c))
    results: dict[str, MRIResult] = {}
    for contrast in order:
        reference = results.get("T1w") if contrast != "T1w" else None
        results[contrast] = _process_contrast(contrast, Path(images[contrast]), cfg, work,
                                              threads, reference)
    return results
