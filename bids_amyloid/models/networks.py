"""Teacher (PET + MRI) and student (MRI only) networks.

Both share one design: every slice of a batch — all MRI contrasts and, for
the teacher, the PET — goes through the ViT in ONE batched pass (padding
slices are skipped, not encoded), then through the projection head. MRI
slices of all contrasts form one token set; each token gets its contrast's
learned embedding (initialised at zero, so a single-contrast model starts
as the paper's network). A contrast whose mask is all ``False`` for a
session is that session's missing contrast.

- :class:`Teacher`: PET tokens query the MRI tokens (cross-attention), then
  attention pooling over the real PET slices → 128-d embedding → logit.
  :meth:`Teacher.encode_pet` is the PET self-attention embedding (phase-2
  positives and negatives); :meth:`Teacher.forward_triplet` computes anchor,
  positive and negative with a single ViT pass.
- :class:`Student`: self-attention over the MRI tokens of whichever of its
  contrasts are present, pooling over them → embedding → logit.
  :meth:`Student.init_from_teacher` copies the teacher before distillation.

Inputs: ``mri`` = ``{contrast: (B, S_c, 3, H, W)}`` CLIP-normalised (see
:func:`bids_amyloid.models.prepare_slices`), ``mri_mask`` = ``{contrast:
BoolTensor (B, S_c)}`` (True = real slice); ``pet (B, S, 3, H, W)``,
``pet_mask (B, S)``.

Example
-------
>>> import torch
>>> from bids_amyloid.config import AppConfig, ModelConfig
>>> cfg = AppConfig(model=ModelConfig(backbone="test_vit"))
>>> student = build_student(cfg, ("T1w", "T2w")).eval()
>>> x = torch.zeros(2, 3, 3, 224, 224)
>>> m = torch.ones(2, 3, dtype=torch.bool)
>>> out = student({"T1w": x}, {"T1w": m})  # T2w missing: fine
>>> tuple(out.logit.shape), tuple(out.embedding.shape)
((2,), (2, 128))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from bids_amyloid.config import MRI_CONTRASTS, AppConfig
from bids_amyloid.models.backbone import Backbone, build_backbone
from bids_amyloid.models.heads import AttentionBranch, Classifier, ProjectionHead
from bids_amyloid.models.lora import apply_lora, lora_parameters

LOG = logging.getLogger(__name__)

TEACHER = "teacher"
STUDENT = "student"

Images = dict[str, torch.Tensor]
Masks = dict[str, torch.Tensor]


@dataclass
class ModelOutput:
    """What a forward pass returns.

    ``logit (B,)``; ``embedding (B, 128)`` attention-pooled, before the
    classifier; ``pool_weights (B, N)`` the pooling weights over the query
    tokens (teacher: PET slices; student: MRI slices of the present
    contrasts, in the model's contrast order).
    """

    logit: torch.Tensor
    embedding: torch.Tensor
    pool_weights: torch.Tensor


@dataclass
class TripletOutput:
    """Teacher anchor output plus PET self-attention embeddings of positive and negative."""

    anchor: ModelOutput
    positive: torch.Tensor
    negative: torch.Tensor


def check_contrasts(contrasts: tuple[str, ...]) -> tuple[str, ...]:
    contrasts = tuple(contrasts)
    if not contrasts:
        raise ValueError("a model needs at least one MRI contrast")
    unknown = [c for c in contrasts if c not in MRI_CONTRASTS]
    if unknown or len(set(contrasts)) != len(contrasts):
        raise ValueError(f"contrasts {contrasts}: each must be one of {MRI_CONTRASTS}, no repeats")
    return contrasts


def _check_images(name: str, images: torch.Tensor, mask: torch.Tensor, size: int) -> None:
    if images.ndim != 5 or images.shape[2] != 3 or tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"{name}: expected (B, S, 3, {size}, {size}) images, got {tuple(images.shape)}")
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(images.shape[:2]):
        raise ValueError(f"{name}: mask must be a bool tensor of shape {tuple(images.shape[:2])}, "
                         f"got {mask.dtype} {tuple(mask.shape)}")


def _require_rows(mask: torch.Tensor, what: str) -> None:
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"batch item(s) {empty} have no real slice in {what}")


def drop_contrasts(mri: Images, mask: Masks, p: float,
                   generator: torch.Generator | None = None) -> tuple[Images, Masks]:
    """Training-time contrast dropout: hide each present contrast with probability ``p``.

    Per session, every contrast that has a real slice is dropped
    independently with probability ``p``; if all would go, one of them
    (chosen at random) is kept, so each session keeps at least one contrast.
    Only masks change: a dropped contrast's slices become padding.
    """
    names = list(mask)
    if not names:
        raise ValueError("drop_contrasts: no contrasts given")
    present = torch.stack([mask[c].any(dim=1) for c in names], dim=1)  # (B, C)
    device = generator.device if generator is not None else present.device
    draw = torch.rand(present.shape, generator=generator, device=device).to(present.device)
    keep = present & (draw >= p)
    lost = present.any(dim=1) & ~keep.any(dim=1)
    rescue = torch.where(present, draw, torch.full_like(draw, -1.0)).argmax(dim=1)
    keep[lost, rescue[lost]] = True
    return mri, {c: mask[c] & keep[:, i : i + 1] for i, c in enumerate(names)}


class AmyloidNetwork(nn.Module):
    """What teacher and student share: backbone + LoRA, projection, contrast embeddings,
    self-attention branch and classifier."""

    role: str = ""

    def __init__(self, cfg: AppConfig, contrasts: tuple[str, ...],
                 backbone: Backbone | None = None) -> None:
        super().__init__()
        m = cfg.model
        self.contrasts = check_contrasts(contrasts)
        self.backbone = backbone if backbone is not None else build_backbone(m)
        if not any(True for _ in lora_parameters(self.backbone)):
            self.backbone.lora_blocks = apply_lora(self.backbone.trunk, m)
        teacher = self.role == TEACHER
        self.projection = ProjectionHead(
            self.backbone.info.embed_dim, m.proj_hidden, m.embed_dim,
            m.teacher_proj_dropout if teacher else m.student_proj_dropout)
        self.contrast_embedding = nn.Parameter(torch.zeros(len(self.contrasts), m.embed_dim))
        self.self_attn = AttentionBranch(m.embed_dim, m.attn_heads, m.attn_dropout, m.pool_temperature)
        self.classifier = Classifier(m.embed_dim, m.cls_hidden,
                                     m.teacher_cls_dropout if teacher else m.student_cls_dropout)
        self.image_size = m.image_size
        self.reinit_gain, self.reinit_layers = cfg.distill.reinit_gain, cfg.distill.reinit_layers

    # --- encoding -----------------------------------------------------------------------
    def embed_slices(self, groups: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """One ViT pass over the real slices of all ``(images, mask)`` groups.

        Returns per group ``(B, S, D)`` projected tokens; padding slices are zeros.
        """
        flat_masks = [mask.reshape(-1) for _, mask in groups]
        all_mask = torch.cat(flat_masks)
        flat_images = [im.reshape(-1, *im.shape[2:]) for im, _ in groups]
        if bool(all_mask.all()):  # the usual training batch: no padding, no copy of the selection
            batch = flat_images[0] if len(flat_images) == 1 else torch.cat(flat_images)
            features = self.projection(self.backbone(batch))
            tokens = features
        else:
            images = torch.cat([im[fm] for im, fm in zip(flat_images, flat_masks, strict=True)])
            features = self.projection(self.backbone(images))
            tokens = features.new_zeros(all_mask.shape[0], features.shape[-1])
            tokens[all_mask] = features
        out, start = [], 0
        for _, mask in groups:
            n = mask.numel()
            out.append(tokens[start:start + n].reshape(*mask.shape, -1))
            start += n
        return out

    def _present(self, mri: Images, mri_mask: Masks) -> list[str]:
        unknown = sorted(set(mri) - set(self.contrasts))
        if unknown or set(mri) != set(mri_mask):
            raise ValueError(f"this {self.role} takes contrasts {self.contrasts}; got images for "
                             f"{sorted(mri)} and masks for {sorted(mri_mask)}")
        present = [c for c in self.contrasts if c in mri]
        if not present:
            raise ValueError(f"no MRI given: this {self.role} needs at least one of {self.contrasts}")
        for c in present:
            _check_images(f"MRI {c}", mri[c], mri_mask[c], self.image_size)
        _require_rows(torch.cat([mri_mask[c] for c in present], dim=1), f"any MRI contrast of {present}")
        return present

    def _mri_tokens(self, present: list[str], embedded: list[torch.Tensor],
                    mri_mask: Masks) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate the contrasts' tokens (plus contrast embeddings) into one set."""
        tokens = torch.cat([emb + self.contrast_embedding[self.contrasts.index(c)].to(emb.dtype)
                            for c, emb in zip(present, embedded, strict=True)], dim=1)
        return tokens, torch.cat([mri_mask[c] for c in present], dim=1)

    def _classify(self, pooled: torch.Tensor, weights: torch.Tensor) -> ModelOutput:
        return ModelOutput(logit=self.classifier(pooled).squeeze(-1), embedding=pooled,
                           pool_weights=weights)

    # --- optimisation -------------------------------------------------------------------
    def attention_modules(self) -> list[nn.Module]:
        return [self.self_attn]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by optimiser group: lora, projection, attention, classifier.

        ``attention`` holds the attention branches (with their pooling) and the
        contrast embeddings. The frozen backbone weights are in no group.
        """
        attention = [self.contrast_embedding]
        for module in self.attention_modules():
            attention.extend(module.parameters())
        return {
            "lora": lora_parameters(self.backbone),
            "projection": list(self.projection.parameters()),
            "attention": attention,
            "classifier": list(self.classifier.parameters()),
        }


class Teacher(AmyloidNetwork):
    """PET query over MRI key/value; sees PET and one or more MRI contrasts."""

    role = TEACHER

    def __init__(self, cfg: AppConfig, contrasts: tuple[str, ...],
                 backbone: Backbone | None = None) -> None:
        super().__init__(cfg, contrasts, backbone)
        m = cfg.model
        self.cross_attn = AttentionBranch(m.embed_dim, m.attn_heads, m.attn_dropout, m.pool_temperature)

    def attention_modules(self) -> list[nn.Module]:
        return [self.cross_attn, self.self_attn]

    def _cross(self, present: list[str], embedded: list[torch.Tensor], mri_mask: Masks,
               pet_tokens: torch.Tensor, pet_mask: torch.Tensor) -> ModelOutput:
        mri_tokens, mri_token_mask = self._mri_tokens(present, embedded, mri_mask)
        pooled, weights = self.cross_attn(pet_tokens, pet_mask, mri_tokens, mri_token_mask)
        return self._classify(pooled, weights)

    def _pet_self(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.self_attn(tokens, mask, tokens, mask)[0]

    def _check_pet(self, name: str, pet: torch.Tensor, pet_mask: torch.Tensor) -> None:
        _check_images(name, pet, pet_mask, self.image_size)
        _require_rows(pet_mask, name)

    def forward(self, mri: Images, mri_mask: Masks, pet: torch.Tensor,
                pet_mask: torch.Tensor) -> ModelOutput:
        present = self._present(mri, mri_mask)
        self._check_pet("PET", pet, pet_mask)
        *embedded, pet_tokens = self.embed_slices([(mri[c], mri_mask[c]) for c in present]
                                                  + [(pet, pet_mask)])
        return self._cross(present, embedded, mri_mask, pet_tokens, pet_mask)

    def encode_pet(self, pet: torch.Tensor, pet_mask: torch.Tensor) -> torch.Tensor:
        """PET self-attention pooled embedding ``(B, 128)`` (phase-2 positive / negative)."""
        self._check_pet("PET", pet, pet_mask)
        (tokens,) = self.embed_slices([(pet, pet_mask)])
        return self._pet_self(tokens, pet_mask)

    def forward_triplet(self, mri: Images, mri_mask: Masks, pet: torch.Tensor, pet_mask: torch.Tensor,
                        negative_pet: torch.Tensor, negative_mask: torch.Tensor) -> TripletOutput:
        """Anchor (cross-attention), positive (same PET, self-attention) and negative
        (another session's PET, self-attention), all slices in one ViT pass."""
        present = self._present(mri, mri_mask)
        self._check_pet("PET", pet, pet_mask)
        self._check_pet("negative PET", negative_pet, negative_mask)
        *embedded, pet_tokens, neg_tokens = self.embed_slices(
            [(mri[c], mri_mask[c]) for c in present] + [(pet, pet_mask), (negative_pet, negative_mask)])
        anchor = self._cross(present, embedded, mri_mask, pet_tokens, pet_mask)
        return TripletOutput(anchor=anchor, positive=self._pet_self(pet_tokens, pet_mask),
                             negative=self._pet_self(neg_tokens, negative_mask))


class Student(AmyloidNetwork):
    """MRI-only self-attention over any non-empty subset of its contrasts."""

    role = STUDENT

    def forward(self, mri: Images, mri_mask: Masks) -> ModelOutput:
        present = self._present(mri, mri_mask)
        embedded = self.embed_slices([(mri[c], mri_mask[c]) for c in present])
        tokens, mask = self._mri_tokens(present, embedded, mri_mask)
        return self._classify(*self.self_attn(tokens, mask, tokens, mask))

    @torch.no_grad()
    def init_from_teacher(self, teacher: Teacher) -> None:
        """Start distillation from ``teacher``.

        Copies the backbone (LoRA adapters, and the base weights so a randomly
        initialised test backbone matches too), the projection, the
        self-attention branch (attention + pooling; the student's role, as in
        the reference code), the contrast embeddings of shared contrasts and
        the classifier, then re-initialises the classifier's last layer
        (Xavier, gain ``cfg.distill.reinit_gain``, bias 0), and its first layer too when
        ``cfg.distill.reinit_layers = "all"``.
        """
        mine, theirs = self.backbone.info, teacher.backbone.info
        if mine.timm_model != theirs.timm_model or (mine.pretrained and theirs.pretrained
                                                    and mine.sha256 != theirs.sha256):
            raise ValueError(f"student backbone {mine.timm_model} ({mine.sha256[:12]}) differs from the "
                             f"teacher's {theirs.timm_model} ({theirs.sha256[:12]})")
        if self.backbone.lora_blocks != teacher.backbone.lora_blocks:
            raise ValueError(f"LoRA blocks differ: student {self.backbone.lora_blocks}, "
                             f"teacher {teacher.backbone.lora_blocks}")
        self.backbone.trunk.load_state_dict(teacher.backbone.trunk.state_dict())
        self.backbone.info = theirs
        self.projection.load_state_dict(teacher.projection.state_dict())
        self.self_attn.load_state_dict(teacher.self_attn.state_dict())
        self.classifier.load_state_dict(teacher.classifier.state_dict())
        for i, c in enumerate(self.contrasts):
            if c in teacher.contrasts:
                self.contrast_embedding[i] = teacher.contrast_embedding[teacher.contrasts.index(c)]
        self.classifier.reset_for_student(self.reinit_gain, self.reinit_layers)


def build_teacher(cfg: AppConfig, contrasts: tuple[str, ...],
                  backbone: Backbone | None = None) -> Teacher:
    """A teacher seeing PET and the MRI ``contrasts`` (backbone per ``cfg.model``)."""
    return Teacher(cfg, contrasts, backbone)


def build_student(cfg: AppConfig, contrasts: tuple[str, ...],
                  backbone: Backbone | None = None) -> Student:
    """An MRI-only student over ``contrasts`` (any non-empty subset accepted at run time)."""
    return Student(cfg, contrasts, backbone)


def build_model(role: str, cfg: AppConfig, contrasts: tuple[str, ...],
                backbone: Backbone | None = None) -> AmyloidNetwork:
    """:func:`build_teacher` or :func:`build_student` by ``role``."""
    if role == TEACHER:
        return build_teacher(cfg, contrasts, backbone)
    if role == STUDENT:
        return build_student(cfg, contrasts, backbone)
    raise ValueError(f"unknown model role {role!r}: expected {TEACHER!r} or {STUDENT!r}")
