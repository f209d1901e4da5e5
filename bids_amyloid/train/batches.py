"""Batches and validation passes shared by the training phases of :mod:`bids_amyloid.train.phases`.

:class:`PhaseContext` (what every phase needs besides its model), batch
preparation (device transfer, augmentation, conversion to model images),
:func:`collect` (one fp32 pass over the validation set) and
:func:`classification` (the validation metrics every phase reports).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from bids_amyloid.config import AppConfig
from bids_amyloid.evaluation import auc, best_threshold, binary_metrics
from bids_amyloid.train.augment import augment_sample_images
from bids_amyloid.train.data import SliceCacheDataset
from bids_amyloid.train.loop import EpochRNG, full_precision


def model_images(x: Tensor, cfg: AppConfig) -> Tensor:
    """Slices (…, H, W) in [0, 1] → model images (…, 3, S, S): resized, 3 channels, CLIP-normalised.

    Uses :func:`bids_amyloid.models.prepare_slices`, the helper predict uses too.
    """
    from bids_amyloid.models import prepare_slices

    return prepare_slices(x, mean=cfg.model.clip_mean, std=cfg.model.clip_std,
                          size=cfg.model.image_size)


@dataclass
class PhaseContext:
    """What every phase needs besides its model."""

    cfg: AppConfig
    device: torch.device
    train: SliceCacheDataset
    val: SliceCacheDataset
    val_loader: DataLoader
    teacher_contrasts: tuple[str, ...]
    student_contrasts: tuple[str, ...]
    images: Callable[[Tensor, AppConfig], Tensor] = model_images
    wrap: Callable[[nn.Module], nn.Module] = lambda m: m   # DDP wrapper under torchrun


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = {k: v.to(device, non_blocking=True) for k, v in value.items()}
        elif isinstance(value, Tensor):
            out[key] = value.to(device, non_blocking=True)
        else:
            out[key] = value
    return out


def prepare_images(batch: dict[str, Any], ctx: PhaseContext, rngs: EpochRNG | None,
                   extra: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """Move to the device, augment (if ``rngs``; one draw per slice, shared by its MRI
    contrasts and PET; MRI clamped to [0, 1], PET never), and convert to model input
    (:func:`model_images`).

    ``extra`` images (e.g. a negative's PET) are augmented with their own draw.
    """
    batch = _to(batch, ctx.device)
    images: dict[str, Tensor] = {f"mri:{c}": v.float() for c, v in batch["mri"].items()}
    if "pet" in batch:
        images["pet"] = batch["pet"].float()
    if rngs is not None and ctx.cfg.augment.enabled:
        images = augment_sample_images(images, ctx.cfg.augment, rngs.augment,
                                       clamped=[k for k in images if k.startswith("mri:")])
        if extra:
            extra = augment_sample_images({k: v.to(ctx.device).float() for k, v in extra.items()},
                                          ctx.cfg.augment, rngs.augment, clamped=())
    for key, value in {**images, **(extra or {})}.items():
        model_in = ctx.images(value.to(ctx.device), ctx.cfg)
        if key.startswith("mri:"):
            batch["mri"][key[4:]] = model_in
        else:
            batch[key] = model_in
    batch["label"] = batch["label"].float()
    return batch


def subset(batch: dict[str, Any], contrasts: tuple[str, ...]) -> tuple[dict, dict]:
    """The MRI images and masks of ``contrasts`` in ``batch``."""
    return ({c: batch["mri"][c] for c in contrasts}, {c: batch["mri_mask"][c] for c in contrasts})


@torch.no_grad()
def collect(ctx: PhaseContext, forward: Callable[[dict[str, Any]], Any],
            loader: DataLoader | None = None) -> dict[str, np.ndarray]:
    """Run ``forward`` (returning logits (B,) and embeddings (B, D)) over ``loader``
    (default: the validation set), without augmentation, in fp32 (:func:`full_precision`)."""
    logits, embeds, labels, index = [], [], [], []
    for raw in loader if loader is not None else ctx.val_loader:
        batch = prepare_images(raw, ctx, None)
        with full_precision():
            logit, emb = forward(batch)
        logits.append(logit.float().cpu())
        embeds.append(emb.float().cpu())
        labels.append(batch["label"].cpu())
        index.append(batch["index"].cpu())
    return {"logit": torch.cat(logits).numpy(), "embedding": torch.cat(embeds).numpy(),
            "label": torch.cat(labels).numpy(), "index": torch.cat(index).numpy()}


def classification(out: dict[str, np.ndarray], grid: tuple[float, float, int]) -> dict[str, Any]:
    probs = 1.0 / (1.0 + np.exp(-out["logit"]))
    tau = best_threshold(out["label"], probs, grid)
    at_half = binary_metrics(out["label"], probs, 0.5)
    at_tau = binary_metrics(out["label"], probs, tau)
    bce = float(F.binary_cross_entropy_with_logits(torch.as_tensor(out["logit"]),
                                                   torch.as_tensor(out["label"])).item())
    return {"bce": bce, "auc": auc(out["label"], probs), "f1@0.5": at_half["f1"],
            "accuracy@0.5": at_half["accuracy"], "tau": tau, "f1@tau": at_tau["f1"],
            "_probs": [float(p) for p in probs], "_labels": [int(v) for v in out["label"]]}
