"""MRI intensity normalisation inside the brain: clip, min–max to [0, 1], gamma.

Percentiles are taken over brain voxels only; voxels outside the mask are 0.

Example
-------
>>> import numpy as np, nibabel as nib
>>> img = nib.Nifti1Image(np.arange(27, dtype=np.float32).reshape(3, 3, 3), np.eye(4))
>>> mask = nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), np.eye(4))
>>> out = normalise_intensity(img, mask, (0.0, 100.0), 1.0)
>>> float(out.get_fdata().min()), float(out.get_fdata().max())
(0.0, 1.0)
"""

from __future__ import annotations

import nibabel as nib
import numpy as np


def normalise_array(data: np.ndarray, mask: np.ndarray,
                    percentiles: tuple[float, float] = (0.5, 99.5),
                    gamma: float = 0.9) -> np.ndarray:
    """Clip to the brain's percentiles, scale to [0, 1], raise to ``gamma``; 0 outside.

    Raises
    ------
    ValueError
        The mask is empty or the brain's intensities are constant.
    """
    inside = np.asarray(mask) > 0
    if not inside.any():
        raise ValueError("intensity normalisation: the brain mask is empty")
    values = np.asarray(data, np.float32)[inside]
    lo, hi = np.percentile(values, percentiles)
    if not hi > lo:
        raise ValueError(f"intensity normalisation: brain intensities are constant ({lo:g})")
    out = np.zeros(np.shape(data), np.float32)
    scaled = (np.clip(values, lo, hi) - lo) / (hi - lo)
    out[inside] = np.power(scaled, gamma, dtype=np.float32)
    return out


def normalise_intensity(image: nib.Nifti1Image, mask: nib.Nifti1Image,
                        percentiles: tuple[float, float] = (0.5, 99.5),
                        gamma: float = 0.9) -> nib.Nifti1Image:
    """:func:`normalise_array` on images (same grid); float32 result on ``image``'s grid."""
    if image.shape[:3] != mask.shape[:3]:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ in shape")
    data = normalise_array(np.asarray(image.dataobj), np.asarray(mask.dataobj), percentiles, gamma)
    out = nib.Nifti1Image(data, image.affine)
    out.set_data_dtype(np.float32)
    return out
