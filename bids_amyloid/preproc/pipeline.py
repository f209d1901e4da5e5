"""Participant level: run the MRI and PET preprocessing of every selected session.

The unit of work is a *job*: one MRI session (its requested contrasts, T1w
first) plus every PET scan paired with it (PET is registered through that
session's T1w, pairing as in the cohort: closest session within
``pair_window_days``). The contrasts preprocessed are the T1w plus those named
by ``--contrasts`` and ``--teacher-contrasts`` (what the group level will
read); other contrasts are registered to their session's T1w. Jobs run one per process (``--nprocs``, spawn context: ANTs
and torch do not survive ``fork``) with ``--omp-nthreads`` threads each.

Within a job each *unit* (the MRI session, then each PET scan) is
all-or-nothing: its files are written into a staging folder in the work dir
and only moved into OUT when the whole unit succeeded — the old sidecars
first removed, then the data files, then the sidecars, each move atomic. A
sidecar thus marks a finished file, and a run killed at any moment leaves at
worst data files without sidecars, which the next run redoes.

A finished unit is skipped when every output and sidecar exists, the
``ParameterHash`` in its sidecars matches the current ``[preproc]``
configuration and its ``Sources`` match the current inputs (and, for PET,
the MRI session it was registered through); otherwise it is redone
(``--overwrite`` redoes everything). A failing unit writes its reason and
traceback to ``OUT/sub-XX/log/<unit>.log``; the run goes on and ends with a
summary and exit code 1.

Example
-------
``bids-amyloid /data/bids /data/out participant --participant-label 01 --nprocs 2``
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bids_amyloid import derivatives as drv
from bids_amyloid.config import MRI_CONTRASTS, TEMPLATE_SPACE, AppConfig, config_to_dict
from bids_amyloid.errors import EXIT_OK, EXIT_SESSION_FAILED, InputDataError
from bids_amyloid.io import atomic_path, remove_stale_temporaries, write_json, write_text
from bids_amyloid.options import RunOptions

LOG = logging.getLogger(__name__)
OUT_OF_WINDOW = "no_mri_within_window"  # pairing reason code of bids.pair_one
PET_CONTRAST = "T1w"  # PET is registered through its MRI session's T1w


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PetJob:
    """One PET scan to register through its job's MRI session."""

    ses: str
    tracer: str
    path: Path


@dataclass(frozen=True)
class SessionJob:
    """One MRI session's contrasts and the PET scans paired with it."""

    sub: str
    ses: str
    images: dict[str, Path]  # contrast → raw NIfTI, in MRI_CONTRASTS order
    pets: tuple[PetJob, ...] = ()


@dataclass(frozen=True)
class RunContext:
    """What every job needs besides its own inputs (picklable for worker processes)."""

    out: Path
    work: Path
    bids_dir: Path | None
    cfg: AppConfig
    threads: int = 1
    overwrite: bool = False
    log_level: int = logging.INFO


@dataclass(frozen=True)
class UnitResult:
    """Outcome of one unit: the MRI session (``tracer`` None) or one PET scan."""

    sub: str
    ses: str
    tracer: str | None = None
    error: str | None = None
    seconds: float = 0.0
    log: Path | None = None

    @property
    def label(self) -> str:
        return unit_tag(self.ses, self.tracer, " ")


def ses_tag(ses: str) -> str:
    """``ses-<label>``, or ``""`` for a dataset without sessions."""
    return f"ses-{ses}" if ses else ""


def unit_tag(ses: str, tracer: str | None = None, sep: str = "_") -> str:
    """Name of a unit in logs and file names: ``ses-01``, ``ses-02_trc-AV45``, ``mri``."""
    parts = [p for p in (ses_tag(ses), f"trc-{tracer}" if tracer else "") if p]
    return sep.join(parts) or "mri"


@dataclass
class Steps:
    """The image functions a job calls (``bids_amyloid.preproc`` science modules)."""

    preprocess_mri_session: Callable[..., dict[str, Any]]
    preprocess_pet: Callable[..., Any]
    extract_mri_slices: Callable[..., tuple[Any, list[int]]]
    extract_pet_slices: Callable[..., tuple[Any, list[int]]]
    load_template: Callable[..., nib.Nifti1Image]


