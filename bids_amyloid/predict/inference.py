"""Inference: slices of each planned session through the student, in batches."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bids_amyloid.slice_selection import SliceInput, load_slices

if TYPE_CHECKING:
    import torch

    from bids_amyloid.predict.model import PredictModel
    from bids_amyloid.predict.plan import SessionPlan


def model_inputs(batch: list[dict[str, SliceInput]], model: PredictModel
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Stack sessions (same contrasts) into the network's ``mri`` and ``mri_mask`` dicts."""
    import torch

    from bids_amyloid.models import prepare_slices

    m = model.cfg.model
    images, masks = {}, {}
    for contrast in batch[0]:
        stack = np.stack([item[contrast].slices for item in batch])
        images[contrast] = prepare_slices(stack, mean=m.clip_mean, std=m.clip_std,
                                          size=m.image_size, device=model.device)
        masks[contrast] = torch.from_numpy(np.stack([item[contrast].mask for item in batch])
                                           ).to(model.device)
    return images, masks


def infer(plans: list[SessionPlan], model: PredictModel, batch_size: int = 8,
          embeddings: dict[tuple[str, str], np.ndarray] | None = None
          ) -> dict[tuple[str, str], float]:
    """Probability per session; sessions are batched with others offering the same contrasts.

    ``embeddings``, if given, receives each session's pooled student embedding (the
    reliability check's input).
    """
    import torch

    n_slices = model.cfg.train.n_train_slices
    groups: dict[tuple[str, ...], list[SessionPlan]] = {}
    for plan in plans:
        groups.setdefault(plan.contrasts, []).append(plan)
    probs: dict[tuple[str, str], float] = {}
    with torch.inference_mode():
        for group in groups.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                items = [{c: load_slices(p.caches[c], n_slices) for c in p.contrasts}
                         for p in chunk]
                images, masks = model_inputs(items, model)
                out = model.network(images, masks)
                logits = out.logit.float()
                for plan, p in zip(chunk, torch.sigmoid(logits).cpu().tolist(), strict=True):
                    probs[plan.key] = float(p)
                if embeddings is not None:
                    for plan, e in zip(chunk, out.embedding.float().cpu().numpy(), strict=True):
                        embeddings[plan.key] = e
    return probs

