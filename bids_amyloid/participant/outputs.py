"""What a unit writes, and whether it is already done (the restart rule).

A finished unit is skipped when every output and sidecar exists, the
``ParameterHash`` in its sidecars matches the current configuration and its
``Sources`` match the current inputs (and, for PET, the MRI session it was
registered through). The hash covers only the ``[preproc]`` fields that shape
that unit (:func:`bids_amyloid.config.preproc_parameters`): MRI outputs the MRI
and slice fields, PET outputs all of them, so a PET-only change leaves the MRI
outputs valid.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids_amyloid import derivatives as drv
from bids_amyloid.config import AppConfig, preproc_parameters
from bids_amyloid.participant.plan import PET_CONTRAST, PetJob, RunContext, SessionJob, ses_tag

MODALITY_STAGES = {"mri": ("mri", "slice"), "pet": ("mri", "pet", "slice")}


def unit_parameters(cfg: AppConfig, modality: str) -> dict[str, Any]:
    """The ``[preproc]`` values that shape the outputs of an ``"mri"`` or ``"pet"`` unit."""
    return preproc_parameters(cfg.preproc, MODALITY_STAGES[modality])


def parameter_hash(cfg: AppConfig, modality: str) -> str:
    """Hash of :func:`unit_parameters`: outputs made with other parameters are redone."""
    text = json.dumps(unit_parameters(cfg, modality), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Output:
    """One file a unit writes, with the Sources its sidecar must record."""

    path: Path
    sidecar: Path
    sources: tuple[str, ...]


def mri_outputs(out: Path, job: SessionJob, bids_dir: Path | None) -> list[Output]:
    """Every file the MRI unit of ``job`` writes under ``out`` (sidecar-bearing files)."""
    outs = []
    reference = reference_contrast(job.images)
    for contrast, raw in job.images.items():
        sources = contrast_sources(contrast, raw, job.images, bids_dir)
        preproc = drv.mri_preproc_path(out, job.sub, job.ses, contrast)
        xfm = drv.mri_xfm_path(out, job.sub, job.ses, contrast)
        cache = drv.mri_slice_cache(out, job.sub, job.ses, contrast)
        outs += [Output(preproc, drv.sidecar_of(preproc), sources),
                 Output(xfm, drv.sidecar_of(xfm), sources),
                 Output(cache, drv.sidecar_of(cache), (drv.output_uri(preproc, out),))]
        if contrast == reference:
            mask = drv.brain_mask_path(out, job.sub, job.ses)
            outs.append(Output(mask, drv.sidecar_of(mask), sources))
        if contrast == PET_CONTRAST:  # what PET is registered to, kept for PET-only re-runs
            outs += [Output(p, drv.sidecar_of(p), sources)
                     for p in native_t1w_paths(out, job.sub, job.ses)]
    qc = drv.qc_numbers_path(out, job.sub, job.ses)
    outs.append(Output(qc, qc, tuple(drv.source_uri(p, bids_dir) for p in job.images.values())))
    return outs


def pet_outputs(out: Path, job: SessionJob, pet: PetJob, bids_dir: Path | None) -> list[Output]:
    """Every file the unit of one PET scan writes."""
    sources = pet_sources(out, job, pet, bids_dir)
    suvr = drv.pet_suvr_path(out, job.sub, pet.ses, pet.tracer)
    cache = drv.pet_slice_cache(out, job.sub, pet.ses, pet.tracer)
    qc = drv.qc_numbers_path(out, job.sub, pet.ses, pet.tracer)
    return [Output(suvr, drv.sidecar_of(suvr), sources),
            Output(cache, drv.sidecar_of(cache), (drv.output_uri(suvr, out),)),
            Output(qc, qc, sources)]


def native_t1w_paths(out: Path, sub: str, ses: str) -> tuple[Path, Path]:
    """The native-grid T1w brain and brain mask that PET units register to."""
    return drv.native_brain_path(out, sub, ses), drv.native_mask_path(out, sub, ses)


def mri_finished(ctx: RunContext, job: SessionJob) -> bool:
    """True when the MRI unit's outputs are complete and current (and no --overwrite)."""
    return not ctx.overwrite and is_finished(mri_outputs(ctx.out, job, ctx.bids_dir),
                                             parameter_hash(ctx.cfg, "mri"))


def reference_contrast(images: dict[str, Path]) -> str:
    """The contrast whose brain mask is the session's (the T1w when present)."""
    return PET_CONTRAST if PET_CONTRAST in images else next(iter(images))


def contrast_sources(contrast: str, raw: Path, images: dict[str, Path],
                      bids_dir: Path | None) -> tuple[str, ...]:
    reference = reference_contrast(images)
    paths = [raw] if contrast == reference else [raw, images[reference]]
    return tuple(drv.source_uri(p, bids_dir) for p in paths)


def pet_sources(out: Path, job: SessionJob, pet: PetJob, bids_dir: Path | None) -> tuple[str, ...]:
    return (drv.source_uri(pet.path, bids_dir), drv.source_uri(job.images[PET_CONTRAST], bids_dir),
            drv.output_uri(drv.mri_xfm_path(out, job.sub, job.ses, PET_CONTRAST), out))


def is_finished(outputs: list[Output], expected_hash: str, extra: dict[str, Any] | None = None) -> bool:
    """True when every output and sidecar exists and records these parameters and sources."""
    for item in outputs:
        if not (item.path.is_file() and item.sidecar.is_file()):
            return False
        try:
            meta = json.loads(item.sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if meta.get("ParameterHash") != expected_hash or tuple(meta.get("Sources", ())) != item.sources:
            return False
        if any(meta.get(key) != value for key, value in (extra or {}).items()):
            return False
    return True


def job_finished(ctx: RunContext, job: SessionJob) -> bool:
    """True when the MRI unit and every PET unit of ``job`` are finished (and no --overwrite)."""
    if not mri_finished(ctx, job):
        return False
    expected = parameter_hash(ctx.cfg, "pet")
    return all(is_finished(pet_outputs(ctx.out, job, pet, ctx.bids_dir), expected,
                           {"MRISession": ses_tag(job.ses)}) for pet in job.pets)
