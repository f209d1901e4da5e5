"""The training stages of one group run: teacher (phases 1–2), student (phase 3), baseline.

Each stage trains through :class:`bids_amyloid.train.loop.Trainer` (resumed, or
skipped when its ``done.json`` exists under ``--resume``), picks τ on validation
and writes its model file with the run's cohort split in its ``meta``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bids_amyloid.derivatives import CheckpointFolder
from bids_amyloid.errors import InputMissingError, UsageError
from bids_amyloid.evaluation import best_threshold, validation_entries
from bids_amyloid.train.batches import collect, subset
from bids_amyloid.train.checkpoints import load_best
from bids_amyloid.train.context import Run, phase_context
from bids_amyloid.train.data import WeightedEpochSampler, make_loader
from bids_amyloid.train.loop import LoopSettings, Trainer, TrainingLog, seed_all
from bids_amyloid.train.phases import ContrastivePhase, DistillPhase, PretrainPhase
from bids_amyloid.train.plan import NO_TEACHER, PHASES

LOG = logging.getLogger(__name__)


def earlier_rows(run: Run, phase: str) -> list[dict[str, Any]]:
    """``training.tsv`` rows of the phases before ``phase`` (from their ``history.json``)."""
    import json

    rows: list[dict[str, Any]] = []
    for name in PHASES[: PHASES.index(phase) if phase in PHASES else len(PHASES)]:
        path = CheckpointFolder(run.ckpt(name)).history
        if path.is_file():
            rows.extend(json.loads(path.read_text()))
    return rows


def train_phase(run: Run, task: Any, batch_size: int) -> int:
    """Run (or resume, or skip when finished) one phase; load its best weights; return best epoch."""
    ckpt = run.ckpt(task.name)
    done = CheckpointFolder(ckpt).done
    if not (run.opts.resume and done.is_file()):
        if not run.opts.resume and run.writer and ckpt.exists():
            shutil.rmtree(ckpt)
        run.dist.barrier()
        ckpt.mkdir(parents=True, exist_ok=True)
        sampler = WeightedEpochSampler(run.data["train"].labels, run.cfg.train.seed,
                                       run.dist.rank, run.dist.world)
        loader = make_loader(run.data["train"], batch_size, sampler,
                             num_workers=run.cfg.train.num_workers,
                             pin_memory=run.device.type == "cuda")
        settings = LoopSettings(device=run.device, seed=run.cfg.train.seed, amp=run.cfg.train.amp,
                                rank=run.dist.rank, world=run.dist.world,
                                progress=run.opts.progress)
        log = TrainingLog(run.files.training, earlier_rows(run, task.name))
        trainer = Trainer(task, loader, settings, ckpt, log)
        if run.opts.resume:
            trainer.resume()
        trainer.fit()
    else:
        LOG.info("%s: already finished (%s); skipping", task.name, done)
    run.dist.barrier()
    return load_best(task.model, ckpt, task.selections[0])


def build_network(kind: str, run: Run, contrasts: tuple[str, ...]) -> Any:
    """A freshly initialised teacher or student (seeded from the run's seed)."""
    from bids_amyloid import models

    seed_all(run.cfg.train.seed + (0 if kind == "teacher" else 1))
    build = models.build_teacher if kind == "teacher" else models.build_student
    return build(run.cfg, contrasts).to(run.device)


def load_network(path: Path, run: Run) -> tuple[Any, dict[str, Any]]:
    """A model file's network on the run's device, and its ``meta``."""
    from bids_amyloid.models import load_model

    model, _, meta = load_model(path, device=str(run.device),
                                backbone_weights=run.cfg.model.backbone_weights)
    return model.to(run.device), meta


def save_network(run: Run, path: Path, model: Any, meta: dict[str, Any]) -> None:
    """Write a model file (rank 0)."""
    if run.writer:
        from bids_amyloid.models import save_model

        save_model(path, model, run.cfg, meta)
        LOG.info("wrote %s", path)
    run.dist.barrier()


def model_meta(run: Run, role: str, contrasts: tuple[str, ...], tau: float, **extra: Any
               ) -> dict[str, Any]:
    """A model file's ``meta``: thresholds and the subjects of each split."""
    return {"role": role, "contrasts": list(contrasts),
            "thresholds": {"0.5": 0.5, "tau": float(tau)},
            "training_participants": sorted(set(run.data["train"].subjects)),
            "validation_participants": sorted(set(run.data["val"].subjects)),
            "test_participants": sorted(set(run.data["test"].subjects)),
            "run_name": run.opts.run_name, **extra}


def predict_split(run: Run, model: nn.Module, role: str, contrasts: tuple[str, ...], split: str,
                  batch_size: int = 16) -> dict[str, np.ndarray]:
    """Logits of ``model`` on one split (teacher: MRI + PET; student: MRI only)."""
    ctx = phase_context(run, batch_size)
    model.eval()

    def forward(b: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if role == "teacher":
            out = model(*subset(b, contrasts), b["pet"], b["pet_mask"])
        else:
            out = model(*subset(b, contrasts))
        return out.logit, out.embedding

    return collect(ctx, forward, make_loader(run.data[split], batch_size))


def val_tau(run: Run, model: nn.Module, role: str, contrasts: tuple[str, ...]) -> float:
    """τ: the F1-maximising threshold on the validation split."""
    out = predict_split(run, model, role, contrasts, "val")
    probs = 1.0 / (1.0 + np.exp(-out["logit"]))
    return best_threshold(out["label"], probs, run.cfg.train.threshold_grid)


def student_entries(run: Run, student: nn.Module, tau: float) -> dict[str, Any]:
    """What a student's model file records for predict: calibration and operating points
    (validation; :func:`bids_amyloid.evaluation.validation_entries`) and the training cohort's
    embedding and QC reference (:func:`bids_amyloid.reliability.reference_meta`)."""
    from bids_amyloid.reliability import cohort_qc_records, reference_meta

    contrasts, t = run.student_contrasts, run.cfg.train
    val = predict_split(run, student, "student", contrasts, "val")
    train = predict_split(run, student, "student", contrasts, "train")
    entries = validation_entries(val["label"], val["logit"], tau, t.rule_out_sensitivity,
                                 t.rule_in_specificity)
    qc = cohort_qc_records(run.opts.output_dir, run.data["train"].rows)
    entries["reliability"] = reference_meta(train["embedding"], val["embedding"], qc, contrasts)
    return entries


def teacher_phases(run: Run, phases: list[str]) -> None:
    """Phases 1 and/or 2; writes ``teacher.pt``."""
    cfg, path = run.cfg, run.files.teacher
    teacher: Any = None
    best: dict[str, int] = {}
    if "pretrain" in phases:
        teacher = build_network("teacher", run, run.teacher_contrasts)
        best["pretrain"] = train_phase(
            run, PretrainPhase(phase_context(run, cfg.pretrain.batch_size), teacher),
            cfg.pretrain.batch_size)
    if "contrastive" in phases:
        if teacher is None and "no-pretrain" in cfg.train.ablate:
            teacher = build_network("teacher", run, run.teacher_contrasts)
        elif teacher is None:
            if not path.is_file():
                raise InputMissingError(f"{path} does not exist: run --stage pretrain first")
            teacher, _ = load_network(path, run)
        best["contrastive"] = train_phase(
            run, ContrastivePhase(phase_context(run, cfg.contrastive.batch_size), teacher),
            cfg.contrastive.batch_size)
    if teacher is None:
        raise UsageError("no teacher phase to run")
    last = "contrastive" if "contrastive" in best else "pretrain"
    tau = val_tau(run, teacher, "teacher", run.teacher_contrasts)
    save_network(run, path, teacher, model_meta(run, "teacher", run.teacher_contrasts, tau,
                                                phase=last, best_epoch=best[last]))


def distill_phase(run: Run) -> None:
    """Phase 3 from ``--teacher`` or the run's ``teacher.pt``; writes both students."""
    if NO_TEACHER in run.cfg.train.ablate:
        no_teacher_phase(run)
        return
    cfg = run.cfg
    source = run.opts.teacher or run.files.teacher
    if not source.is_file():
        raise InputMissingError(f"{source} does not exist: run the teacher stages first "
                                "or give --teacher PATH")
    teacher, _ = load_network(source, run)
    student = build_network("student", run, run.student_contrasts)
    student.init_from_teacher(teacher)
    task = DistillPhase(phase_context(run, cfg.distill.batch_size), student, teacher)
    train_phase(run, task, cfg.distill.batch_size)
    ckpt = run.ckpt("distill")
    for key, selection in (("f1@tau", ""), ("cosine", "best-cosine")):
        epoch = load_best(student, ckpt, key)
        tau = val_tau(run, student, "student", run.student_contrasts)
        meta = model_meta(run, "student", run.student_contrasts, tau, selection=f"best val {key}",
                          best_epoch=epoch, teacher=str(source),
                          teacher_contrasts=list(run.teacher_contrasts),
                          **student_entries(run, student, tau))
        save_network(run, run.files.student(run.student_contrasts, selection), student, meta)


def no_teacher_phase(run: Run) -> None:
    """``--ablate no-teacher``: the baseline the distilled student must beat.

    The MRI-only student trained with its classification loss alone (``a``·MarginFocal: no
    teacher, no KD terms), on the same data with the same schedule, seeds and selection (best
    validation F1@τ) as phase 3; its classifier's re-initialised layers are drawn as by
    ``init_from_teacher``. Writes ``student_<C>_no-teacher.pt``; its epochs are logged as
    phase ``no-teacher`` (checkpoints in ``checkpoints/no-teacher/``).
    """
    cfg = run.cfg
    student = build_network("student", run, run.student_contrasts)
    student.classifier.reset_for_student(cfg.distill.reinit_gain, cfg.distill.reinit_layers)
    task = DistillPhase(phase_context(run, cfg.distill.batch_size), student, None)
    epoch = train_phase(run, task, cfg.distill.batch_size)
    tau = val_tau(run, student, "student", run.student_contrasts)
    meta = model_meta(run, "student", run.student_contrasts, tau, selection="best val f1@tau",
                      best_epoch=epoch, teacher=None, ablation=NO_TEACHER,
                      **student_entries(run, student, tau))
    save_network(run, run.files.student(run.student_contrasts, NO_TEACHER), student, meta)


def train_stages(run: Run, phases: list[str]) -> None:
    """Every planned phase of the run, in order."""
    teacher_only = [p for p in phases if p != "distill"]
    if teacher_only:
        teacher_phases(run, teacher_only)
    if "distill" in phases:
        distill_phase(run)
