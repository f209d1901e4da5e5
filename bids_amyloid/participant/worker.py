"""One job, run in a worker process: the MRI unit, then each PET unit.

Each unit is all-or-nothing: its files are written into a staging folder in
the work dir (:mod:`.staging`) and moved into OUT only when the whole unit
succeeded (:mod:`.commit`). A failing unit writes its reason and traceback to
``OUT/sub-XX/log/<unit>.log`` and becomes a failed :class:`UnitResult`.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import traceback
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from bids_amyloid import derivatives as drv
from bids_amyloid.errors import InputDataError
from bids_amyloid.io import atomic_path, write_text
from bids_amyloid.participant.commit import commit
from bids_amyloid.participant.outputs import (
    job_finished,
    mri_finished,
    mri_outputs,
    native_t1w_paths,
    pet_outputs,
)
from bids_amyloid.participant.plan import (
    PET_CONTRAST,
    PetJob,
    RunContext,
    SessionJob,
    Steps,
    UnitResult,
    unit_tag,
)
from bids_amyloid.participant.staging import stage_mri, stage_pet

LOG = logging.getLogger(__name__)


def load_steps() -> Steps:
    """Import the heavy image functions (ANTs, torch) only when a job runs."""
    from bids_amyloid.preproc.mri import preprocess_mri_session
    from bids_amyloid.preproc.pet import preprocess_pet
    from bids_amyloid.preproc.slices import extract_mri_slices, extract_pet_slices
    from bids_amyloid.preproc.template import load_template

    return Steps(preprocess_mri_session, preprocess_pet, extract_mri_slices,
                 extract_pet_slices, load_template)


def run_job(job: SessionJob, ctx: RunContext) -> list[UnitResult]:
    """Run one MRI session, then its PET scans; a bad session is a result, not an exception.

    PET files are checked first: a bad one fails at once. When the MRI and
    every remaining PET are finished, nothing else runs (a permanently bad PET
    does not make each re-run redo its MRI). When only PET is out of date (a
    PET-only parameter changed, a new PET scan), the PET is registered through
    the committed T1w (native brain, mask, transform) and the MRI is not redone.
    Otherwise the MRI and all remaining PET are redone together.
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
        if job.pets and mri_finished(ctx, job):
            LOG.info("sub-%s %s: MRI up to date; PET registered through its committed T1w",
                     job.sub, unit_tag(job.ses))
            mri_res = {PET_CONTRAST: committed_t1w(ctx.out, job)}
        else:
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
            log = write_failure_log(ctx.out, job.sub, unit_tag(pet.ses, pet.tracer), str(err))
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
    stage_mri(job, ctx, steps, results, stage)
    commit(stage, ctx.out, mri_outputs(stage, job, ctx.bids_dir))
    return results


def committed_t1w(out: Path, job: SessionJob) -> Any:
    """The session's T1w result rebuilt from OUT: what a PET unit needs of it."""
    from bids_amyloid.preproc.mri import MRIResult
    from bids_amyloid.preproc.register import read_itk_transform
    from bids_amyloid.preproc.template import load_nifti

    brain, mask = (load_nifti(p) for p in native_t1w_paths(out, job.sub, job.ses))
    xfm = drv.mri_xfm_path(out, job.sub, job.ses, PET_CONTRAST)
    return MRIResult(contrast=PET_CONTRAST,
                     mni_image=load_nifti(drv.mri_preproc_path(out, job.sub, job.ses, PET_CONTRAST)),
                     mni_mask=load_nifti(drv.brain_mask_path(out, job.sub, job.ses)),
                     native_image=brain, native_mask=mask, native_brain=brain,
                     transform_file=xfm, to_template=read_itk_transform(xfm))


def _pet_unit(job: SessionJob, pet: PetJob, mri_res: dict[str, Any], ctx: RunContext,
              steps: Steps, work: Path) -> None:
    pet_work = work / f"pet-{pet.ses}-{pet.tracer}"
    result = steps.preprocess_pet(pet.path, mri_res[PET_CONTRAST], ctx.cfg.preproc, pet_work,
                                  threads=ctx.threads)
    stage = work / f"stage-pet-{pet.ses}-{pet.tracer}"
    stage_pet(job, pet, ctx, steps, mri_res[PET_CONTRAST], result, stage)
    commit(stage, ctx.out, pet_outputs(stage, job, pet, ctx.bids_dir))


def write_failure_log(out: Path, sub: str, unit: str, text: str) -> Path:
    """Write ``text`` as the log of a unit that failed before it started."""
    path = drv.log_path(out, sub, unit)
    write_text(path, text + "\n")
    return path
