"""The one training loop every phase runs through.

A phase (see :mod:`bids_amyloid.train.phases`) supplies its network, losses,
optimiser, scheduler, clipping and validation; this loop does the rest once:
per-epoch seeding, AMP for training only (bf16, or fp16 with a gradient scaler, on
CUDA; evaluation runs in fp32 under :func:`full_precision`),
gradient accumulation, clipping, the LR scheduler, validation, checkpoint
selection, early stopping, per-epoch checkpoints (model, optimiser,
scheduler, scaler, RNG state, history; files in :mod:`.checkpoints`) so
``--resume`` continues exactly, the
``training.tsv`` log and DDP (only rank 0 writes).

Every epoch starts by reseeding all random generators from ``(seed, phase,
epoch, rank)``: an epoch's batches, augmentations, negatives and dropout
masks depend on nothing else, which is what makes a resumed run end with the
same metrics as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from bids_amyloid.derivatives import CheckpointFolder
from bids_amyloid.io import write_json, write_text, write_tsv
from bids_amyloid.train.checkpoints import (
    load_checkpoint,
    load_trainable_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    trainable_state,
)

LOG = logging.getLogger(__name__)
# "no-teacher" (phase 3 without a teacher) draws the same batches and augmentations as "distill"
PHASE_IDS = {"pretrain": 1, "contrastive": 2, "distill": 3, "no-teacher": 3}


class Task(Protocol):
    """What a phase gives the loop."""

    name: str
    model: nn.Module            # the trained network (checkpointed)
    net: nn.Module              # forward(batch) -> dict of scalar losses incl. "loss" (and
                                # "_"-prefixed per-sample outputs); DDP-wrapped under torchrun
    max_epochs: int
    patience: int
    accumulation: int
    selections: tuple[str, ...]  # validation keys to maximise; the first drives early stopping
    tie_breaks: dict[str, str]   # selection key → validation key that breaks its ties
    scheduler_mode: str          # "step" (after each optimiser step, given the fractional
                                 # epoch reached, so periods count epochs), "epoch", "plateau"
                                 # or "none"

    def make_optimizer(self) -> torch.optim.Optimizer: ...
    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> Any: ...
    def clip(self, epoch: int) -> float: ...
    def schedule_values(self, epoch: int) -> dict[str, float]: ...
    def train_mode(self) -> None: ...
    def prepare(self, batch: dict[str, Any], epoch: int, rngs: EpochRNG) -> dict[str, Any]: ...
    def validate(self, epoch: int) -> dict[str, Any]: ...


@dataclass
class EpochRNG:
    """Generators of one epoch: augmentation (torch, on the device) and mining (numpy)."""

    augment: torch.Generator
    mining: np.random.Generator


@dataclass
class LoopSettings:
    device: torch.device
    seed: int = 42
    amp: bool = True
    rank: int = 0
    world: int = 1
    progress: bool = False
    max_steps_per_epoch: int | None = None   # benchmarks only


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: dict[str, float] = field(default_factory=dict)
    best_tie: dict[str, float] = field(default_factory=dict)
    best_epoch: dict[str, int] = field(default_factory=dict)
    stopped_early: bool = False


def epoch_seed(seed: int, phase: str, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch of one phase on one rank."""
    return (seed * 1_000_003 + PHASE_IDS.get(phase, 0) * 10_007 + epoch * 101 + rank) % 2**63


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; None (full precision) on CPU or without AMP."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Evaluation numerics: no autocast and no TF32 matmuls, as predict computes.

    Validation and test logits are plain fp32 (bf16 would tie probabilities and
    move AUC and τ); the matmul precision set for training is restored after.
    """
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(before)


class TrainingLog:
    """``training.tsv``: one row per epoch of every phase; list-valued fields stay out."""

    def __init__(self, path: Path | None, earlier: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.earlier = list(earlier or [])

    def write(self, rows: list[dict[str, Any]]) -> None:
        if self.path is None:
            return
        flat = [{k: v for k, v in r.items() if not k.startswith("_")} for r in self.earlier + rows]
        columns = ["phase", "epoch"]
        for r in flat:
            columns.extend(k for k in r if k not in columns)
        write_tsv(self.path, pd.DataFrame(flat, columns=columns))


def _groups(n_batches: int, accumulation: int) -> list[int]:
    """Micro-batches in the optimiser step each batch belongs to."""
    return [min(accumulation, n_batches - (i // accumulation) * accumulation)
            for i in range(n_batches)]


def _progress(iterable: DataLoader, enabled: bool, desc: str) -> Iterator[Any] | DataLoader:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


def _lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {f"lr_{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}


def _finite(value: Any) -> float:
    value = float(value)
    return value if math.isfinite(value) else -math.inf


def improved(score: float, tie: float, best: float | None, best_tie: float | None) -> bool:
    """``(score, tie)`` beats ``(best, best_tie)`` lexicographically (NaN counts as −∞).

    The tie-break matters when the selection score is flat — e.g. F1@0.5 stays 0
    while every probability is still below 0.5 but the ranking (AUC) improves.
    """
    score, tie = _finite(score), _finite(tie)
    if best is None:
        return math.isfinite(score) or math.isfinite(tie)
    if score > best + 1e-12:
        return True
    return abs(score - best) <= 1e-12 and tie > _finite(best_tie if best_tie is not None
                                                       else -math.inf) + 1e-12


class Trainer:
    """Runs one task to completion, with checkpoints under ``ckpt_dir`` (``last.pt``, ``best_<key>.pt``)."""

    def __init__(self, task: Task, loader: DataLoader, settings: LoopSettings, ckpt_dir: Path,
                 log: TrainingLog, on_epoch: Callable[[dict[str, Any]], None] | None = None
                 ) -> None:
        self.task, self.loader, self.s = task, loader, settings
        self.ckpt_dir, self.log, self.on_epoch = ckpt_dir, log, on_epoch
        self.files = CheckpointFolder(ckpt_dir)
        self.optimizer = task.make_optimizer()
        self.scheduler = task.make_scheduler(self.optimizer)
        self.dtype = autocast_dtype(settings.device, settings.amp)
        use_scaler = self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.result = FitResult()
        self.bad_epochs = 0
        self.start_epoch = 0

    @property
    def writer(self) -> bool:
        return self.s.rank == 0

    # -- checkpoints -------------------------------------------------------------------------
    def _save_last(self, epoch: int) -> None:
        if not self.writer:
            return
        save_checkpoint(self.files.last, {
            "phase": self.task.name, "epoch": epoch, "model": trainable_state(self.task.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "best_score": dict(self.result.best_score), "best_epoch": dict(self.result.best_epoch),
            "best_tie": dict(self.result.best_tie),
            "bad_epochs": self.bad_epochs, "history": self.result.history,
        })
        write_text(self.files.history, json.dumps(self.result.history, indent=1))

    def resume(self) -> bool:
        """Continue from ``last.pt`` if there is one; True if it was loaded."""
        path = self.files.last
        if not path.is_file():
            return False
        ck = load_checkpoint(path)
        if ck.get("phase") != self.task.name:
            raise ValueError(f"{path}: checkpoint of phase {ck.get('phase')!r}, not {self.task.name!r}")
        load_trainable_state(self.task.model, ck["model"], path)
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler is not None and ck["scheduler"]:
            self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
        self.result.history = list(ck["history"])
        self.result.best_score = dict(ck["best_score"])
        self.result.best_tie = dict(ck.get("best_tie", {}))
        self.result.best_epoch = {k: int(v) for k, v in ck["best_epoch"].items()}
        self.bad_epochs = int(ck["bad_epochs"])
        self.start_epoch = int(ck["epoch"]) + 1
        LOG.info("%s: resuming after epoch %d from %s", self.task.name, ck["epoch"], path)
        return True

    # -- one epoch ---------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.s.device.type, dtype=self.dtype)

    def _rngs(self, epoch: int) -> EpochRNG:
        seed = epoch_seed(self.s.seed, self.task.name, epoch, self.s.rank)
        seed_all(seed)
        dev = self.s.device
        gen = torch.Generator(device=dev if dev.type == "cuda" else "cpu").manual_seed(seed)
        return EpochRNG(augment=gen, mining=np.random.default_rng(seed))

    def _step(self, clip: float, progress: float) -> torch.Tensor:
        """One optimiser step; ``progress`` is the fractional epoch reached after it."""
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.task.scheduler_mode == "step" and self.scheduler is not None:
            self.scheduler.step(progress)
        return norm.detach()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        task, rngs = self.task, self._rngs(epoch)
        set_epoch = getattr(self.loader.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        task.train_mode()
        clip = task.clip(epoch)
        n = len(self.loader)
        if self.s.max_steps_per_epoch is not None:
            n = min(n, self.s.max_steps_per_epoch)
        sizes = _groups(n, task.accumulation)
        # running sums stay on the device: no host sync per micro-batch, one per optimiser step
        sums: dict[str, torch.Tensor] = {}
        norms: list[torch.Tensor] = []
        samples = 0
        bad = torch.zeros((), dtype=torch.bool, device=self.s.device)
        self.optimizer.zero_grad(set_to_none=True)
        for i, raw in enumerate(_progress(self.loader, self.s.progress and self.writer,
                                          f"{task.name} {epoch}")):
            if i >= n:
                break
            batch = task.prepare(raw, epoch, rngs)
            closes = (i + 1) % task.accumulation == 0 or i == n - 1
            sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            no_sync = getattr(task.net, "no_sync", None)
            if self.s.world > 1 and not closes and callable(no_sync):
                sync = no_sync()   # DDP: reduce gradients only on the step that uses them
            with sync:
                with self._autocast():
                    out = task.net(batch)
                loss = out["loss"].float()
                bad |= ~torch.isfinite(loss.detach())
                self.scaler.scale(loss / sizes[i]).backward()
            if closes:
                if bool(bad):
                    raise FloatingPointError(f"{task.name} epoch {epoch}: the loss is not finite "
                                             f"(batch {i}); lower the learning rate or check inputs")
                norms.append(self._step(clip, epoch + (i + 1) / n))
            size = int(batch["label"].shape[0])
            samples += size
            for key, value in out.items():
                if not key.startswith("_"):            # "_…": per-sample outputs, not losses
                    total = value.detach().float() * size
                    sums[key] = sums[key] + total if key in sums else total
        stats = {f"train_{k}": float(v) / max(samples, 1) for k, v in sums.items()}
        stats["train_samples"] = float(samples)
        stats["grad_norm"] = float(torch.stack(norms).float().mean()) if norms else float("nan")
        stats["clip"] = clip
        return stats

    # -- the phase ---------------------------------------------------------------------------
    def _select(self, epoch: int, val: dict[str, Any]) -> None:
        ties = getattr(self.task, "tie_breaks", {})
        for i, key in enumerate(self.task.selections):
            score = _finite(val[key])
            tie = _finite(val[ties[key]]) if key in ties else -math.inf
            if improved(score, tie, self.result.best_score.get(key),
                        self.result.best_tie.get(key)):
                self.result.best_score[key] = score
                self.result.best_tie[key] = tie
                self.result.best_epoch[key] = epoch
                if self.writer:
                    save_checkpoint(self.files.best(key),
                                    {"epoch": epoch, "score": score,
                                     "model": trainable_state(self.task.model)})
                if i == 0:
                    self.bad_epochs = 0
            elif i == 0:
                self.bad_epochs += 1

    def fit(self) -> FitResult:
        task = self.task
        if self.start_epoch >= task.max_epochs or self._stopped():
            return self.result
        for epoch in range(self.start_epoch, task.max_epochs):
            start = time.perf_counter()
            lrs = _lrs(self.optimizer)
            row: dict[str, Any] = {"phase": task.name, "epoch": epoch, **lrs,
                                   **task.schedule_values(epoch)}
            row.update(self.train_epoch(epoch))
            seconds = time.perf_counter() - start
            val = task.validate(epoch)
            if task.scheduler_mode == "plateau" and self.scheduler is not None:
                self.scheduler.step(float(val[task.selections[0]]))
            elif task.scheduler_mode == "epoch" and self.scheduler is not None:
                self.scheduler.step()
            self._select(epoch, val)
            row.update({f"val_{k}" if not k.startswith("_") else k: v for k, v in val.items()})
            row["seconds"] = seconds
            row["samples_per_s"] = row["train_samples"] / max(seconds, 1e-9)
            row["bad_epochs"] = self.bad_epochs
            self.result.history.append(row)
            self._save_last(epoch)
            if self.writer:
                self.log.write(self.result.history)
            if self.on_epoch is not None:
                self.on_epoch(row)
            LOG.info("%s epoch %d: loss %.4f, %s %.4f (best %.4f @ %d), %.1f samples/s",
                     task.name, epoch, row.get("train_loss", float("nan")), task.selections[0],
                     float(val[task.selections[0]]), self.result.best_score.get(task.selections[0],
                                                                                float("nan")),
                     self.result.best_epoch.get(task.selections[0], -1), row["samples_per_s"])
            if self._stopped():
                LOG.info("%s: early stop after epoch %d (patience %d)", task.name, epoch,
                         task.patience)
                self.result.stopped_early = True
                break
        if self.writer:
            write_json(self.files.done, {
                "phase": task.name, "epochs": len(self.result.history),
                "best_score": self.result.best_score, "best_epoch": self.result.best_epoch,
                "stopped_early": self.result.stopped_early})
        return self.result

    def _stopped(self) -> bool:
        return self.bad_epochs >= self.task.patience
