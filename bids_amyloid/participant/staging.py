"""Write a unit's outputs, sidecars and QC numbers/figures into its staging folder.

The staging folder has OUT's layout (names from :mod:`bids_amyloid.derivatives`);
:func:`bids_amyloid.participant.commit.commit` then moves it into OUT.
:func:`stage_mri` writes the MRI session's files, :func:`stage_pet` those of
one PET scan (SUVR image, its sidecar, the PET slice cache and the QC page data).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bids_amyloid import derivatives as drv
from bids_amyloid.config import TEMPLATE_SPACE
from bids_amyloid.io import write_json
from bids_amyloid.participant.outputs import (
    mri_outputs,
    native_t1w_paths,
    parameter_hash,
    pet_sources,
    reference_contrast,
    unit_parameters,
)
from bids_amyloid.participant.plan import (
    PET_CONTRAST,
    PetJob,
    RunContext,
    SessionJob,
    Steps,
    ses_tag,
    unit_tag,
)


def base_meta(ctx: RunContext, sources: Sequence[str], modality: str) -> dict[str, Any]:
    """Sidecar fields of every output: its sources and the parameters that made it."""
    return {"Sources": list(sources), "ParameterHash": parameter_hash(ctx.cfg, modality),
            "Parameters": unit_parameters(ctx.cfg, modality)}


def space_meta() -> dict[str, Any]:
    return {"SpatialReference": TEMPLATE_SPACE, "Space": TEMPLATE_SPACE,
            "Resolution": "1 mm isotropic (nilearn's MNI152 2009 symmetric template grid)"}


def save_nifti(img: nib.Nifti1Image, path: Path) -> None:
    img = nib.Nifti1Image(img.dataobj, img.affine, img.header)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def unit_metrics(values: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in values.items() if isinstance(v, int | float)}


def stage_mri(job: SessionJob, ctx: RunContext, steps: Steps, results: dict[str, Any],
               stage: Path) -> None:
    """Write the MRI unit's outputs and QC into ``stage`` (same layout as OUT)."""
    from bids_amyloid.preproc import report

    pp = ctx.cfg.preproc
    reference = reference_contrast(job.images)
    by_path = {o.path: o.sources for o in mri_outputs(stage, job, ctx.bids_dir)}
    figures, numbers, flags = [], {}, {}
    template = steps.load_template(pp)
    for contrast, res in results.items():
        if contrast not in job.images:
            continue
        preproc = drv.mri_preproc_path(stage, job.sub, job.ses, contrast)
        xfm = drv.mri_xfm_path(stage, job.sub, job.ses, contrast)
        save_nifti(res.mni_image, preproc)
        write_json(drv.sidecar_of(preproc), {
            **base_meta(ctx, by_path[preproc], "mri"), **space_meta(), "SkullStripped": True,
            "Description": (f"{contrast}: N4 bias correction, {pp.skull_strip} brain extraction, "
                            f"clipped to {pp.clip_percentiles[0]}–{pp.clip_percentiles[1]} %, "
                            f"min–max to [0, 1], gamma {pp.gamma}, rigid to {TEMPLATE_SPACE}"),
            "Metrics": unit_metrics(res.metrics)})
        shutil.copyfile(res.transform_file, xfm)
        write_json(drv.sidecar_of(xfm), {
            **base_meta(ctx, by_path[xfm], "mri"), "FromSpace": f"{contrast} native",
            "ToSpace": TEMPLATE_SPACE, "Type": "rigid", "Software": "ANTs",
            "Description": "ITK/ANTs affine (rigid) transform, native → template"})
        slices, indices = steps.extract_mri_slices(res.mni_image, pp)
        cache = drv.mri_slice_cache(stage, job.sub, job.ses, contrast)
        drv.write_slice_cache(cache, slices, indices, {
            **base_meta(ctx, [drv.output_uri(preproc, stage)], "mri"), **space_meta(),
            "Contrast": contrast, "SliceAxis": "sagittal (template axis 0)",
            "MinSliceMean": pp.min_slice_mean})
        if contrast == reference:
            mask = drv.brain_mask_path(stage, job.sub, job.ses)
            save_nifti(res.mni_mask, mask)
            dice = template_dice(res.mni_mask, template)
            write_json(drv.sidecar_of(mask), {
                **base_meta(ctx, by_path[mask], "mri"), **space_meta(), "Type": "Brain",
                "SkullStripped": False, "TemplateMaskDice": dice,
                "Description": f"brain mask of the {contrast} ({pp.skull_strip}), template grid"})
        if contrast == PET_CONTRAST:
            for path, img, kind in zip(native_t1w_paths(stage, job.sub, job.ses),
                                       (res.native_brain, res.native_mask), ("brain", "mask"),
                                       strict=True):
                save_nifti(img, path)
                write_json(drv.sidecar_of(path), {
                    **base_meta(ctx, by_path[path], "mri"), "SkullStripped": kind == "brain",
                    **({"Type": "Brain"} if kind == "mask" else {}),
                    "Description": f"{contrast} {kind} on its native grid ({pp.skull_strip}, "
                                   "N4-corrected): the target PET is registered to"})
        figures += _mri_figures(stage, job, contrast, res, template)
        numbers[contrast] = unit_metrics(res.metrics)
        if contrast == reference:
            numbers[contrast]["template_mask_dice"] = dice
        flags[contrast] = report.flag_metrics(numbers[contrast])
    qc = drv.qc_numbers_path(stage, job.sub, job.ses)
    write_json(qc, {**base_meta(ctx, by_path[qc], "mri"), "Unit": unit_tag(job.ses), "Session": job.ses,
                    "Kind": "anat", "Title": f"{unit_tag(job.ses)} MRI ({', '.join(job.images)})",
                    "Numbers": numbers, "Flags": flags, "Figures": figures})


