"""Batched augmentation: one parameter draw per slice, shared by that slice's images.

:func:`augment_sample_images` takes a batch's image sets — every MRI
contrast's slices and the PET slices, each ``(B, S, H, W)`` — and augments
slice ``j`` of a sample with one draw of parameters shared by that slice's
MRI contrasts and its PET (so the pair stays aligned), while every slice
gets its own draw (the protocol; the reference code transforms each
MRI/PET slice pair with its own seed). Internally the slices become rows of
one ``(B·S, K, H, W)`` tensor for :func:`augment_stack`. All operations are
tensor ops on the batch's device; nothing loops over images.

Values: MRI is in [0, 1] and is clamped back to it after the intensity
steps; PET is scaled SUVR, unbounded above, and is never clamped (a clamp
would cut high uptake in training that evaluation sees uncut).

docs/protocol.md values (``AugmentConfig``): affine ±7°, translate 5 %, scale
0.95–1.05; brightness/contrast ±0.1; Gaussian blur k=3 (σ ∈ [0.1, 2]) p=0.3;
gamma U[0.9, 1.1] p=0.5; Gaussian noise σ ∈ U[0.01, 0.03] p=0.5; random
erasing p=0.25 of 5–12 % of the area (aspect 0.3–3.3), value 0.

Example
-------
>>> import torch
>>> from bids_amyloid.config import AugmentConfig
>>> mri, pet = torch.rand(2, 5, 16, 16), 2.5 * torch.rand(2, 5, 16, 16)
>>> out = augment_sample_images({"mri:T1w": mri, "pet": pet}, AugmentConfig(),
...                             torch.Generator().manual_seed(0), clamped=("mri:T1w",))
>>> out["pet"].shape, float(out["mri:T1w"].max()) <= 1.0
(torch.Size([2, 5, 16, 16]), True)
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import Tensor

from bids_amyloid.config import AugmentConfig


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device
             ) -> Tensor:
    return (torch.rand(n, generator=gen, device=gen.device) * (high - low) + low).to(device)


def _coin(n: int, p: float, gen: torch.Generator, device: torch.device) -> Tensor:
    return (torch.rand(n, generator=gen, device=gen.device) < p).to(device)


def affine(x: Tensor, angle_deg: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Rotate/translate/scale each row's images by its own parameters (bilinear, zero pad).

    ``shift`` is (B, 2) as a fraction of width/height.
    """
    theta = angle_deg * math.pi / 180.0
    cos, sin = torch.cos(theta) / scale, torch.sin(theta) / scale
    mat = torch.stack([torch.stack([cos, -sin, -2 * shift[:, 0]], 1),
                       torch.stack([sin, cos, -2 * shift[:, 1]], 1)], 1)
    grid = F.affine_grid(mat.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def brightness_contrast(x: Tensor, brightness: Tensor, contrast: Tensor) -> Tensor:
    """Multiply by a brightness factor, then blend with each image's mean by a contrast factor."""
    x = x * brightness.view(-1, 1, 1, 1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * contrast.view(-1, 1, 1, 1) + mean


def gaussian_blur(x: Tensor, sigma: Tensor, kernel: int) -> Tensor:
    """Blur with a per-row Gaussian of width ``sigma`` (reflect padding)."""
    b, n, h, w = x.shape
    r = torch.arange(kernel, device=x.device, dtype=x.dtype) - (kernel - 1) / 2
    k1 = torch.exp(-(r[None, :] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k1 = k1 / k1.sum(dim=1, keepdim=True)
    k2 = k1[:, :, None] * k1[:, None, :]                       # (B, k, k)
    weight = k2.repeat_interleave(n, dim=0)[:, None]            # (B·N, 1, k, k)
    pad = kernel // 2
    flat = F.pad(x.reshape(1, b * n, h, w), (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(flat, weight, groups=b * n).reshape(b, n, h, w)


def erase_mask(shape: torch.Size, area: Tensor, log_ratio: Tensor, u: Tensor, v: Tensor
               ) -> Tensor:
    """(B, 1, H, W) True inside each row's rectangle (area fraction, log aspect, position)."""
    _, _, h, w = shape
    ratio = torch.exp(log_ratio)
    eh = torch.clamp(torch.sqrt(area * h * w * ratio).round(), 1, h)
    ew = torch.clamp(torch.sqrt(area * h * w / ratio).round(), 1, w)
    top = (u * (h - eh + 1)).floor()
    left = (v * (w - ew + 1)).floor()
    rows = torch.arange(h, device=area.device)[None, :]
    cols = torch.arange(w, device=area.device)[None, :]
    in_r = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_c = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


def _bounded(x: Tensor, clamp: Tensor) -> Tensor:
    """Clamp the channels flagged in ``clamp`` (K,) to [0, 1]; leave the others as they are."""
    return torch.where(clamp.view(1, -1, 1, 1), x.clamp(0, 1), x)


def augment_stack(x: Tensor, cfg: AugmentConfig, gen: torch.Generator, clamp: Tensor) -> Tensor:
    """Augment ``x`` (R, K, H, W) with one parameter draw per row, shared by its K images.

    ``clamp`` (bool, K) flags the images bounded to [0, 1] (MRI): they are
    clamped after the intensity steps; the others (PET) never are, and gamma
    keeps their sign (``sign(x)·|x|^γ``) where noise or contrast made them negative.
    Random numbers come from ``gen``; give it the batch's device to keep the
    work there (a CPU generator gives the same draws whatever the device).
    """
    if not cfg.enabled:
        return x
    b, dev = x.shape[0], x.device
    clamp = torch.as_tensor(clamp, dtype=torch.bool, device=dev)
    if clamp.shape != (x.shape[1],):
        raise ValueError(f"clamp flags {tuple(clamp.shape)} do not match {x.shape[1]} images per row")
    angle = _uniform(b, -cfg.rotate_deg, cfg.rotate_deg, gen, dev)
    shift = torch.stack([_uniform(b, -cfg.translate, cfg.translate, gen, dev) for _ in (0, 1)], 1)
    scale = _uniform(b, cfg.scale[0], cfg.scale[1], gen, dev)
    x = affine(x, angle, shift, scale)
    bright = _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, gen, dev)
    contr = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, gen, dev)
    x = _bounded(brightness_contrast(x, bright, contr), clamp)
    blur_on = _coin(b, cfg.blur_p, gen, dev).view(-1, 1, 1, 1)
    sigma = _uniform(b, 0.1, 2.0, gen, dev)
    x = torch.where(blur_on, gaussian_blur(x, sigma, cfg.blur_kernel), x)
    gamma_on = _coin(b, cfg.gamma_p, gen, dev).view(-1, 1, 1, 1)
    gamma = _uniform(b, cfg.gamma[0], cfg.gamma[1], gen, dev).view(-1, 1, 1, 1)
    x = torch.where(gamma_on, x.sign() * x.abs() ** gamma, x)
    noise_on = _coin(b, cfg.noise_p, gen, dev).view(-1, 1, 1, 1)
    std = _uniform(b, cfg.noise_std[0], cfg.noise_std[1], gen, dev).view(-1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=gen, device=gen.device).to(dev, x.dtype) * std
    x = _bounded(torch.where(noise_on, x + noise, x), clamp)
    erase_on = _coin(b, cfg.erase_p, gen, dev).view(-1, 1, 1, 1)
    area = _uniform(b, cfg.erase_scale[0], cfg.erase_scale[1], gen, dev)
    log_ratio = _uniform(b, math.log(0.3), math.log(3.3), gen, dev)
    mask = erase_mask(x.shape, area, log_ratio, _uniform(b, 0, 1, gen, dev),
                      _uniform(b, 0, 1, gen, dev))
    return torch.where(erase_on & mask, torch.zeros_like(x), x)


def augment_sample_images(images: dict[str, Tensor], cfg: AugmentConfig, gen: torch.Generator,
                          *, clamped: Collection[str]) -> dict[str, Tensor]:
    """Augment image sets ``{name: (B, S, H, W)}`` of the same samples, one draw per slice.

    Slice ``j`` of every set of a sample shares one parameter draw (the
    slice's MRI contrasts and its PET move together); different slices and
    samples get different draws. ``clamped`` names the sets bounded to
    [0, 1] (MRI); the others (PET) are never clamped.
    """
    names = list(images)
    shapes = {tuple(images[k].shape) for k in names}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        raise ValueError("augment_sample_images: every image set must be (B, S, H, W) of one "
                         f"shape; got {({k: tuple(v.shape) for k, v in images.items()})}")
    unknown = sorted(set(clamped) - set(names))
    if unknown:
        raise ValueError(f"augment_sample_images: clamped names {unknown} are not image sets")
    b, s, h, w = next(iter(shapes))
    rows = torch.stack([images[k] for k in names], dim=2).reshape(b * s, len(names), h, w)
    flags = torch.tensor([k in clamped for k in names], dtype=torch.bool)
    out = augment_stack(rows, cfg, gen, flags).reshape(b, s, len(names), h, w)
    return {k: out[:, :, i] for i, k in enumerate(names)}
