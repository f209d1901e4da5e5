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
``checkpoints/<phase>/``             ``last.pt`` (resume), ``best_<key>.pt``, ``history.json``
==================================== ==========================================================

Under ``torchrun`` every rank trains on its share of each epoch's weighted
draw (DDP, gloo on CPU, NCCL on CUDA); only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from bids_amyloid.config import AppConfig, apply_overrides, dump_config
from bids_amyloid.derivatives import GroupRun, student_file  # noqa: F401  (tests import it here)
from bids_amyloid.device import resolve_device
from bids_amyloid.errors import InputMissingError, UsageError
from bids_amyloid.evaluation import best_threshold
from bids_amyloid.io import write_text, write_tsv
from bids_amyloid.options import RunOptions
from bids_amyloid.train import report
from bids_amyloid.train.data import (
    SliceCacheDataset,
    WeightedEpochSampler,
    check_caches,
    make_loader,
)
from bids_amyloid.train.loop import (
    LoopSettings,
    Trainer,
    TrainingLog,
    load_best,
    seed_all,
)
from bids_amyloid.train.phases import (
    ContrastivePhase,
    DistillPhase,
    PhaseContext,
    PretrainPhase,
    collect,
    subset,
)

LOG = logging.getLogger(__name__)
PHASES = ("pretrain", "contrastive", "distill")
SPLITS = ("train", "val", "test")
NO_TEACHER = "no-teacher"   # --ablate no-teacher: its phase, file tag and checkpoint folder


