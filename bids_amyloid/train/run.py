"""Group level: cohort → teacher (phases 1–2) → student (phase 3) → evaluation and report.

``bids-amyloid BIDS OUT group --stage pretrain|contrastive|distill|all`` writes to
``OUT/group/<run-name>/``:

==================================== ==========================================================
``cohort.tsv`` / ``excluded.tsv``    MRI–PET pairs with labels and split (reused if present,
                                     ``--overwrite`` rebuilds; built on the union of teacher
                                     and student contrasts)
``config.toml``                      the fully resolved configuration
``teacher.pt``                       best teacher (phase 2, or phase 1 when phase 2 is skipped)
``student_<C>.pt``                   student with the best validation F1@τ (``<C>``: the
                                     student's contrasts joined by ``+``, e.g. ``T1w``)
``student_<C>_best-cosine.pt``       student with the best validation teacher–student cosine
``student_<C>_no-teacher.pt``        ``--ablate no-teacher`` only (instead of the above): the
                                     student trained without a teacher, the baseline
``training.tsv``                     every loss, learning rate, schedule value and validation
                                     metric, per epoch of every phase
``metrics.tsv`` / ``predictions.tsv`` each model on validation and test; per-sample predictions
``roc_epochs.png`` ``roc_test.png``  ROC curves (validation, first vs last epoch; test, final)
``training_curves.png``              losses and validation metrics per epoch
``report.html``                      self-contained summary for a lab meeting
``checkpoints/<phase>/``             ``last.pt`` (resume), ``best_<key>.pt``, ``history.json``,
                                     ``done.json`` (names: ``derivatives.CheckpointFolder``)
==================================== ==========================================================

With ``--cv K`` (:mod:`.cv`) the run folder holds ``cohort.tsv`` and
``config.toml``, one run as above per outer fold in ``fold-<k>/``, and
``oof_predictions.tsv``, ``cv_metrics.tsv`` and ``student_<C>_ensemble.pt``.

The pieces: :mod:`.plan` (phases, teacher contrasts), :mod:`.context` (the
run's cohort and datasets), :mod:`.stages` (training and model files),
:mod:`.outputs` (evaluation and report), :mod:`.cv` (cross-validation),
:mod:`.dist` (DDP). Under
``torchrun`` every rank trains on its share of each epoch's weighted draw
(DDP, gloo on CPU, NCCL on CUDA); only rank 0 writes.
"""

from __future__ import annotations

import logging

import torch

from bids_amyloid.config import AppConfig, apply_overrides, dump_config
from bids_amyloid.derivatives import GroupRun
from bids_amyloid.device import resolve_device
from bids_amyloid.errors import UsageError
from bids_amyloid.io import write_text
from bids_amyloid.options import RunOptions
from bids_amyloid.train.context import Run, make_datasets, prepare_cohort
from bids_amyloid.train.data import cache_config
from bids_amyloid.train.dist import deterministic, distributed
from bids_amyloid.train.outputs import evaluate
from bids_amyloid.train.plan import check_teacher_preproc, plan_phases, teacher_contrasts, union
from bids_amyloid.train.stages import train_stages

LOG = logging.getLogger(__name__)


def run_group(opts: RunOptions, cfg: AppConfig) -> int:
    """Group level: train the stages ``opts.stage`` asks for, then evaluate and report."""
    phases = plan_phases(opts.stage, cfg.train.ablate, opts.teacher is not None)
    if cfg.train.cv_folds and opts.stage != "all":
        raise UsageError(f"--cv trains every stage in each fold: use it with --stage all, not "
                         f"--stage {opts.stage}")
    want_cuda = cfg.train.device.startswith("cuda") or (
        cfg.train.device == "auto" and torch.cuda.is_available())
    with deterministic(cfg.train.deterministic), distributed(want_cuda) as dist:
        device = resolve_device(cfg.train.device, dist.local_rank)
        if device.type == "cuda" and not cfg.train.deterministic:
            torch.set_float32_matmul_precision("high")      # TF32 outside autocast
        folder = GroupRun.of(opts.output_dir, opts.run_name).folder
        folder.mkdir(parents=True, exist_ok=True)
        student_c = tuple(cfg.cohort.contrasts)
        teacher_c, teacher_saved = teacher_contrasts(opts, cfg, phases, folder)
        all_c = union(teacher_c, student_c)
        cfg_cohort = apply_overrides(cfg, {"cohort": {"contrasts": all_c}})
        if dist.rank == 0:
            from bids_amyloid.derivatives import init_output

            init_output(opts.output_dir, opts.bids_dir)
        cohort = prepare_cohort(opts, cfg_cohort, folder, dist)
        cfg = cache_config(cohort, opts.output_dir, all_c, cfg)  # [preproc]: the caches'
        if opts.teacher is not None:
            check_teacher_preproc(opts.teacher, teacher_saved, cfg)
        if dist.rank == 0:
            header = (f"# bids-amyloid group run {opts.run_name}: student contrasts "
                      f"{'+'.join(student_c)}, teacher contrasts {'+'.join(teacher_c)}; the "
                      f"cohort uses their union; [preproc] is what the slice caches were made "
                      f"with (recorded in the model files)\n")
            write_text(GroupRun(folder).config, header + dump_config(cfg))
        if cfg.train.cv_folds:
            from bids_amyloid.train.cv import run_cv

            base = Run(opts=opts, cfg=cfg, dist=dist, device=device, folder=folder,
                       teacher_contrasts=teacher_c, student_contrasts=student_c, data={},
                       cohort=cohort)
            run_cv(base, cohort, phases, all_c)
            dist.barrier()
            return 0
        data, usable = make_datasets(cohort, opts.output_dir, all_c, cfg, folder, dist.rank == 0)
        run = Run(opts=opts, cfg=cfg, dist=dist, device=device, folder=folder,
                  teacher_contrasts=teacher_c, student_contrasts=student_c, data=data,
                  cohort=usable)
        LOG.info("group run %s on %s (world %d): phases %s; %s", folder, device, dist.world,
                 ", ".join(phases), ", ".join(f"{k} {len(v)}" for k, v in data.items()))
        if device.type == "cuda" and cfg.train.num_workers == 0:
            LOG.info("slices are read in the main process; on a GPU, [train] num_workers = 4–8 "
                     "keeps it fed")
        train_stages(run, phases)
        if run.writer:
            evaluate(run)
        dist.barrier()
    return 0
