"""The three training phases as small task objects for :class:`~bids_amyloid.train.loop.Trainer`.

A phase is its network-with-losses (:mod:`.nets`: an ``nn.Module`` whose
``forward(batch)`` returns a dict of losses, so DDP can wrap it), its optimiser groups, its
scheduler and clipping, its per-epoch schedule values, its batch preparation
(device transfer and augmentation in :mod:`.batches`; negatives, contrast
dropout here) and its validation with the checkpoint-selection scores:

========== ==================================== =========================================
phase      loss                                 selection (maximised on validation)
========== ==================================== =========================================
pretrain   BCE                                  ``f1@0.5``
contrastive triplet + BCE + norm + s·penalties  ``score`` = valid − 0.1·triplet + 0.5·F1@0.5
distill    a·MarginFocal + b·feature KD + c·KD  ``f1@tau`` (early stop), ``cosine``
========== ==================================== =========================================

Ties of a selection score are broken by validation AUC (an addition to the
protocol: F1@0.5 is often flat at 0 for the first epochs, while every
probability is still under 0.5, and without a tie-break the first epoch
would win and early stopping would end the phase while the ranking improves).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bids_amyloid.config import AppConfig
from bids_amyloid.errors import InputMissingError
from bids_amyloid.train import schedules
from bids_amyloid.train.batches import PhaseContext, classification, collect, prepare_images, subset
from bids_amyloid.train.data import SliceCacheDataset
from bids_amyloid.train.loop import EpochRNG, full_precision
from bids_amyloid.train.mining import NegativePool
from bids_amyloid.train.nets import ContrastiveNet, DistillNet, PretrainNet

if TYPE_CHECKING:
    from bids_amyloid.models import Teacher

LOG = logging.getLogger(__name__)
VAL_MINING_SEED = 12345


def _named_groups(model: Any, spec: Sequence[tuple[str, tuple[str, ...], float, float]]
                  ) -> list[dict[str, Any]]:
    """AdamW groups from ``model.param_groups()``: (name, keys, lr, weight decay)."""
    available = model.param_groups()
    groups = []
    for name, keys, lr, wd in spec:
        params = [p for k in keys for p in available.get(k, []) if p.requires_grad]
        if params:
            groups.append({"name": name, "params": params, "lr": lr, "weight_decay": wd})
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups



# -- tasks -----------------------------------------------------------------------------------
class _Phase:
    name = ""
    scheduler_mode = "none"
    selections: tuple[str, ...] = ()
    tie_breaks: ClassVar[dict[str, str]] = {}

    def __init__(self, ctx: PhaseContext, model: nn.Module, net: nn.Module) -> None:
        self.ctx, self.model = ctx, model
        self.module = net.to(ctx.device)
        self.net = ctx.wrap(self.module)

    def train_mode(self) -> None:
        self.module.train()

    def schedule_values(self, epoch: int) -> dict[str, float]:
        return {}

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        return None


class PretrainPhase(_Phase):
    """Phase 1 — teacher pre-training with BCE."""

    name = "pretrain"
    selections = ("f1@0.5",)
    tie_breaks: ClassVar[dict[str, str]] = {"f1@0.5": "auc"}

    def __init__(self, ctx: PhaseContext, teacher: nn.Module) -> None:
        super().__init__(ctx, teacher, PretrainNet(teacher, ctx.teacher_contrasts,
                                                   ctx.cfg.pretrain.pos_weight))
        p = ctx.cfg.pretrain
        self.max_epochs, self.patience, self.accumulation = p.max_epochs, p.patience, p.accumulation

    def make_optimizer(self) -> torch.optim.Optimizer:
        p = self.ctx.cfg.pretrain
        keys = ("lora", "projection", "attention", "classifier")
        spec = [(k, (k,), p.lr, p.weight_decay) for k in keys]
        return torch.optim.AdamW(_named_groups(self.model, spec))

    def clip(self, epoch: int) -> float:
        return schedules.clip_norm(self.ctx.cfg.pretrain.clip_schedule, epoch)

    def prepare(self, batch: dict[str, Any], epoch: int, rngs: EpochRNG) -> dict[str, Any]:
        return prepare_images(batch, self.ctx, rngs)

    def validate(self, epoch: int) -> dict[str, Any]:
        self.model.eval()
        contrasts = self.ctx.teacher_contrasts

        def forward(b: dict[str, Any]) -> tuple[Tensor, Tensor]:
            out = self.model(*subset(b, contrasts), b["pet"], b["pet_mask"])
            return out.logit, out.embedding

        return classification(collect(self.ctx, forward), self.ctx.cfg.train.threshold_grid)


class ContrastivePhase(_Phase):
    """Phase 2 — Centiloid-aware triplet refinement of the teacher."""

    name = "contrastive"
    scheduler_mode = "step"
    selections = ("score",)
    tie_breaks: ClassVar[dict[str, str]] = {"score": "auc"}

    def __init__(self, ctx: PhaseContext, teacher: Teacher) -> None:
        super().__init__(ctx, teacher, ContrastiveNet(teacher, ctx.teacher_contrasts, ctx.cfg))
        c = ctx.cfg.contrastive
        self.max_epochs, self.patience, self.accumulation = c.max_epochs, c.patience, c.accumulation
        try:
            self.pool = NegativePool(ctx.train.subjects, ctx.train.centiloids)
            self.val_pool = NegativePool(ctx.val.subjects, ctx.val.centiloids)
        except ValueError as err:
            raise InputMissingError(f"phase 2 (triplets) needs training and validation samples "
                                    f"of at least two subjects each: {err}") from err
        self.mined: dict[str, int] = {}

    def make_optimizer(self) -> torch.optim.Optimizer:
        c = self.ctx.cfg.contrastive
        spec = [("lora", ("lora",), c.lr_backbone, c.wd_backbone),
                ("projection", ("projection",), c.lr_backbone, c.wd_backbone),
                ("attention", ("attention",), c.lr_backbone, c.wd_backbone),
                ("classifier", ("classifier",), c.lr_classifier, c.wd_classifier)]
        return torch.optim.AdamW(_named_groups(self.model, spec))

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        c = self.ctx.cfg.contrastive
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=c.t0, T_mult=c.t_mult, eta_min=c.eta_min)

    def clip(self, epoch: int) -> float:
        return self.ctx.cfg.contrastive.clip

    def schedule_values(self, epoch: int) -> dict[str, float]:
        return {"s": schedules.anticollapse_weight(epoch), "cl_gap": self.ctx.cfg.contrastive.cl_gap}

    def _negatives(self, dataset: SliceCacheDataset, pool: NegativePool, index: Tensor,
                   rng: np.random.Generator) -> tuple[Tensor, Tensor, list[str]]:
        picks, kinds = pool.mine([int(i) for i in index], self.ctx.cfg.contrastive.cl_gap, rng)
        items = [dataset.pet_item(j) for j in picks]
        return (torch.stack([p for p, _ in items]), torch.stack([m for _, m in items]), kinds)

    def _with_negatives(self, raw: dict[str, Any], dataset: SliceCacheDataset, pool: NegativePool,
                        rngs: EpochRNG | None, rng: np.random.Generator) -> dict[str, Any]:
        neg, neg_mask, kinds = self._negatives(dataset, pool, raw["index"], rng)
        for kind in kinds:
            self.mined[kind] = self.mined.get(kind, 0) + 1
        batch = prepare_images(raw, self.ctx, rngs, extra={"neg_pet": neg})
        batch["neg_pet_mask"] = neg_mask.to(self.ctx.device)
        return batch

    def prepare(self, batch: dict[str, Any], epoch: int, rngs: EpochRNG) -> dict[str, Any]:
        out = self._with_negatives(batch, self.ctx.train, self.pool, rngs, rngs.mining)
        out["s"] = schedules.anticollapse_weight(epoch)
        return out

    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, Any]:
        """Triplet loss, valid-triplet fraction and classification from one pass over
        validation, with negatives mined from validation subjects (fixed seed)."""
        self.module.eval()
        mined, self.mined = self.mined, {}      # the training epoch's negatives, by rule
        rng = np.random.default_rng(VAL_MINING_SEED)
        triplet, valid, sizes = [], [], []
        logits, labels = [], []
        for raw in self.ctx.val_loader:
            batch = self._with_negatives(raw, self.ctx.val, self.val_pool, None, rng)
            batch["s"] = 0.0
            with full_precision():
                out = self.module(batch)
            triplet.append(float(out["triplet"]))
            valid.append(float(out["valid"]))
            sizes.append(int(batch["label"].shape[0]))
            logits.append(out["_logit"].float().cpu())
            labels.append(batch["label"].cpu())
        w = np.asarray(sizes, float) / max(sum(sizes), 1)
        metrics = classification({"logit": torch.cat(logits).numpy(),
                                   "label": torch.cat(labels).numpy()},
                                  self.ctx.cfg.train.threshold_grid)
        c = self.ctx.cfg.contrastive
        val_triplet, val_valid = float(np.dot(w, triplet)), float(np.dot(w, valid))
        score = (val_valid - c.val_triplet_weight * val_triplet) + c.val_f1_weight * metrics["f1@0.5"]
        self.mined = {}
        return {**metrics, "triplet": val_triplet, "valid_triplets": val_valid, "score": score,
                **{f"negatives_{k}": float(v) for k, v in sorted(mined.items())}}


def head_budget(cfg: AppConfig, n_train: int) -> tuple[int, float, float]:
    """Phase 3 counted in optimiser steps, against the re-initialised classifier layer.

    Returns ``(steps, reach, bound)``: the most optimiser steps the phase makes
    (``max_epochs × ⌈⌈n_train / batch⌉ / accumulation⌉``), the most Adam can move one
    weight in them (about ``lr_heads`` per step, so ``steps × lr_heads``), and the
    range ``±bound`` of that layer's Xavier re-initialisation (``reinit_gain ·
    √(6 / (cls_hidden + 1))``). When ``reach < bound`` the random initial direction
    of the layer, not the labels, decides how the student ranks subjects.

    >>> from bids_amyloid.config import AppConfig
    >>> steps, reach, bound = head_budget(AppConfig(), 60)   # 10 × 3 per step, 100 epochs
    >>> steps, round(reach, 4), round(bound, 4)
    (200, 0.02, 0.1519)
    """
    d = cfg.distill
    steps = d.max_epochs * math.ceil(math.ceil(n_train / d.batch_size) / d.accumulation)
    bound = d.reinit_gain * math.sqrt(6.0 / (cfg.model.cls_hidden + 1))
    return steps, steps * d.lr_heads, bound


def warn_head_budget(cfg: AppConfig, n_train: int) -> None:
    """Log a warning when phase 3 cannot turn its re-initialised classifier layer."""
    steps, reach, bound = head_budget(cfg, n_train)
    if reach < bound:
        LOG.warning(
            "phase 3 makes at most %d optimiser steps (%d training pairs, batch %d × "
            "accumulation %d, %d epochs): at lr %.1e Adam moves a weight of the re-initialised "
            "classifier layer by at most %.3g, less than its random initial range ±%.3g, so that "
            "draw rather than the labels decides the student's ranking. For a small cohort set "
            "[distill] reinit_gain = 0 (the layer starts at zero and takes its direction from "
            "the labels) and accumulation = 1, or train longer", steps, n_train,
            cfg.distill.batch_size, cfg.distill.accumulation, cfg.distill.max_epochs,
            cfg.distill.lr_heads, reach, bound)


class DistillPhase(_Phase):
    """Phase 3 — distillation of the frozen teacher into the MRI-only student."""

    name = "distill"
    scheduler_mode = "plateau"
    selections: tuple[str, ...] = ("f1@tau", "cosine")
    tie_breaks: ClassVar[dict[str, str]] = {"f1@tau": "auc"}

    def __init__(self, ctx: PhaseContext, student: nn.Module, teacher: nn.Module | None) -> None:
        super().__init__(ctx, student, DistillNet(student, teacher, ctx.teacher_contrasts, ctx.cfg))
        d = ctx.cfg.distill
        self.teacher = teacher
        self.max_epochs, self.patience, self.accumulation = d.max_epochs, d.patience, d.accumulation
        ablate = set(ctx.cfg.train.ablate)
        self.use_feature = "no-feature-kd" not in ablate and teacher is not None
        self.use_logit = "no-logit-kd" not in ablate and teacher is not None
        if teacher is None:             # --ablate no-teacher: no teacher-student cosine to select
            self.name, self.selections = "no-teacher", ("f1@tau",)
        warn_head_budget(ctx.cfg, len(ctx.train))
        self._teacher_val: np.ndarray | None = None

    def make_optimizer(self) -> torch.optim.Optimizer:
        d = self.ctx.cfg.distill
        spec = [("lora", ("lora",), d.lr_lora, d.wd_lora),
                ("projection", ("projection",), d.lr_projection, d.wd_projection),
                ("heads", ("attention", "classifier"), d.lr_heads, d.wd_heads)]
        return torch.optim.AdamW(_named_groups(self.model, spec))

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        d = self.ctx.cfg.distill
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=d.plateau_factor, patience=d.plateau_patience,
            threshold=d.plateau_threshold, min_lr=d.plateau_min_lr, cooldown=d.plateau_cooldown)

    def clip(self, epoch: int) -> float:
        return self.ctx.cfg.distill.clip

    def weights(self, epoch: int) -> tuple[float, float, float]:
        a, b, c = schedules.loss_weights(self.ctx.cfg.distill, epoch)
        return a, b if self.use_feature else 0.0, c if self.use_logit else 0.0

    def schedule_values(self, epoch: int) -> dict[str, float]:
        d = self.ctx.cfg.distill
        a, b, c = self.weights(epoch)
        return {"margin": schedules.focal_margin(d, epoch),
                "temperature": schedules.kd_temperature(d, epoch),
                "gap_weight": schedules.gap_weight(d, epoch), "weight_focal": a,
                "weight_feature_kd": b, "weight_logit_kd": c}

    def prepare(self, batch: dict[str, Any], epoch: int, rngs: EpochRNG) -> dict[str, Any]:
        out = prepare_images(batch, self.ctx, rngs)
        d = self.ctx.cfg.distill
        mri, mask = subset(out, self.ctx.student_contrasts)
        if len(mri) > 1 and self.ctx.cfg.model.contrast_dropout > 0:
            from bids_amyloid.models import drop_contrasts

            mri, mask = drop_contrasts(mri, mask, self.ctx.cfg.model.contrast_dropout,
                                       generator=rngs.augment)
        out["student_mri"], out["student_mask"] = mri, mask
        out["margin"] = schedules.focal_margin(d, epoch)
        out["temperature"] = schedules.kd_temperature(d, epoch)
        out["gap_weight"] = schedules.gap_weight(d, epoch)
        out["weights"] = self.weights(epoch)
        return out

    def _teacher_embeddings(self) -> np.ndarray:
        teacher = self.teacher
        if teacher is None:
            raise ValueError("no teacher: the teacher-student cosine is undefined")
        if self._teacher_val is None:
            teacher.eval()
            contrasts = self.ctx.teacher_contrasts

            def forward(b: dict[str, Any]) -> tuple[Tensor, Tensor]:
                out = teacher(*subset(b, contrasts), b["pet"], b["pet_mask"])
                return out.logit, out.embedding

            self._teacher_val = collect(self.ctx, forward)["embedding"]
        return self._teacher_val

    def validate(self, epoch: int) -> dict[str, Any]:
        self.model.eval()
        contrasts = self.ctx.student_contrasts

        def forward(b: dict[str, Any]) -> tuple[Tensor, Tensor]:
            out = self.model(*subset(b, contrasts))
            return out.logit, out.embedding

        out = collect(self.ctx, forward)
        metrics = classification(out, self.ctx.cfg.train.threshold_grid)
        if self.teacher is None:
            return metrics
        teacher = torch.as_tensor(self._teacher_embeddings())
        cos = F.cosine_similarity(torch.as_tensor(out["embedding"]), teacher, dim=1)
        return {**metrics, "cosine": float(cos.mean())}