# -- distributed ------------------------------------------------------------------------------
@dataclass
class Dist:
    """Process-group facts; a single process is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, use_cuda: bool) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as tdist

        if not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return cls(rank=tdist.get_rank(), world=tdist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as tdist

            tdist.barrier()

    def wrap(self, device: torch.device) -> Any:
        if self.world <= 1:
            return lambda module: module

        def ddp(module: nn.Module) -> nn.Module:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

        return ddp

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()


@contextmanager
def deterministic(on: bool) -> Iterator[None]:
    """``--deterministic``: deterministic kernels only (restored afterwards)."""
    before = torch.are_deterministic_algorithms_enabled()
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


# -- plan ---------------------------------------------------------------------------------------
def plan_phases(stage: str, ablate: tuple[str, ...], external_teacher: bool) -> list[str]:
    """Phases to run for ``--stage``, ``--ablate`` and ``--teacher``."""
    if NO_TEACHER in ablate:                 # the student alone, phase 3 without a teacher
        if external_teacher or stage not in ("all", "distill"):
            raise UsageError(f"--ablate {NO_TEACHER} trains only the student, without a teacher: "
                             "use it with --stage all or distill and without --teacher")
        return ["distill"]
    wanted = list(PHASES) if stage == "all" else [stage]
    if external_teacher:
        if stage in ("pretrain", "contrastive"):
            raise UsageError(f"--teacher distils a given teacher: it cannot be used with "
                             f"--stage {stage}")
        wanted = ["distill"]
    skip = {"no-pretrain": "pretrain", "no-triplet": "contrastive"}
    phases = [p for p in wanted if p not in {skip[a] for a in ablate if a in skip}]
    if not phases:
        raise UsageError(f"--stage {stage} with --ablate {' '.join(ablate)} leaves nothing to run")
    return phases


def union(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c for g in groups for c in g))


@dataclass
class Run:
    """Everything the stages share."""

    opts: RunOptions
    cfg: AppConfig
    dist: Dist
    device: torch.device
    folder: Path
    teacher_contrasts: tuple[str, ...]
    student_contrasts: tuple[str, ...]
    data: dict[str, SliceCacheDataset]
    cohort: pd.DataFrame

    @property
    def writer(self) -> bool:
        return self.dist.rank == 0

    @property
    def files(self) -> GroupRun:
        return GroupRun(self.folder)

    def ckpt(self, phase: str) -> Path:
        return self.files.checkpoints(phase)


# -- cohort and data --------------------------------------------------------------------------
def prepare_cohort(opts: RunOptions, cfg: AppConfig, folder: Path, dist: Dist) -> pd.DataFrame:
    """Build ``cohort.tsv`` (rank 0) unless one exists and ``--overwrite`` was not given."""
    path = GroupRun(folder).cohort
    if dist.rank == 0 and (opts.overwrite or not path.is_file()):
        from bids_amyloid.cohort import run_cohort_stage

        code = run_cohort_stage(opts, cfg)
        if code != 0 or not path.is_file():
            raise InputMissingError(f"building the cohort failed (exit code {code}); see above")
    elif dist.rank == 0:
        LOG.info("using the existing %s (--overwrite rebuilds it)", path)
        sidecar = GroupRun(folder).cohort_json
        built_for = json.loads(sidecar.read_text()).get("Contrasts") if sidecar.is_file() else None
        lacking = [c for c in cfg.cohort.contrasts if built_for is not None and c not in built_for]
        if built_for is not None and lacking:
            raise UsageError(f"{path} was built for contrasts {', '.join(built_for)}, not "
                             f"{', '.join(lacking)}: add --overwrite to rebuild the cohort")
    dist.barrier()
    from bids_amyloid.cohort import load_cohort

    return load_cohort(path)


def make_datasets(cohort: pd.DataFrame, out: Path, contrasts: tuple[str, ...], cfg: AppConfig,
                  folder: Path, writer: bool) -> tuple[dict[str, SliceCacheDataset], pd.DataFrame]:
    """Datasets per split over rows whose slice caches exist; the others are reported."""
    usable, missing = check_caches(cohort, out, contrasts, with_pet=True)
    if len(missing):
        LOG.warning("%d cohort rows lack slice caches and are left out (listed in %s); "
                    "run the participant level for them", len(missing), GroupRun(folder).missing)
        if writer:
            write_tsv(GroupRun(folder).missing, missing)
    data = {}
    for split in SPLITS:
        rows = usable[usable["split"] == split]
        if split != "test" and rows.empty:
            raise InputMissingError(
                f"no {split} rows with slice caches in {GroupRun(folder).cohort}: run the "
                f"participant level first (contrasts {', '.join(contrasts)} and PET)")
        data[split] = SliceCacheDataset(rows, out, contrasts, cfg.train.n_train_slices,
                                        with_pet=True, pet_scale=cfg.train.pet_scale)
    if len(set(data["train"].labels)) < 2:
        raise InputMissingError("the training split holds a single class: cannot train")
    return data, usable


def _context(run: Run, batch_size: int) -> PhaseContext:
    return PhaseContext(cfg=run.cfg, device=run.device, train=run.data["train"],
                        val=run.data["val"], val_loader=make_loader(run.data["val"], batch_size),
                        teacher_contrasts=run.teacher_contrasts,
                        student_contrasts=run.student_contrasts, wrap=run.dist.wrap(run.device))


def _earlier_rows(run: Run, phase: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in PHASES[: PHASES.index(phase) if phase in PHASES else len(PHASES)]:
        path = run.ckpt(name) / "history.json"
        if path.is_file():
            rows.extend(json.loads(path.read_text()))
    return rows


# -- phases -----------------------------------------------------------------------------------
def train_phase(run: Run, task: Any, batch_size: int) -> int:
    """Run (or resume, or skip when finished) one phase; load its best weights; return best epoch."""
    ckpt = run.ckpt(task.name)
    done = (ckpt / "done.json").is_file()
    if not (run.opts.resume and done):
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
        log = TrainingLog(run.files.training, _earlier_rows(run, task.name))
        trainer = Trainer(task, loader, settings, ckpt, log)
        if run.opts.resume:
            trainer.resume()
        trainer.fit()
    else:
        LOG.info("%s: already finished (%s); skipping", task.name, ckpt / "done.json")
    run.dist.barrier()
    return load_best(task.model, ckpt, task.selections[0])


def _build(kind: str, run: Run, contrasts: tuple[str, ...]) -> Any:
    from bids_amyloid import models

    seed_all(run.cfg.train.seed + (0 if kind == "teacher" else 1))
    build = models.build_teacher if kind == "teacher" else models.build_student
    return build(run.cfg, contrasts).to(run.device)


def _load(path: Path, run: Run) -> tuple[Any, dict[str, Any]]:
    from bids_amyloid.models import load_model

    model, _, meta = load_model(path, device=str(run.device),
                                backbone_weights=run.cfg.model.backbone_weights)
    return model.to(run.device), meta


def _save(run: Run, path: Path, model: Any, meta: dict[str, Any]) -> None:
    if run.writer:
        from bids_amyloid.models import save_model

        save_model(path, model, run.cfg, meta)
        LOG.info("wrote %s", path)
    run.dist.barrier()


def _meta(run: Run, role: str, contrasts: tuple[str, ...], tau: float, **extra: Any
          ) -> dict[str, Any]:
    return {"role": role, "contrasts": list(contrasts),
            "thresholds": {"0.5": 0.5, "tau": float(tau)},
            "training_participants": sorted(set(run.data["train"].subjects)),
            "validation_participants": sorted(set(run.data["val"].subjects)),
            "test_participants": sorted(set(run.data["test"].subjects)),
            "run_name": run.opts.run_name, **extra}


def predict(run: Run, model: nn.Module, role: str, contrasts: tuple[str, ...], split: str,
            batch_size: int = 16) -> dict[str, np.ndarray]:
    """Logits of ``model`` on one split (teacher: MRI + PET; student: MRI only)."""
    ctx = _context(run, batch_size)
    model.eval()

    def forward(b: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if role == "teacher":
            out = model(*subset(b, contrasts), b["pet"], b["pet_mask"])
        else:
            out = model(*subset(b, contrasts))
        return out.logit, out.embedding

    return collect(ctx, forward, make_loader(run.data[split], batch_size))


def val_tau(run: Run, model: nn.Module, role: str, contrasts: tuple[str, ...]) -> float:
    out = predict(run, model, role, contrasts, "val")
    probs = 1.0 / (1.0 + np.exp(-out["logit"]))
    return best_threshold(out["label"], probs, run.cfg.train.threshold_grid)


def teacher_phases(run: Run, phases: list[str]) -> None:
    """Phases 1 and/or 2; writes ``teacher.pt``."""
    cfg, path = run.cfg, run.files.teacher
    teacher: Any = None
    best: dict[str, int] = {}
    if "pretrain" in phases:
        teacher = _build("teacher", run, run.teacher_contrasts)
        best["pretrain"] = train_phase(run, PretrainPhase(_context(run, cfg.pretrain.batch_size),
                                                          teacher), cfg.pretrain.batch_size)
    if "contrastive" in phases:
        if teacher is None and "no-pretrain" in cfg.train.ablate:
            teacher = _build("teacher", run, run.teacher_contrasts)
        elif teacher is None:
            if not path.is_file():
                raise InputMissingError(f"{path} does not exist: run --stage pretrain first")
            teacher, _ = _load(path, run)
        best["contrastive"] = train_phase(
            run, ContrastivePhase(_context(run, cfg.contrastive.batch_size), teacher),
            cfg.contrastive.batch_size)
    if teacher is None:
        raise UsageError("no teacher phase to run")
    last = "contrastive" if "contrastive" in best else "pretrain"
    tau = val_tau(run, teacher, "teacher", run.teacher_contrasts)
    _save(run, path, teacher, _meta(run, "teacher", run.teacher_contrasts, tau, phase=last,
                                    best_epoch=best[last]))


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
    teacher, _ = _load(source, run)
    student = _build("student", run, run.student_contrasts)
    student.init_from_teacher(teacher)
    task = DistillPhase(_context(run, cfg.distill.batch_size), student, teacher)
    train_phase(run, task, cfg.distill.batch_size)
    ckpt = run.ckpt("distill")
    for key, selection in (("f1@tau", ""), ("cosine", "best-cosine")):
        epoch = load_best(student, ckpt, key)
        tau = val_tau(run, student, "student", run.student_contrasts)
        meta = _meta(run, "student", run.student_contrasts, tau, selection=f"best val {key}",
                     best_epoch=epoch, teacher=str(source), teacher_contrasts=list(
                         run.teacher_contrasts))
        _save(run, run.files.student(run.student_contrasts, selection), student, meta)


def no_teacher_phase(run: Run) -> None:
    """``--ablate no-teacher``: the baseline the distilled student must beat.

    The MRI-only student trained with its classification loss alone (``a``·MarginFocal: no
    teacher, no KD terms), on the same data with the same schedule, seeds and selection (best
    validation F1@τ) as phase 3; its classifier's last layer is initialised as after
    ``init_from_teacher``. Writes ``student_<C>_no-teacher.pt``; its epochs are logged as
    phase ``no-teacher`` (checkpoints in ``checkpoints/no-teacher/``).
    """
    cfg = run.cfg
    student = _build("student", run, run.student_contrasts)
    student.classifier.reset_last_layer(cfg.distill.reinit_gain)
    task = DistillPhase(_context(run, cfg.distill.batch_size), student, None)
    epoch = train_phase(run, task, cfg.distill.batch_size)
    tau = val_tau(run, student, "student", run.student_contrasts)
    meta = _meta(run, "student", run.student_contrasts, tau, selection="best val f1@tau",
                 best_epoch=epoch, teacher=None, ablation=NO_TEACHER)
    _save(run, run.files.student(run.student_contrasts, NO_TEACHER), student, meta)


# -- evaluation ----------------------------------------------------------------------------------
def evaluate(run: Run) -> None:
    """Predictions and metrics of every model file of the run (rank 0)."""
    files: list[tuple[str, Path, str, tuple[str, ...]]] = []
    teacher = run.opts.teacher or run.files.teacher
    if teacher.is_file():
        files.append(("teacher", teacher, "teacher", run.teacher_contrasts))
    for selection in ("", "best-cosine", NO_TEACHER):
        path = run.files.student(run.student_contrasts, selection)
        if path.is_file():
            name = path.stem
            files.append((name, path, "student", run.student_contrasts))
    frames, taus = [], {}
    for name, path, role, contrasts in files:
        model, meta = _load(path, run)
        taus[name] = float(meta.get("thresholds", {}).get("tau", 0.5))
        for split in SPLITS[1:]:
            if len(run.data[split]) == 0:
                continue
            out = predict(run, model, role, contrasts, split)
            frames.append(report.prediction_frame(run.data[split], out, name, split, taus[name]))
    predictions = pd.concat(frames, ignore_index=True)
    report.write_outputs(run.files, run.cfg, run.cohort, predictions, taus,
                         {p: run.ckpt(p) / "history.json" for p in (*PHASES, NO_TEACHER)},
                         notes=_notes(run))


def _notes(run: Run) -> list[str]:
    cfg = run.cfg
    notes = [f"backbone: {cfg.model.backbone}" + (
        " (randomly initialised, test/demo only)" if cfg.model.backbone != "biomedclip" else ""),
        f"teacher contrasts: {'+'.join(run.teacher_contrasts)}; student contrasts: "
        f"{'+'.join(run.student_contrasts)}",
        f"Centiloid gap for negatives: {cfg.contrastive.cl_gap}"]
    if cfg.train.ablate:
        notes.append("ablations: " + ", ".join(cfg.train.ablate))
    if run.opts.teacher:
        notes.append(f"cross-dataset distillation from {run.opts.teacher} (phases 1–2 skipped)")
    notes.append("validation chose the epochs, the checkpoints and τ; test is reported for both "
                 "student selections, labelled")
    return notes


# -- entry point ------------------------------------------------------------------------------
def _check_teacher_config(source: Path, saved: dict[str, Any], cfg: AppConfig) -> None:
    """The student and its data must match the teacher: backbone, image size, PET scaling."""
    pairs = {("model", "backbone"): cfg.model.backbone, ("model", "image_size"): cfg.model.image_size,
             ("train", "pet_scale"): cfg.train.pet_scale}
    wrong = [f"{sec}.{key} = {saved.get(sec, {}).get(key)!r} there, {ours!r} here"
             for (sec, key), ours in pairs.items()
             if sec in saved and key in saved[sec] and saved[sec][key] != ours]
    if wrong:
        raise UsageError(f"the teacher {source} was trained with other settings ({'; '.join(wrong)}"
                         "): use the same values (--backbone, or --config)")


def _teacher_contrasts(opts: RunOptions, cfg: AppConfig, phases: list[str], folder: Path
                       ) -> tuple[str, ...]:
    """The teacher's contrasts: those of the teacher file a stage starts from, else
    ``--teacher-contrasts``, else the student's."""
    source = opts.teacher
    if (source is None and "pretrain" not in phases and "no-pretrain" not in cfg.train.ablate
            and NO_TEACHER not in cfg.train.ablate):
        source = GroupRun(folder).teacher       # --stage contrastive / distill continue a run
    if source is not None and source.is_file():
        from bids_amyloid.models import read_model_file

        payload = read_model_file(source)
        if payload["role"] != "teacher":
            raise UsageError(f"{source} holds a {payload['role']}, not a teacher")
        found = tuple(payload["contrasts"])
        _check_teacher_config(source, payload.get("config", {}), cfg)
        if opts.teacher_contrasts and tuple(opts.teacher_contrasts) != found:
            raise UsageError(f"--teacher-contrasts {' '.join(opts.teacher_contrasts)} differ from "
                             f"the contrasts {' '.join(found)} of {source}")
        return found
    return tuple(opts.teacher_contrasts) or tuple(cfg.cohort.contrasts)


