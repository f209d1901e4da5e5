"""Loss functions of the three phases (docs/protocol.md, phases 1–3).

Every term returns a tensor that carries gradient — including the phase-2
anti-collapse penalties, which the reference code computed under ``no_grad``.

Example
-------
>>> import torch
>>> logits, labels = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])
>>> round(float(bce_loss(logits, labels)), 4)  # (log(1 + e⁻²) + log(1 + e⁻¹)) / 2
0.2201
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bce_loss(logits: Tensor, labels: Tensor, pos_weight: float = 1.0) -> Tensor:
    """Binary cross-entropy on logits (phase 1 and the BCE term of phase 2)."""
    weight = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=weight)


def _mean_offdiag_cosine(x: Tensor) -> Tensor:
    """Mean cosine similarity between different rows of ``x`` (0 for a single row)."""
    n = x.shape[0]
    if n < 2:
        return x.sum() * 0.0
    unit = F.normalize(x, dim=1)
    sim = unit @ unit.T
    off = sim.sum() - sim.diagonal().sum()
    return off / (n * (n - 1))


def contrastive_terms(anchor: Tensor, positive: Tensor, negative: Tensor, logits: Tensor,
                      labels: Tensor, *, margin: float, norm_weight: float, s: float,
                      collapse_threshold: float = 0.5, negative_cos_offset: float = 0.1,
                      negative_cos_weight: float = 0.5) -> dict[str, Tensor]:
    """Phase-2 loss and its parts.

    ``loss = triplet + bce + norm_weight·(mean‖a‖ + mean‖p‖ + mean‖n‖)
    + s·[relu(c_aa − 0.5) + 0.5·relu(c_an + 0.1)]``
    with the Euclidean triplet loss ``mean relu(d(a,p) − d(a,n) + margin)``,
    the sum of the mean L2 norms of anchors, positives and negatives (as the
    reference code: a sum of three means, not their mean), ``c_aa`` the mean
    off-diagonal cosine between anchors and ``c_an`` the mean cosine between
    each anchor and its negative.

    Returns
    -------
    dict
        ``loss``, ``triplet``, ``bce``, ``norm``, ``collapse``, ``neg_cos``,
        ``valid`` (fraction of triplets with ``d(a,n) > d(a,p)``, no gradient).
    """
    d_ap = (anchor - positive).norm(dim=1)
    d_an = (anchor - negative).norm(dim=1)
    triplet = F.relu(d_ap - d_an + margin).mean()
    bce = bce_loss(logits, labels)
    norm = anchor.norm(dim=1).mean() + positive.norm(dim=1).mean() + negative.norm(dim=1).mean()
    collapse = F.relu(_mean_offdiag_cosine(anchor) - collapse_threshold)
    neg_cos = F.relu(F.cosine_similarity(anchor, negative, dim=1).mean() + negative_cos_offset)
    penalty = s * (collapse + negative_cos_weight * neg_cos)
    loss = triplet + bce + norm_weight * norm + penalty
    valid = (d_an > d_ap).float().mean().detach()
    return {"loss": loss, "triplet": triplet, "bce": bce, "norm": norm,
            "collapse": collapse, "neg_cos": neg_cos, "valid": valid}


def margin_focal_loss(logits: Tensor, labels: Tensor, *, margin: float, gamma: float,
                      gap_weight: float, gap_coef: float = 0.1) -> dict[str, Tensor]:
    """MarginFocal: focal BCE on margin-shifted logits plus a class-gap term.

    The margin is subtracted from positives' logits and added to negatives'
    (so each class must clear it), the focal factor is ``(1 − p_t)^gamma``.
    Gap term: ``gap_coef·relu(margin − (mean positive logit − mean negative
    logit))·gap_weight``, zero when the batch lacks a class.

    Returns
    -------
    dict
        ``focal``, ``gap`` and their sum ``loss``.
    """
    y = labels.to(logits.dtype)
    shifted = logits - margin * (2.0 * y - 1.0)
    bce = F.binary_cross_entropy_with_logits(shifted, y, reduction="none")
    p = torch.sigmoid(shifted)
    p_t = p * y + (1.0 - p) * (1.0 - y)
    focal = ((1.0 - p_t) ** gamma * bce).mean()
    pos, neg = y > 0.5, y <= 0.5
    if bool(pos.any()) and bool(neg.any()):
        gap_gain = logits[pos].mean() - logits[neg].mean()
        gap = gap_coef * F.relu(margin - gap_gain) * gap_weight
    else:
        gap = logits.sum() * 0.0
    return {"loss": focal + gap, "focal": focal, "gap": gap}


def feature_kd_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """MSE between L2-normalised student and (detached) teacher embeddings."""
    return F.mse_loss(F.normalize(student, dim=1), F.normalize(teacher.detach(), dim=1))


def logit_kd_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``BCEWithLogits(student/T, sigmoid(teacher/T))·T²`` (teacher detached)."""
    t = temperature
    target = torch.sigmoid(teacher.detach() / t)
    return F.binary_cross_entropy_with_logits(student / t, target) * t * t