def template_dice(mask: nib.Nifti1Image, template: nib.Nifti1Image) -> float:
    """Dice of a template-grid brain mask with the (brain-only) template's support.

    About 0.85–0.9 after a good strip and rigid registration (head sizes differ);
    a strip that kept the skull or lost brain, or a failed registration, drops it.
    """
    tpl = np.asarray(template.dataobj, dtype=np.float32)
    ref = tpl > 0.05 * float(tpl.max())
    ours = np.asarray(mask.dataobj) > 0
    if ours.shape != ref.shape:
        raise ValueError(f"mask grid {ours.shape} is not the template grid {ref.shape}")
    total = int(ours.sum()) + int(ref.sum())
    return 2.0 * int((ours & ref).sum()) / total if total else 0.0


def _write_png(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.name


def _mri_figures(stage: Path, job: SessionJob, contrast: str, res: Any,
                 template: nib.Nifti1Image) -> list[dict[str, str]]:
    from bids_amyloid.preproc import report

    title = f"sub-{job.sub} {unit_tag(job.ses)} {contrast}"
    strip = report.skullstrip_figure(res.native_image, res.native_mask, f"{title}: brain mask")
    reg = report.registration_figure(res.mni_image, template, f"{title}: {TEMPLATE_SPACE}")
    return [
        {"file": _write_png(drv.mri_figure_path(stage, job.sub, job.ses, "skullstrip", contrast), strip),
         "caption": f"{contrast}: brain mask (red) on the N4-corrected native image"},
        {"file": _write_png(drv.mri_figure_path(stage, job.sub, job.ses, "registration", contrast), reg),
         "caption": f"{contrast} in {TEMPLATE_SPACE} with the template's edges (cyan)"},
    ]


def stage_pet(job: SessionJob, pet: PetJob, ctx: RunContext, steps: Steps, t1: Any,
               result: Any, stage: Path) -> None:
    from bids_amyloid.preproc import report
    from bids_amyloid.preproc.pet import frames_description, pet_flags, sidecar_fields

    pp = ctx.cfg.preproc
    frames = frames_description(result.frames)
    sources = pet_sources(stage, job, pet, ctx.bids_dir)
    suvr = drv.pet_suvr_path(stage, job.sub, pet.ses, pet.tracer)
    save_nifti(result.suvr_mni, suvr)
    metrics = {"reference_mean": float(result.reference_mean), **unit_metrics(result.metrics)}
    write_json(drv.sidecar_of(suvr), {
        **base_meta(ctx, sources, "pet"), **space_meta(), "SkullStripped": False,
        "Description": (f"{pet.tracer} PET: {frames}, Gaussian FWHM {pp.pet_fwhm_mm} mm, "
                        f"rigid to the T1w of {unit_tag(job.ses)}, then to {TEMPLATE_SPACE}; SUVR with "
                        f"the GAAIN {pp.suvr_reference} reference region"),
        "TracerName": pet.tracer, "MRISession": ses_tag(job.ses), "Quantity": "SUVR",
        "ReferenceRegion": f"GAAIN Centiloid VOI {pp.suvr_reference}",
        "ReferenceRegionMean": metrics["reference_mean"], "Metrics": metrics,
        **sidecar_fields(result, pp)})
    slices, indices = steps.extract_pet_slices(result.suvr_mni, pp)
    cache = drv.pet_slice_cache(stage, job.sub, pet.ses, pet.tracer)
    drv.write_slice_cache(cache, slices, indices, {
        **base_meta(ctx, [drv.output_uri(suvr, stage)], "pet"), **space_meta(), "TracerName": pet.tracer,
        "MRISession": ses_tag(job.ses), "Quantity": "SUVR (not rescaled)",
        "SliceAxis": "sagittal (template axis 0)"})
    png = report.pet_figure(result.suvr_mni, t1.mni_image,
                            f"sub-{job.sub} {unit_tag(pet.ses, pet.tracer, ' ')} SUVR over "
                            f"{unit_tag(job.ses)} T1w")
    fig = drv.pet_figure_path(stage, job.sub, pet.ses, pet.tracer)
    write_json(drv.qc_numbers_path(stage, job.sub, pet.ses, pet.tracer), {
        **base_meta(ctx, sources, "pet"), "Unit": unit_tag(pet.ses, pet.tracer, " "), "Session": pet.ses,
        "Kind": "pet", "MRISession": ses_tag(job.ses),
        "Title": f"{unit_tag(pet.ses, pet.tracer, ' ')} PET (registered through {unit_tag(job.ses)})",
        "Numbers": {pet.tracer: metrics},
        "Flags": {pet.tracer: report.flag_metrics(metrics) + pet_flags(result)},
        "Notes": [f"PET frames: {frames}",
                  f"Centiloid VOIs: {sidecar_fields(result, pp)['CentiloidVOIPlacement']}"],
        "Figures": [{"file": _write_png(fig, png),
                     "caption": f"{pet.tracer} SUVR over the registered T1w of {unit_tag(job.ses)}"}]})
