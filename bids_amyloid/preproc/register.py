"""Rigid (6 dof) and affine (12 dof) registration with ANTs, transform files and composition.

Conventions
-----------
A rigid transform is held as a 4x4 **RAS-mm matrix mapping moving-image world
coordinates to fixed-image world coordinates** (``to_fixed``; for an MRI
registered to the template this is ``MRIResult.to_template``). Composition is
matrix multiplication: PET → template = ``mri_to_template @ pet_to_mri``.
Resampling onto the fixed grid uses the inverse (fixed voxel → moving voxel),
linear interpolation, in one step (no double interpolation).

On disk, transforms are ITK/ANTs ``.mat`` files (``AffineTransform_float_3_3``)
in ANTs' resampling convention: they map *fixed* LPS points to *moving* LPS
points, i.e. ``antsApplyTransforms -r template.nii.gz -i native.nii.gz -t
xfm.mat`` reproduces the template-space image. The LPS ↔ RAS flip is done
here only (:func:`itk_matrix` / :func:`world_matrix`).

Example
-------
>>> import numpy as np
>>> m = np.eye(4); m[:3, 3] = [1.0, 2.0, 3.0]
>>> np.allclose(world_matrix(itk_matrix(m)), m)
True
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_amyloid.config import PreprocConfig
from bids_amyloid.io import atomic_path
from bids_amyloid.preproc.template import LPS, resample_array, set_threads, to_ants

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RigidFit:
    """Result of :func:`register_rigid`."""

    to_fixed: np.ndarray  # 4x4 RAS: moving world → fixed world
    correlation: float  # Pearson r of fixed vs resampled moving inside the fixed mask
    seconds: float


def itk_matrix(to_fixed: np.ndarray) -> np.ndarray:
    """RAS moving→fixed world matrix → ITK's LPS fixed→moving point map."""
    return LPS @ np.linalg.inv(to_fixed) @ LPS


def world_matrix(itk: np.ndarray) -> np.ndarray:
    """ITK's LPS fixed→moving point map → RAS moving→fixed world matrix."""
    return np.linalg.inv(LPS @ itk @ LPS)


def write_itk_transform(to_fixed: np.ndarray, path: Path) -> Path:
    """Write ``to_fixed`` as an ITK ``.mat`` (ANTs resampling convention), atomically."""
    import ants

    itk = itk_matrix(to_fixed)
    tx = ants.create_ants_transform(transform_type="AffineTransform", precision="float",
                                    dimension=3, matrix=itk[:3, :3],
                                    translation=itk[:3, 3], center=np.zeros(3))
    with atomic_path(path) as tmp:
        ants.write_transform(tx, str(tmp))
    return Path(path)


def read_itk_transform(path: Path) -> np.ndarray:
    """Read an ITK/ANTs linear ``.mat`` as a RAS moving→fixed world matrix."""
    import ants

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: transform file not found")
    tx = ants.read_transform(str(path))
    points = np.vstack([np.zeros(3), np.eye(3)])
    mapped = np.array([tx.apply_to_point(tuple(p)) for p in points])
    itk = np.eye(4)
    itk[:3, 3] = mapped[0]
    itk[:3, :3] = (mapped[1:] - mapped[0]).T
    return world_matrix(itk)


def compose(*to_fixed: np.ndarray) -> np.ndarray:
    """``compose(b_to_c, a_to_b)`` = a → c (applied right to left, like matrices)."""
    out = np.eye(4)
    for matrix in to_fixed:
        out = out @ matrix
    return out


def apply_rigid(moving: nib.Nifti1Image, reference: nib.Nifti1Image, to_fixed: np.ndarray,
                order: int = 1) -> nib.Nifti1Image:
    """Resample ``moving`` onto ``reference``'s grid through ``to_fixed`` (float32)."""
    data = resample_array(np.asarray(moving.dataobj, np.float32), moving.affine,
                          reference.affine, reference.shape[:3], order=order, world=to_fixed)
    return nib.Nifti1Image(data, reference.affine)


