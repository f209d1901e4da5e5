"""Sagittal slices on the template grid: fixed positions, 224×224, numeric order.

Positions are a function of the template grid only: ``n_slices`` (40)
integer indices evenly spaced over the central ``slice_range`` (40–60 %) of
the left–right voxel axis, in increasing numeric order. So an MRI's kept
slices and a PET's slices are matched by index, for any subject.

Each slice is oriented for viewing (rows superior → inferior, columns
anterior → posterior), zero-padded to a square (centred), then resized to
``slice_size`` (224) with linear interpolation — the aspect ratio is kept.
Values are not rescaled (MRI stays in [0, 1]; PET stays SUVR). MRI slices
whose mean (over the 224×224 slice) is below ``min_slice_mean`` are dropped.

Example
-------
>>> from bids_amyloid.config import PreprocConfig
>>> idx = candidate_indices(PreprocConfig())
>>> len(idx), idx[0], idx[-1], idx == sorted(idx)
(40, 78, 118, True)
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_amyloid.preproc.template import load_template


def _section(cfg: Any) -> Any:
    return getattr(cfg, "preproc", cfg)


def lr_axis(affine: np.ndarray) -> int:
    """The voxel axis that runs left–right in world space."""
    codes = nib.aff2axcodes(affine)
    for axis, code in enumerate(codes):
        if code in ("L", "R"):
            return axis
    raise ValueError(f"no left–right axis in affine with axis codes {codes}")


def positions(n_voxels: int, n_slices: int, lo: float, hi: float) -> list[int]:
    """``n_slices`` distinct integer positions evenly over [lo, hi] of ``n_voxels``."""
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"slice range must satisfy 0 ≤ lo < hi ≤ 1, got ({lo}, {hi})")
    start, stop = round(lo * (n_voxels - 1)), round(hi * (n_voxels - 1))
    idx = np.unique(np.round(np.linspace(start, stop, n_slices)).astype(int))
    if len(idx) != n_slices:
        raise ValueError(f"cannot place {n_slices} distinct slices in voxels {start}–{stop}")
    return [int(i) for i in idx]


def candidate_indices(cfg: Any) -> list[int]:
    """The ``n_slices`` sagittal positions (template voxel indices along left–right)."""
    section = _section(cfg)
    template = load_template(cfg)
    axis = lr_axis(template.affine)
    lo, hi = section.slice_range
    return positions(template.shape[axis], int(section.n_slices), float(lo), float(hi))


def orient_sagittal(plane: np.ndarray) -> np.ndarray:
    """(anterior–posterior, inferior–superior) plane in RAS voxel order → image rows/cols.

    Rows run superior → inferior, columns anterior → posterior (nose on the left).
    """
    return np.ascontiguousarray(plane[::-1, ::-1].T)


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Zero-pad a 2D array to a square, content centred."""
    h, w = image.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros((side, side), image.dtype)
    out[top:top + h, left:left + w] = image
    return out


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Linear resize of a square array to ``size``×``size`` (pixel areas aligned)."""
    side = image.shape[0]
    if image.shape[0] != image.shape[1]:
        raise ValueError(f"resize_square expects a square array, got {image.shape}")
    if side == size:
        return image.astype(np.float32)
    out = ndimage.zoom(image.astype(np.float32), size / side, order=1, mode="grid-constant",
                       cval=0.0, grid_mode=True, prefilter=False)
    if out.shape != (size, size):  # zoom rounds the shape; never off by more than one
        raise ValueError(f"resize produced {out.shape}, expected {(size, size)}")
    return out


def _canonical(volume: nib.Nifti1Image) -> np.ndarray:
    """Volume data in RAS voxel order (template grid expected, any axis order)."""
    ras = nib.as_closest_canonical(volume)
    return np.asarray(ras.dataobj, np.float32)


def _slice_stack(volume: nib.Nifti1Image, cfg: Any) -> tuple[np.ndarray, list[int]]:
    section = _section(cfg)
    template = load_template(cfg)
    if volume.shape[:3] != template.shape or not np.allclose(volume.affine, template.affine,
                                                              atol=1e-3):
        raise ValueError(f"volume {volume.shape} is not on the template grid {template.shape}")
    data = _canonical(volume)
    indices = candidate_indices(cfg)
    size = int(section.slice_size)
    stack = np.stack([resize_square(pad_to_square(orient_sagittal(data[i])), size)
                      for i in indices])
    return stack.astype(np.float32), indices


def extract_mri_slices(volume: nib.Nifti1Image, cfg: Any) -> tuple[np.ndarray, list[int]]:
    """Kept MRI slices ``(S, 224, 224)`` float32 and their template indices (increasing).

    A candidate slice is kept when its mean ≥ ``min_slice_mean``.
    """
    stack, indices = _slice_stack(volume, cfg)
    keep = stack.mean(axis=(1, 2)) >= float(_section(cfg).min_slice_mean)
    return stack[keep], [i for i, k in zip(indices, keep, strict=True) if k]


def extract_pet_slices(volume: nib.Nifti1Image, cfg: Any) -> tuple[np.ndarray, list[int]]:
    """All candidate PET slices ``(40, 224, 224)`` float32 (SUVR, not rescaled) and indices."""
    return _slice_stack(volume, cfg)
