"""The networks-with-losses of the three training phases (one ``nn.Module`` each).

Each ``forward(batch)`` returns a dict of losses, so DDP can wrap the module;
the phase tasks of :mod:`bids_amyloid.train.phases` build and drive them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from bids_amyloid.config import AppConfig
from bids_amyloid.train import losses
from bids_amyloid.train.batches import subset

if TYPE_CHECKING:
    from bids_amyloid.models import Teacher


class PretrainNet(nn.Module):
    """Phase 1: the teacher and its BCE."""

    def __init__(self, teacher: nn.Module, contrasts: tuple[str, ...], pos_weight: float) -> None:
        super().__init__()
        self.teacher, self.contrasts, self.pos_weight = teacher, contrasts, pos_weight

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        mri, mask = subset(batch, self.contrasts)
        out = self.teacher(mri, mask, batch["pet"], batch["pet_mask"])
        bce = losses.bce_loss(out.logit.float(), batch["label"], self.pos_weight)
        return {"loss": bce, "bce": bce}


class ContrastiveNet(nn.Module):
    """Phase 2: anchor (PET query over MRI), positive/negative PET embeddings, their losses."""

    def __init__(self, teacher: Teacher, contrasts: tuple[str, ...], cfg: AppConfig) -> None:
        super().__init__()
        self.teacher, self.contrasts, self.c = teacher, contrasts, cfg.contrastive

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        mri, mask = subset(batch, self.contrasts)
        out = self.teacher.forward_triplet(mri, mask, batch["pet"], batch["pet_mask"],
                                           batch["neg_pet"], batch["neg_pet_mask"])
        c = self.c
        terms = losses.contrastive_terms(
            out.anchor.embedding.float(), out.positive.float(), out.negative.float(),
            out.anchor.logit.float(), batch["label"],
            margin=c.margin, norm_weight=c.norm_weight, s=float(batch["s"]),
            collapse_threshold=c.collapse_threshold, negative_cos_offset=c.negative_cos_offset,
            negative_cos_weight=c.negative_cos_weight)
        return {**terms, "_logit": out.anchor.logit.detach()}


class DistillNet(nn.Module):
    """Phase 3: the MRI-only student learning from the frozen teacher (kept in eval mode).

    Without a teacher (``--ablate no-teacher``) the loss is the student's
    classification term alone, ``a·MarginFocal`` (the KD terms need a teacher).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None,
                 teacher_contrasts: tuple[str, ...], cfg: AppConfig) -> None:
        super().__init__()
        self.student, self.teacher = student, teacher
        self.teacher_contrasts, self.d = teacher_contrasts, cfg.distill
        if self.teacher is not None:
            self.teacher.requires_grad_(False)
            self.teacher.eval()

    def train(self, mode: bool = True) -> DistillNet:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        t = None
        if self.teacher is not None:
            with torch.no_grad():
                mri_t, mask_t = subset(batch, self.teacher_contrasts)
                t = self.teacher(mri_t, mask_t, batch["pet"], batch["pet_mask"])
        s = self.student(batch["student_mri"], batch["student_mask"])
        logit = s.logit.float()
        focal = losses.margin_focal_loss(logit, batch["label"], margin=batch["margin"],
                                         gamma=self.d.focal_gamma, gap_weight=batch["gap_weight"],
                                         gap_coef=self.d.gap_coef)
        if t is None:
            return {"loss": batch["weights"][0] * focal["loss"], "focal": focal["focal"],
                    "gap": focal["gap"]}
        feat = losses.feature_kd_loss(s.embedding.float(), t.embedding.float())
        kd = losses.logit_kd_loss(logit, t.logit.float(), batch["temperature"])
        a, b, c = batch["weights"]
        loss = a * focal["loss"] + b * feat + c * kd
        return {"loss": loss, "focal": focal["focal"], "gap": focal["gap"], "feature_kd": feat,
                "logit_kd": kd}