def _correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    x, y = a[mask].astype(np.float64), b[mask].astype(np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def coarse_grid(image: nib.Nifti1Image, voxel_mm: float,
                mask: nib.Nifti1Image | None = None
                ) -> tuple[nib.Nifti1Image, nib.Nifti1Image | None]:
    """``image`` (and ``mask``) resampled to about ``voxel_mm`` voxels, anti-aliased.

    The grid keeps ``image``'s axes and field of view; axes already coarser
    than ``voxel_mm`` are left alone.
    """
    voxel = np.linalg.norm(image.affine[:3, :3], axis=0)
    factor = np.maximum(voxel_mm / voxel, 1.0)
    if np.all(factor < 1.05):
        return image, mask
    shape = tuple(int(np.ceil(n / f)) for n, f in zip(image.shape[:3], factor, strict=True))
    affine = image.affine @ np.diag([*factor, 1.0])
    # the new voxel centres sit at the centres of the blocks they stand for
    affine[:3, 3] = nib.affines.apply_affine(image.affine, (factor - 1.0) / 2.0)
    sigma = np.where(factor > 1.0, 0.42 * np.sqrt(factor**2 - 1.0), 0.0)
    data = ndimage.gaussian_filter(np.asarray(image.dataobj, np.float32), sigma)
    coarse = nib.Nifti1Image(resample_array(data, image.affine, affine, shape, order=1), affine)
    if mask is None:
        return coarse, None
    m = resample_array(np.asarray(mask.dataobj, np.float32), mask.affine, affine, shape, order=1)
    return coarse, nib.Nifti1Image((m >= 0.5).astype(np.uint8), affine)


@contextlib.contextmanager
def _ants_seed(seed: int) -> Iterator[None]:
    """Seed ANTs' metric sampling for reproducible registrations, restored afterwards."""
    import ants

    saved = ants.config._random_seed
    ants.config._random_seed = seed
    try:
        yield
    finally:
        ants.config._random_seed = saved


def register_rigid(fixed: nib.Nifti1Image, moving: nib.Nifti1Image, cfg: PreprocConfig,
                   threads: int = 1, work: Path | None = None,
                   fixed_mask: nib.Nifti1Image | None = None,
                   metric: str | None = None, seed: int = 42,
                   levels: tuple[tuple[int, ...], tuple[float, ...], tuple[int, ...]] | None = None,
                   transform: str = "Rigid") -> RigidFit:
    """Rigid registration of ``moving`` to ``fixed`` (ANTs, multi-resolution).

    Initialised by aligning the intensity centres of mass; then a rigid stage
    per ``cfg.registration_shrink`` level (shrink factor, smoothing sigma in
    voxels, iterations; ``levels`` overrides the three) with the ``cfg.registration_metric`` metric
    (``mattes`` mutual information by default) on a ``registration_sampling``
    fraction of voxels (sampled with a fixed ``seed``: reproducible). The
    fixed and moving images are first resampled (anti-aliased) to
    ``registration_voxel_mm`` (2 mm): at this resolution rigid accuracy stays
    well below 1 mm / 1° and the cost drops several-fold. The fitted transform is then applied at full resolution.
    ``transform="Affine"`` fits 12 degrees of freedom instead (see :func:`register_affine`).

    Returns
    -------
    RigidFit
        ``to_fixed`` maps moving world (RAS mm) to fixed world coordinates.
    """
    import ants

    set_threads(threads)
    start = time.perf_counter()
    if levels is None:
        levels = (cfg.registration_shrink, cfg.registration_smoothing,
                  cfg.registration_iterations)
    shrink, smoothing, iterations = levels
    if len({len(v) for v in levels}) != 1:
        raise ValueError("registration_shrink, _smoothing and _iterations need one entry per level")
    coarse, coarse_mask = coarse_grid(fixed, float(cfg.registration_voxel_mm), fixed_mask)
    # ANTs smooths the whole moving image at every level: give it the same 2 mm copy
    moving_coarse, _ = coarse_grid(moving, float(cfg.registration_voxel_mm))
    folder = Path(tempfile.mkdtemp(prefix="rigid-", dir=work))
    try:
        with _ants_seed(seed):
            result = ants.registration(
                fixed=to_ants(coarse), moving=to_ants(moving_coarse), type_of_transform=transform,
                aff_metric=metric or cfg.registration_metric, aff_sampling=32,
                aff_random_sampling_rate=float(cfg.registration_sampling),
                aff_iterations=tuple(int(i) for i in iterations),
                aff_shrink_factors=tuple(int(s) for s in shrink),
                aff_smoothing_sigmas=tuple(float(s) for s in smoothing),
                outprefix=str(folder / "x_"))
        to_fixed = read_itk_transform(Path(result["fwdtransforms"][0]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # similarity for QC, on the coarse grid (cheap)
    fixed_data = np.asarray(coarse.dataobj, np.float32)
    warped = resample_array(np.asarray(moving_coarse.dataobj, np.float32), moving_coarse.affine,
                            coarse.affine, coarse.shape[:3], order=1, world=to_fixed)
    mask = (np.asarray(coarse_mask.dataobj) > 0) if coarse_mask is not None else fixed_data > 0
    fit = RigidFit(to_fixed, _correlation(fixed_data, warped, mask), time.perf_counter() - start)
    log.debug("%s registration: r=%.3f in %.1f s", transform, fit.correlation, fit.seconds)
    return fit


def register_affine(fixed: nib.Nifti1Image, moving: nib.Nifti1Image, cfg: PreprocConfig,
                    threads: int = 1, work: Path | None = None,
                    fixed_mask: nib.Nifti1Image | None = None) -> RigidFit:
    """Affine (12 dof) registration, same grids and levels as :func:`register_rigid`.

    Used only to place the Centiloid VOIs on a subject (head size and shape); the
    network's inputs stay rigid. ``to_fixed`` is then a general 4x4 linear map.
    """
    return register_rigid(fixed, moving, cfg, threads=threads, work=work,
                          fixed_mask=fixed_mask, transform="Affine")


def pose_error(estimated: np.ndarray, truth: np.ndarray,
               centre: np.ndarray | None = None) -> tuple[float, float]:
    """Rotation (degrees) and translation (mm at ``centre``) between two rigid maps.

    Both are 4x4 world matrices in the same direction (e.g. native → template);
    ``centre`` is a point in the source space (e.g. the brain centroid); the
    translation error is the distance between where the two matrices send it.
    """
    delta = estimated @ np.linalg.inv(truth)
    cos = (np.trace(delta[:3, :3]) - 1.0) / 2.0
    angle = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    point = np.append(np.zeros(3) if centre is None else np.asarray(centre, float), 1.0)
    shift = float(np.linalg.norm((estimated @ point)[:3] - (truth @ point)[:3]))
    return angle, shift
