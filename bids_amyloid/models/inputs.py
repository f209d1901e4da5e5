"""Slice caches → model input: 3 channels, CLIP normalisation.

Example
-------
>>> import numpy as np
>>> x = prepare_slices(np.full((2, 4, 4), 0.5, dtype=np.float16))
>>> tuple(x.shape), round(float(x[0, 0, 0, 0]), 4)
((2, 3, 4, 4), 0.069)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bids_amyloid.config import CLIP_MEAN, CLIP_STD


def _as_float_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array))
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.dtype == torch.uint16:
        return x.float() / 65535.0
    if not x.is_floating_point():
        raise TypeError(f"slices must be float or uint8/uint16, got {x.dtype}")
    return x.float()


def prepare_slices(array: np.ndarray | torch.Tensor, *, mean: Sequence[float] = CLIP_MEAN,
                   std: Sequence[float] = CLIP_STD, size: int | None = None,
                   device: str | torch.device | None = None) -> torch.Tensor:
    """Slices ``(…, H, W)`` → CLIP-normalised float32 ``(…, 3, H, W)``.

    Parameters
    ----------
    array
        Single-channel slices: float values as stored in the caches (MRI in
        [0, 1], PET as SUVR — not rescaled), or uint8/uint16 scaled to [0, 1].
        A numpy array (e.g. a memory-mapped cache) or a tensor (kept on its device).
    mean, std
        Per-channel normalisation (``cfg.model.clip_mean`` / ``clip_std``).
    size
        Resize to ``size × size`` (bilinear, antialiased) when the slices differ.
    device
        Where the result goes (default: the input tensor's device, or CPU).
    """
    x = _as_float_tensor(array)
    if device is not None:
        x = x.to(device)
    if x.ndim < 2:
        raise ValueError(f"slices must be at least 2-D (…, H, W), got shape {tuple(x.shape)}")
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        lead = x.shape[:-2]
        flat = x.reshape(-1, 1, *x.shape[-2:])
        x = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True).reshape(*lead, size, size)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x.unsqueeze(-3) - m) / s
