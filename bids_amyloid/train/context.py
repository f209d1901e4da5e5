"""What the stages of one group run share: options, configuration, device, cohort, datasets."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from bids_amyloid.config import AppConfig
from bids_amyloid.derivatives import GroupRun
from bids_amyloid.errors import InputMissingError, UsageError
from bids_amyloid.io import write_tsv
from bids_amyloid.options import RunOptions
from bids_amyloid.train.batches import PhaseContext
from bids_amyloid.train.data import SliceCacheDataset, check_caches, make_loader
from bids_amyloid.train.dist import Dist

LOG = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass
class Run:
    """Everything the stages share; ``folder`` is where this run (or CV fold) writes."""

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
        LOG.warning("%d cohort rows lack slice caches, or their PET was registered through "
                    "another MRI session, and are left out (reasons in %s); run the participant "
                    "level for them", len(missing), GroupRun(folder).missing)
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


def phase_context(run: Run, batch_size: int) -> PhaseContext:
    """What a phase needs from the run: data, validation loader, contrasts, DDP wrapper."""
    return PhaseContext(cfg=run.cfg, device=run.device, train=run.data["train"],
                        val=run.data["val"], val_loader=make_loader(run.data["val"], batch_size),
                        teacher_contrasts=run.teacher_contrasts,
                        student_contrasts=run.student_contrasts, wrap=run.dist.wrap(run.device))
