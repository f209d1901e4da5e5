"""Participant level: run the MRI and PET preprocessing of every selected session.

Entry points: :func:`run_participant` (``bids-amyloid BIDS OUT participant``)
and :func:`run_mri_sessions` (MRI only, used by predict). Pairs each PET with
an MRI session, plans one job per MRI session (:mod:`.plan`), skips finished
jobs (:mod:`.outputs`) and runs the rest one per process (``--nprocs``, spawn
context: ANTs and torch do not survive ``fork``) with ``--omp-nthreads``
threads each (:mod:`.worker`). Failing units do not stop the run: it ends with
a summary, the subjects' QC pages and exit code 1.

Example
-------
``bids-amyloid /data/bids /data/out participant --participant-label 01 --nprocs 2``
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

from bids_amyloid import derivatives as drv
from bids_amyloid.config import AppConfig
from bids_amyloid.errors import EXIT_OK, EXIT_SESSION_FAILED
from bids_amyloid.io import remove_stale_temporaries
from bids_amyloid.options import RunOptions
from bids_amyloid.participant.outputs import job_finished
from bids_amyloid.participant.plan import (
    OUT_OF_WINDOW,
    PetJob,
    RunContext,
    SessionJob,
    UnitResult,
    plan_jobs,
    unit_tag,
)
from bids_amyloid.participant.worker import run_job, write_failure_log

LOG = logging.getLogger(__name__)


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


def run_participant(opts: RunOptions, cfg: AppConfig) -> int:
    """Entry point of ``bids-amyloid BIDS OUT participant``; returns the exit code."""
    from bids_amyloid.bids import collect_inventory, pair_scans, pairing_contrasts

    out = opts.output_dir
    ctx = _context(out, opts, cfg)
    inv = collect_inventory(opts, cfg)
    _prepare(out, ctx, {s.sub for s in inv.mri} | {p.sub for p in inv.pet})
    pets: dict[tuple[str, str], list[PetJob]] = {}
    orphans: list[UnitResult] = []
    for scan, mri, reason in pair_scans(inv, cfg.cohort, opts.teacher_contrasts):
        if mri is None and reason.startswith(OUT_OF_WINDOW):
            # expected in longitudinal cohorts: the cohort stage excludes it with this reason
            LOG.warning("PET %s skipped, not an error: %s", scan.path, reason)
            continue
        if mri is None:
            error = f"PET {scan.path}: no usable MRI to register it to ({reason})"
            log = write_failure_log(out, scan.sub, unit_tag(scan.ses, scan.tracer), error)
            orphans.append(UnitResult(scan.sub, scan.ses, scan.tracer, error, 0.0, log))
            continue
        pets.setdefault((mri.sub, mri.ses), []).append(PetJob(scan.ses, scan.tracer, scan.path))
    jobs = plan_jobs(inv.mri, pairing_contrasts(cfg.cohort.contrasts, opts.teacher_contrasts), pets)
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