@contextmanager
def _distributed(use_cuda: bool) -> Iterator[Dist]:
    dist = Dist.from_env(use_cuda)
    try:
        yield dist
    finally:
        dist.close()


def run_group(opts: RunOptions, cfg: AppConfig) -> int:
    """Group level: train the stages ``opts.stage`` asks for, then evaluate and report."""
    phases = plan_phases(opts.stage, cfg.train.ablate, opts.teacher is not None)
    want_cuda = cfg.train.device.startswith("cuda") or (
        cfg.train.device == "auto" and torch.cuda.is_available())
    with deterministic(cfg.train.deterministic), _distributed(want_cuda) as dist:
        device = resolve_device(cfg.train.device, dist.local_rank)
        if device.type == "cuda" and not cfg.train.deterministic:
            torch.set_float32_matmul_precision("high")      # TF32 outside autocast
        folder = GroupRun.of(opts.output_dir, opts.run_name).folder
        folder.mkdir(parents=True, exist_ok=True)
        student_c = tuple(cfg.cohort.contrasts)
        teacher_c = _teacher_contrasts(opts, cfg, phases, folder)
        all_c = union(teacher_c, student_c)
        cfg_cohort = apply_overrides(cfg, {"cohort": {"contrasts": all_c}})
        if dist.rank == 0:
            from bids_amyloid.derivatives import init_output

            init_output(opts.output_dir, opts.bids_dir)
            header = (f"# bids-amyloid group run {opts.run_name}: student contrasts "
                      f"{'+'.join(student_c)}, teacher contrasts {'+'.join(teacher_c)}; the "
                      f"cohort uses their union\n")
            write_text(GroupRun(folder).config, header + dump_config(cfg))
        cohort = prepare_cohort(opts, cfg_cohort, folder, dist)
        data, usable = make_datasets(cohort, opts.output_dir, all_c, cfg, folder, dist.rank == 0)
        run = Run(opts=opts, cfg=cfg, dist=dist, device=device, folder=folder,
                  teacher_contrasts=teacher_c, student_contrasts=student_c, data=data,
                  cohort=usable)
        LOG.info("group run %s on %s (world %d): phases %s; %s", folder, device, dist.world,
                 ", ".join(phases), ", ".join(f"{k} {len(v)}" for k, v in data.items()))
        if device.type == "cuda" and cfg.train.num_workers == 0:
            LOG.info("slices are read in the main process; on a GPU, [train] num_workers = 4–8 "
                     "keeps it fed")
        teacher_only = [p for p in phases if p != "distill"]
        if teacher_only:
            teacher_phases(run, teacher_only)
        if "distill" in phases:
            distill_phase(run)
        if run.writer:
            evaluate(run)
        dist.barrier()
    return 0