def load_steps() -> Steps:
    """Import the heavy image functions (ANTs, torch) only when a job runs."""
    from bids_amyloid.preproc.mri import preprocess_mri_session
    from bids_amyloid.preproc.pet import preprocess_pet
    from bids_amyloid.preproc.slices import extract_mri_slices, extract_pet_slices
    from bids_amyloid.preproc.template import load_template

    return Steps(preprocess_mri_session, preprocess_pet, extract_mri_slices,
                 extract_pet_slices, load_template)


def parameter_hash(cfg: AppConfig) -> str:
    """Hash of the ``[preproc]`` section: outputs made with other parameters are redone."""
    text = json.dumps(config_to_dict(cfg.preproc), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_uri(path: Path, bids_dir: Path | None) -> str:
    """``bids:raw:<relative path>`` for an input inside BIDS_DIR, else the absolute path."""
    path = Path(path).resolve()
    if bids_dir is not None:
        with contextlib.suppress(ValueError):
            return "bids:raw:" + path.relative_to(Path(bids_dir).resolve()).as_posix()
    return str(path)


def output_uri(path: Path, out: Path) -> str:
    """``bids::<relative path>`` for a file of this derivative dataset."""
    return "bids::" + Path(path).relative_to(out).as_posix()


def session_contrasts(available: dict[str, Path], wanted: Sequence[str]) -> dict[str, Path]:
    """The wanted contrasts a session has, plus its T1w (other contrasts register to it)."""
    keep = set(wanted) | {PET_CONTRAST}
    return {c: available[c] for c in MRI_CONTRASTS if c in available and c in keep}


# --------------------------------------------------------------------------- expected outputs


@dataclass(frozen=True)
class Output:
    """One file a unit writes, with the Sources its sidecar must record."""

    path: Path
    sidecar: Path
    sources: tuple[str, ...]


def mri_outputs(out: Path, job: SessionJob, bids_dir: Path | None) -> list[Output]:
    """Every file the MRI unit of ``job`` writes under ``out`` (sidecar-bearing files)."""
    outs = []
    reference = _reference_contrast(job.images)
    for contrast, raw in job.images.items():
        sources = _contrast_sources(contrast, raw, job.images, bids_dir)
        preproc = _preproc_path(out, job.sub, job.ses, contrast)
        xfm = _xfm_path(out, job.sub, job.ses, contrast)
        cache = drv.mri_slice_cache(out, job.sub, job.ses, contrast)
        outs += [Output(preproc, drv.sidecar_of(preproc), sources),
                 Output(xfm, drv.sidecar_of(xfm), sources),
                 Output(cache, drv.sidecar_of(cache), (output_uri(preproc, out),))]
        if contrast == reference:
            mask = _mask_path(out, job.sub, job.ses)
            outs.append(Output(mask, drv.sidecar_of(mask), sources))
    qc = _mri_qc_path(out, job.sub, job.ses)
    outs.append(Output(qc, qc, tuple(source_uri(p, bids_dir) for p in job.images.values())))
    return outs


def pet_outputs(out: Path, job: SessionJob, pet: PetJob, bids_dir: Path | None) -> list[Output]:
    """Every file the unit of one PET scan writes."""
    sources = _pet_sources(out, job, pet, bids_dir)
    suvr = _suvr_path(out, job.sub, pet)
    cache = drv.pet_slice_cache(out, job.sub, pet.ses, pet.tracer)
    qc = _pet_qc_path(out, job.sub, pet)
    return [Output(suvr, drv.sidecar_of(suvr), sources),
            Output(cache, drv.sidecar_of(cache), (output_uri(suvr, out),)),
            Output(qc, qc, sources)]


def _reference_contrast(images: dict[str, Path]) -> str:
    return PET_CONTRAST if PET_CONTRAST in images else next(iter(images))


def _contrast_sources(contrast: str, raw: Path, images: dict[str, Path],
                      bids_dir: Path | None) -> tuple[str, ...]:
    reference = _reference_contrast(images)
    paths = [raw] if contrast == reference else [raw, images[reference]]
    return tuple(source_uri(p, bids_dir) for p in paths)


def _pet_sources(out: Path, job: SessionJob, pet: PetJob, bids_dir: Path | None) -> tuple[str, ...]:
    return (source_uri(pet.path, bids_dir), source_uri(job.images[PET_CONTRAST], bids_dir),
            output_uri(_xfm_path(out, job.sub, job.ses, PET_CONTRAST), out))


def _preproc_path(out: Path, sub: str, ses: str, contrast: str) -> Path:
    return drv.derivative_path(out, sub, ses, "anat", suffix=contrast, ext=".nii.gz",
                               space=TEMPLATE_SPACE, desc="preproc")


def _mask_path(out: Path, sub: str, ses: str) -> Path:
    return drv.derivative_path(out, sub, ses, "anat", suffix="mask", ext=".nii.gz",
                               space=TEMPLATE_SPACE, desc="brain")


def _xfm_path(out: Path, sub: str, ses: str, contrast: str) -> Path:
    return drv.derivative_path(out, sub, ses, "anat", suffix="xfm", ext=".mat",
                               from_=contrast, to=TEMPLATE_SPACE, mode="image")


def _suvr_path(out: Path, sub: str, pet: PetJob) -> Path:
    return drv.derivative_path(out, sub, pet.ses, "pet", suffix="pet", ext=".nii.gz",
                               trc=pet.tracer, space=TEMPLATE_SPACE, desc="suvr")


def _mri_qc_path(out: Path, sub: str, ses: str) -> Path:
    return drv.figure_path(out, sub, ses, desc="anat", suffix="qc", ext=".json")


def _pet_qc_path(out: Path, sub: str, pet: PetJob) -> Path:
    return drv.figure_path(out, sub, pet.ses, desc="pet", suffix="qc", ext=".json", trc=pet.tracer)


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
    if ctx.overwrite:
        return False
    expected = parameter_hash(ctx.cfg)
    if not is_finished(mri_outputs(ctx.out, job, ctx.bids_dir), expected):
        return False
    return all(is_finished(pet_outputs(ctx.out, job, pet, ctx.bids_dir), expected,
                           {"MRISession": ses_tag(job.ses)}) for pet in job.pets)


# --------------------------------------------------------------------------- one job (worker)


def run_job(job: SessionJob, ctx: RunContext) -> list[UnitResult]:
    """Run one MRI session, then its PET scans; a bad session is a result, not an exception.

    PET files are checked first: a bad one fails at once. When the MRI and
    every remaining PET are finished, nothing else runs (a permanently bad PET
    does not make each re-run redo its MRI). Otherwise the MRI and all remaining
    PET are redone together: PET is registered through the MRI result computed
    in this same job, so MRI and PET outputs always agree.
    """
    results, pets = _precheck_pets(job, ctx)
    job = replace(job, pets=tuple(pets))
    if job_finished(ctx, job):
        LOG.info("sub-%s %s: up to date apart from unusable PET", job.sub, unit_tag(job.ses))
        return results
    work = ctx.work / f"sub-{job.sub}_{unit_tag(job.ses)}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    mri_res: dict[str, Any] | None = None
    steps: Steps | None = None
    log = drv.log_path(ctx.out, job.sub, unit_tag(job.ses))
    with _unit(job.sub, job.ses, None, log, work / "mri.log") as box:
        steps = load_steps()
        mri_res = _mri_unit(job, ctx, steps, work)
    results.append(mri_result := box.result)
    for pet in job.pets:
        log = drv.log_path(ctx.out, job.sub, unit_tag(pet.ses, pet.tracer))
        scratch = work / f"pet-{pet.ses}-{pet.tracer}.log"
        with _unit(job.sub, pet.ses, pet.tracer, log, scratch) as box:
            if mri_res is None or steps is None:
                raise RuntimeError(f"its MRI session {unit_tag(job.ses)} failed: {mri_result.error}")
            _pet_unit(job, pet, mri_res, ctx, steps, work)
        results.append(box.result)
    if all(r.error is None for r in results):
        shutil.rmtree(work, ignore_errors=True)
    return results


def _precheck_pets(job: SessionJob, ctx: RunContext) -> tuple[list[UnitResult], list[PetJob]]:
    """Fail PET scans whose file is unusable (fast checks); return failures and the rest."""
    from bids_amyloid.preproc.checks import check_image

    failures, good = [], []
    for pet in job.pets:
        try:
            check_image(pet.path, "pet")
        except InputDataError as err:
            LOG.error("sub-%s %s: FAILED: %s", job.sub, unit_tag(pet.ses, pet.tracer, " "), err)
            log = _write_failure_log(ctx.out, job.sub, unit_tag(pet.ses, pet.tracer), str(err))
            failures.append(UnitResult(job.sub, pet.ses, pet.tracer, str(err), 0.0, log))
        else:
            good.append(pet)
    return failures, good


class _Box:
    result: UnitResult


@contextlib.contextmanager
def _unit(sub: str, ses: str, tracer: str | None, log: Path, scratch: Path) -> Iterator[_Box]:
    """Run a unit: log to ``scratch`` then copy to ``log``; turn its exception into a result."""
    box = _Box()
    handler = logging.FileHandler(scratch, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    package = logging.getLogger("bids_amyloid")
    package.addHandler(handler)
    start = time.perf_counter()
    name = f"sub-{sub} {unit_tag(ses, tracer, ' ')}"
    error = None
    try:
        LOG.info("%s: started", name)
        yield box
        LOG.info("%s: finished in %.1f s", name, time.perf_counter() - start)
    except Exception as err:  # a failing session must not stop the run
        error = str(err) if isinstance(err, ValueError) and str(err) else f"{type(err).__name__}: {err}"
        LOG.error("%s: FAILED: %s\n%s", name, error, traceback.format_exc())
    finally:
        package.removeHandler(handler)
        handler.close()
    try:
        with atomic_path(log) as tmp:
            shutil.copyfile(scratch, tmp)
    except OSError as err:
        LOG.error("%s: cannot write its log %s: %s", name, log, err)
    box.result = UnitResult(sub, ses, tracer, error, time.perf_counter() - start, log)


def _mri_unit(job: SessionJob, ctx: RunContext, steps: Steps, work: Path) -> dict[str, Any]:
    """Check and preprocess the session's MRI, then stage and commit its outputs."""
    from bids_amyloid.preproc.checks import check_session_inputs

    check_session_inputs(job.images)
    results = steps.preprocess_mri_session(dict(job.images), ctx.cfg.preproc, work / "mri",
                                           threads=ctx.threads)
    missing = set(job.images) - set(results)
    if missing:
        raise RuntimeError(f"preprocessing returned no result for {sorted(missing)}")
    stage = work / "stage-mri"
    _stage_mri(job, ctx, steps, results, stage)
    commit(stage, ctx.out, mri_outputs(stage, job, ctx.bids_dir))
    return results


def _pet_unit(job: SessionJob, pet: PetJob, mri_res: dict[str, Any], ctx: RunContext,
              steps: Steps, work: Path) -> None:
    pet_work = work / f"pet-{pet.ses}-{pet.tracer}"
    result = steps.preprocess_pet(pet.path, mri_res[PET_CONTRAST], ctx.cfg.preproc, pet_work,
                                  threads=ctx.threads)
    stage = work / f"stage-pet-{pet.ses}-{pet.tracer}"
    _stage_pet(job, pet, ctx, steps, mri_res[PET_CONTRAST], result, stage)
    commit(stage, ctx.out, pet_outputs(stage, job, pet, ctx.bids_dir))


# --------------------------------------------------------------------------- staging


def _base_meta(ctx: RunContext, sources: Sequence[str]) -> dict[str, Any]:
    return {"Sources": list(sources), "ParameterHash": parameter_hash(ctx.cfg),
            "Parameters": config_to_dict(ctx.cfg.preproc)}


def _space_meta() -> dict[str, Any]:
    return {"SpatialReference": TEMPLATE_SPACE, "Space": TEMPLATE_SPACE,
            "Resolution": "1 mm isotropic (nilearn's MNI152 2009 symmetric template grid)"}


def _save_nifti(img: nib.Nifti1Image, path: Path) -> None:
    img = nib.Nifti1Image(img.dataobj, img.affine, img.header)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in values.items() if isinstance(v, int | float)}


def _stage_mri(job: SessionJob, ctx: RunContext, steps: Steps, results: dict[str, Any],
               stage: Path) -> None:
    """Write the MRI unit's outputs and QC into ``stage`` (same layout as OUT)."""
    from bids_amyloid.preproc import report

    pp = ctx.cfg.preproc
    reference = _reference_contrast(job.images)
    by_path = {o.path: o.sources for o in mri_outputs(stage, job, ctx.bids_dir)}
    figures, numbers, flags = [], {}, {}
    template = steps.load_template(pp)
    for contrast, res in results.items():
        if contrast not in job.images:
            continue
        preproc = _preproc_path(stage, job.sub, job.ses, contrast)
        xfm = _xfm_path(stage, job.sub, job.ses, contrast)
        _save_nifti(res.mni_image, preproc)
        write_json(drv.sidecar_of(preproc), {
            **_base_meta(ctx, by_path[preproc]), **_space_meta(), "SkullStripped": True,
            "Description": (f"{contrast}: N4 bias correction, {pp.skull_strip} brain extraction, "
                            f"clipped to {pp.clip_percentiles[0]}–{pp.clip_percentiles[1]} %, "
                            f"min–max to [0, 1], gamma {pp.gamma}, rigid to {TEMPLATE_SPACE}"),
            "Metrics": _metrics(res.metrics)})
        shutil.copyfile(res.transform_file, xfm)
        write_json(drv.sidecar_of(xfm), {
            **_base_meta(ctx, by_path[xfm]), "FromSpace": f"{contrast} native",
            "ToSpace": TEMPLATE_SPACE, "Type": pp.registration, "Software": "ANTs",
            "Description": "ITK/ANTs affine (rigid) transform, native → template"})
        slices, indices = steps.extract_mri_slices(res.mni_image, pp)
        cache = drv.mri_slice_cache(stage, job.sub, job.ses, contrast)
        drv.write_slice_cache(cache, slices, indices, {
            **_base_meta(ctx, [output_uri(preproc, stage)]), **_space_meta(),
            "Contrast": contrast, "SliceAxis": "sagittal (template axis 0)",
            "MinSliceMean": pp.min_slice_mean})
        if contrast == reference:
            mask = _mask_path(stage, job.sub, job.ses)
            _save_nifti(res.mni_mask, mask)
            dice = template_dice(res.mni_mask, template)
            write_json(drv.sidecar_of(mask), {
                **_base_meta(ctx, by_path[mask]), **_space_meta(), "Type": "Brain",
                "SkullStripped": False, "TemplateMaskDice": dice,
                "Description": f"brain mask of the {contrast} ({pp.skull_strip}), template grid"})
        figures += _mri_figures(stage, job, contrast, res, template)
        numbers[contrast] = _metrics(res.metrics)
        if contrast == reference:
            numbers[contrast]["template_mask_dice"] = dice
        flags[contrast] = report.flag_metrics(numbers[contrast])
    qc = _mri_qc_path(stage, job.sub, job.ses)
    write_json(qc, {**_base_meta(ctx, by_path[qc]), "Unit": unit_tag(job.ses), "Session": job.ses,
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
        {"file": _write_png(drv.figure_path(stage, job.sub, job.ses, desc="skullstrip",
                                            suffix=contrast), strip),
         "caption": f"{contrast}: brain mask (red) on the N4-corrected native image"},
        {"file": _write_png(drv.figure_path(stage, job.sub, job.ses, desc="registration",
                                            suffix=contrast), reg),
         "caption": f"{contrast} in {TEMPLATE_SPACE} with the template's edges (cyan)"},
    ]


def _stage_pet(job: SessionJob, pet: PetJob, ctx: RunContext, steps: Steps, t1: Any,
               result: Any, stage: Path) -> None:
    from bids_amyloid.preproc import report

    pp = ctx.cfg.preproc
    sources = _pet_sources(stage, job, pet, ctx.bids_dir)
    suvr = _suvr_path(stage, job.sub, pet)
    _save_nifti(result.suvr_mni, suvr)
    metrics = {"reference_mean": float(result.reference_mean), **_metrics(result.metrics)}
    write_json(drv.sidecar_of(suvr), {
        **_base_meta(ctx, sources), **_space_meta(), "SkullStripped": False,
        "Description": (f"{pet.tracer} PET: frames averaged, Gaussian FWHM {pp.pet_fwhm_mm} mm, "
                        f"rigid to the T1w of {unit_tag(job.ses)}, then to {TEMPLATE_SPACE}; SUVR with "
                        f"the GAAIN {pp.suvr_reference} reference region"),
        "TracerName": pet.tracer, "MRISession": ses_tag(job.ses), "Quantity": "SUVR",
        "ReferenceRegion": f"GAAIN Centiloid VOI {pp.suvr_reference}",
        "ReferenceRegionMean": metrics["reference_mean"], "Metrics": metrics})
    slices, indices = steps.extract_pet_slices(result.suvr_mni, pp)
    cache = drv.pet_slice_cache(stage, job.sub, pet.ses, pet.tracer)
    drv.write_slice_cache(cache, slices, indices, {
        **_base_meta(ctx, [output_uri(suvr, stage)]), **_space_meta(), "TracerName": pet.tracer,
        "MRISession": ses_tag(job.ses), "Quantity": "SUVR (not rescaled)",
        "SliceAxis": "sagittal (template axis 0)"})
    png = report.pet_figure(result.suvr_mni, t1.mni_image,
                            f"sub-{job.sub} {unit_tag(pet.ses, pet.tracer, ' ')} SUVR over "
                            f"{unit_tag(job.ses)} T1w")
    fig = drv.figure_path(stage, job.sub, pet.ses, desc="suvr", suffix="pet", trc=pet.tracer)
    write_json(_pet_qc_path(stage, job.sub, pet), {
        **_base_meta(ctx, sources), "Unit": unit_tag(pet.ses, pet.tracer, " "), "Session": pet.ses,
        "Kind": "pet", "MRISession": ses_tag(job.ses),
        "Title": f"{unit_tag(pet.ses, pet.tracer, ' ')} PET (registered through {unit_tag(job.ses)})",
        "Numbers": {pet.tracer: metrics}, "Flags": {pet.tracer: report.flag_metrics(metrics)},
        "Figures": [{"file": _write_png(fig, png),
                     "caption": f"{pet.tracer} SUVR over the registered T1w of {unit_tag(job.ses)}"}]})


# --------------------------------------------------------------------------- commit


def commit(stage: Path, out: Path, outputs: list[Output]) -> None:
    """Move a unit's staged files into ``out``: old sidecars out, data in, sidecars last.

    Every staged file (figures included) is moved; ``outputs`` names the sidecars
    that mark completion, which are written only after all data files are in place.
    """
    missing = [str(p.relative_to(stage)) for o in outputs for p in {o.path, o.sidecar}
               if not p.is_file()]
    if missing:
        raise RuntimeError(f"nothing committed: outputs missing from the staging folder: "
                           f"{', '.join(sorted(missing))}")
    staged = sorted(p for p in stage.rglob("*") if p.is_file())
    markers = {o.sidecar.relative_to(stage) for o in outputs}
    for rel in markers:
        (out / rel).unlink(missing_ok=True)
    data = [p for p in staged if p.relative_to(stage) not in markers]
    last = [p for p in staged if p.relative_to(stage) in markers]
    for src in data + last:
        _move_atomic(src, out / src.relative_to(stage))


def _move_atomic(src: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        try:
            os.replace(src, tmp)
        except OSError:  # another file system: copy instead
            shutil.copyfile(src, tmp)


# --------------------------------------------------------------------------- run


def _init_worker(level: int, threads: int) -> None:
    """Spawned workers: logging like the parent, thread counts before heavy imports."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for var in ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def execute(jobs: list[SessionJob], ctx: RunContext, nprocs: int,
            progress: bool = False) -> list[UnitResult]:
    """Run ``jobs`` (``nprocs`` at a time), logging one line per finished job."""
    if not jobs:
        return []
    start = time.perf_counter()
    results: list[UnitResult] = []
    bar = _progress_bar(len(jobs)) if progress else None

    def done(n: int, job: SessionJob, units: list[UnitResult]) -> None:
        results.extend(units)
        state = "ok" if all(u.error is None for u in units) else "FAILED"
        LOG.info("[%d/%d] sub-%s %s %s (%.0f s; %.0f s elapsed)", n, len(jobs), job.sub,
                 unit_tag(job.ses), state, sum(u.seconds for u in units), time.perf_counter() - start)
        if bar is not None:
            bar.update(1)

    if nprocs <= 1 or len(jobs) == 1:
        for n, job in enumerate(jobs, 1):
            done(n, job, run_job(job, ctx))
    else:
        pool = cf.ProcessPoolExecutor(max_workers=min(nprocs, len(jobs)),
                                      mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_init_worker,
                                      initargs=(ctx.log_level, ctx.threads))
        with pool:
            futures = {pool.submit(run_job, job, ctx): job for job in jobs}
            for n, fut in enumerate(cf.as_completed(futures), 1):
                job = futures[fut]
                try:
                    units = fut.result()
                except Exception as err:  # a worker died (e.g. out of memory)
                    units = [UnitResult(job.sub, job.ses, None, f"worker process failed: {err}")]
                done(n, job, units)
    if bar is not None:
        bar.close()
    return results


def _progress_bar(total: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="session", file=sys.stderr)


def plan_jobs(sessions: Sequence[Any], contrasts: Sequence[str],
              pets_by_session: dict[tuple[str, str], list[PetJob]]) -> list[SessionJob]:
    """One job per MRI session having a wanted contrast (or PET to register)."""
    jobs = []
    for ses in sorted(sessions, key=lambda s: (s.sub, s.ses)):
        pets = tuple(pets_by_session.get((ses.sub, ses.ses), ()))
        images = session_contrasts(ses.images, contrasts)
        if not pets and not any(c in ses.images for c in contrasts):
            LOG.debug("sub-%s %s: none of %s; skipped", ses.sub, unit_tag(ses.ses), ", ".join(contrasts))
            continue
        jobs.append(SessionJob(ses.sub, ses.ses, images, pets))
    return jobs


def _context(out: Path, opts: RunOptions, cfg: AppConfig) -> RunContext:
    work = opts.work_dir if opts.work_dir is not None else out / "work"
    return RunContext(out=out, work=work, bids_dir=opts.bids_dir, cfg=cfg,
                      threads=opts.omp_nthreads, overwrite=opts.overwrite,
                      log_level=logging.getLogger("bids_amyloid").getEffectiveLevel())


def _prepare(out: Path, ctx: RunContext, subjects: set[str]) -> None:
    drv.init_output(out, ctx.bids_dir)
    for sub in sorted(subjects):  # only our subjects: parallel array jobs share OUT
        folder = out / f"sub-{sub}"
        if folder.is_dir():
            n = remove_stale_temporaries(folder)
            if n:
                LOG.info("sub-%s: removed %d temporary files left by an interrupted run", sub, n)


def _run(jobs: list[SessionJob], ctx: RunContext, opts: RunOptions,
         early_failures: list[UnitResult]) -> list[UnitResult]:
    """Skip finished jobs, run the rest, rebuild touched subjects' reports."""
    todo = []
    for job in jobs:
        if job_finished(ctx, job):
            LOG.info("sub-%s %s: up to date, skipped", job.sub, unit_tag(job.ses))
        else:
            todo.append(job)
    LOG.info("%d of %d MRI sessions to process (%d up to date)", len(todo), len(jobs),
             len(jobs) - len(todo))
    results = early_failures + execute(todo, ctx, opts.nprocs, opts.progress)
    _write_reports(ctx.out, {j.sub for j in todo} | {r.sub for r in early_failures}, results)
    _cleanup_work(ctx)
    return results


def _write_reports(out: Path, subjects: set[str], results: list[UnitResult]) -> None:
    from bids_amyloid.preproc.report import Failure, write_subject_report

    for sub in sorted(subjects | {r.sub for r in results}):
        failures = [Failure(r.label, r.error or "", _relative(r.log, out))
                    for r in results if r.sub == sub and r.error]
        try:
            path = write_subject_report(out, sub, failures)
        except (OSError, ValueError) as err:
            LOG.error("sub-%s: QC report not written: %s", sub, err)
            continue
        LOG.info("sub-%s: QC report %s", sub, path)


def _relative(path: Path | None, out: Path) -> str:
    if path is None:
        return ""
    try:
        return path.relative_to(out).as_posix()
    except ValueError:
        return str(path)


def _cleanup_work(ctx: RunContext) -> None:
    with contextlib.suppress(OSError):
        ctx.work.rmdir()  # only if empty: failed jobs keep their folder for inspection


def _summarise(results: list[UnitResult], out: Path) -> int:
    failed = [r for r in results if r.error]
    done = len(results) - len(failed)
    if not failed:
        LOG.info("participant level: %d sessions/scans processed, none failed", done)
        return EXIT_OK
    LOG.error("participant level: %d processed, %d FAILED:", done, len(failed))
    for r in failed:
        LOG.error("  sub-%s %s: %s (log: %s)", r.sub, r.label, r.error, _relative(r.log, out))
    return EXIT_SESSION_FAILED


def _write_failure_log(out: Path, sub: str, unit: str, text: str) -> Path:
    path = drv.log_path(out, sub, unit)
    write_text(path, text + "\n")
    return path


def run_participant(opts: RunOptions, cfg: AppConfig) -> int:
    """Entry point of ``bids-amyloid BIDS OUT participant``; returns the exit code."""
    from bids_amyloid.bids import collect_inventory
    from bids_amyloid.cohort import pair_pet_with_mri

    out = opts.output_dir
    ctx = _context(out, opts, cfg)
    inv = collect_inventory(opts, cfg)
    _prepare(out, ctx, {s.sub for s in inv.mri} | {p.sub for p in inv.pet})
    pets: dict[tuple[str, str], list[PetJob]] = {}
    orphans: list[UnitResult] = []
    for scan, mri, reason in pair_pet_with_mri(inv, (PET_CONTRAST,), cfg.cohort.pair_window_days):
        if mri is None and reason.startswith(OUT_OF_WINDOW):
            # expected in longitudinal cohorts: the cohort stage excludes it with this reason
            LOG.warning("PET %s skipped, not an error: %s", scan.path, reason)
            continue
        if mri is None:
            error = f"PET {scan.path}: no usable MRI to register it to ({reason})"
            if opts.session_labels:
                error += "; note that --session-label also limits the MRI sessions considered"
            log = _write_failure_log(out, scan.sub, unit_tag(scan.ses, scan.tracer), error)
            orphans.append(UnitResult(scan.sub, scan.ses, scan.tracer, error, 0.0, log))
            continue
        pets.setdefault((mri.sub, mri.ses), []).append(PetJob(scan.ses, scan.tracer, scan.path))
    contrasts = tuple(dict.fromkeys((PET_CONTRAST, *cfg.cohort.contrasts, *opts.teacher_contrasts)))
    jobs = plan_jobs(inv.mri, contrasts, pets)
    return _summarise(_run(jobs, ctx, opts, orphans), out)


def run_mri_sessions(sessions: list[Any], contrasts: tuple[str, ...], out: Path, cfg: AppConfig,
                     opts: RunOptions) -> dict[tuple[str, str], str | None]:
    """MRI-only preprocessing of ``sessions`` into ``out`` (used by predict).

    Returns ``{(sub, ses): None}`` for sessions whose outputs are ready (made now
    or already up to date) and the failure reason otherwise.
    """
    out = Path(out)
    ctx = _context(out, opts, cfg)
    _prepare(out, ctx, {s.sub for s in sessions})
    jobs = plan_jobs(sessions, contrasts, {})
    status: dict[tuple[str, str], str | None] = {
        (s.sub, s.ses): f"no {' or '.join(contrasts)} image in this session" for s in sessions}
    for job in jobs:
        status[(job.sub, job.ses)] = None
    for r in _run(jobs, ctx, opts, []):
        if r.tracer is None and r.error:
            status[(r.sub, r.ses)] = r.error
    return status
