"""Image formation of the simulator: MRI contrasts and amyloid PET from tissue fractions."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bids_amyloid.sim.anatomy import Anatomy, Morphology, build_anatomy
from bids_amyloid.sim.geometry import Pose, bias_field, rician, sample

#: Relative signal per tissue and contrast (GM, WM, CSF, bone, marrow, scalp, fat).
MRI_INTENSITY: dict[str, dict[str, float]] = {
    "T1w": {"gm": 0.55, "wm": 0.80, "csf": 0.15, "bone": 0.05, "marrow": 0.70, "scalp": 0.50,
            "fat": 0.95},
    "T2w": {"gm": 0.62, "wm": 0.45, "csf": 1.00, "bone": 0.04, "marrow": 0.50, "scalp": 0.35,
            "fat": 0.70},
    "FLAIR": {"gm": 0.62, "wm": 0.48, "csf": 0.08, "bone": 0.04, "marrow": 0.50, "scalp": 0.40,
              "fat": 0.75},
    "T2starw": {"gm": 0.55, "wm": 0.48, "csf": 0.80, "bone": 0.03, "marrow": 0.35,
                "scalp": 0.38, "fat": 0.60},
}
#: Non-specific PET uptake per tissue (relative to grey matter), by tracer.
PET_UPTAKE: dict[str, dict[str, float]] = {
    "AV45": {"gm": 1.0, "wm": 1.55, "csf": 0.15, "bone": 0.25, "marrow": 0.35, "scalp": 0.45,
             "fat": 0.20},
    "PIB": {"gm": 1.0, "wm": 1.35, "csf": 0.10, "bone": 0.20, "marrow": 0.30, "scalp": 0.35,
            "fat": 0.15},
}
#: Scanner resolution of the PET (FWHM, mm) before sampling.
PET_FWHM_MM = 6.0


def suvr_from_centiloid(centiloid: float, tracer: str) -> float:
    """Cortex/whole-cerebellum SUVR for a Centiloid value (inverse published equations).

    PiB: CL = 100·(SUVR − 1.009)/1.067 (Klunk et al. 2015, GAAIN standard pipeline).
    AV45: CL = 196.9·SUVR − 196.03 (Navitsky et al. 2018, whole-cerebellum reference).
    """
    if tracer == "PIB":
        return 1.009 + 1.067 * centiloid / 100.0
    if tracer == "AV45":
        return (centiloid + 196.03) / 196.9
    raise ValueError(f"no Centiloid equation for tracer {tracer!r}")


def centiloid_from_suvr(suvr: float, tracer: str) -> float:
    """The published Centiloid equations (see :func:`suvr_from_centiloid`)."""
    if tracer == "PIB":
        return 100.0 * (suvr - 1.009) / 1.067
    if tracer == "AV45":
        return 196.9 * suvr - 196.03
    raise ValueError(f"no Centiloid equation for tracer {tracer!r}")


def _tissues(anat: Anatomy, morph: Morphology) -> dict[str, np.ndarray]:
    return {"gm": morph.gm, "wm": morph.wm, "csf": morph.csf, "bone": anat.bone,
            "marrow": anat.marrow, "scalp": anat.scalp, "fat": anat.fat}


def mix(anat: Anatomy, morph: Morphology, values: dict[str, float]) -> np.ndarray:
    """Template-space image Σ tissue fraction × value."""
    out = np.zeros(anat.shape, dtype=np.float32)
    for name, frac in _tissues(anat, morph).items():
        out += np.float32(values[name]) * frac
    return out


@dataclass(frozen=True)
class MRIImage:
    data: np.ndarray   # int16 native grid
    mask: np.ndarray   # uint8 true brain mask, native grid


def synth_mri(anat: Anatomy, morph: Morphology, contrast: str, pose: Pose, affine: np.ndarray,
              shape: tuple[int, int, int], rng: np.random.Generator,
              jitter: float = 0.04) -> tuple[MRIImage, dict[str, float]]:
    """One MRI contrast on a native grid: tissue mix, pose, bias field, Rician noise, int16."""
    values = {k: v * float(rng.uniform(1 - jitter, 1 + jitter))
              for k, v in MRI_INTENSITY[contrast].items()}
    clean = sample(mix(anat, morph, values), anat.affine, pose, affine, shape)
    bias_strength = float(rng.uniform(0.08, 0.2))
    noise = float(rng.uniform(0.015, 0.04))
    gain = float(rng.uniform(900.0, 1600.0))
    signal = clean * bias_field(rng, shape, bias_strength) * np.float32(gain)
    noisy = rician(rng, signal, noise * gain * values["wm"])
    data = np.clip(np.rint(noisy), 0, 32767).astype(np.int16)
    mask = sample(anat.brain_float, anat.affine, pose, affine, shape) >= 0.5
    params = {"bias_strength": bias_strength, "noise_fraction": noise, "gain": gain}
    return MRIImage(data=data, mask=mask.astype(np.uint8)), params


@functools.lru_cache(maxsize=2)
def _amyloid_pattern_weight(voxel_mm: int) -> np.ndarray:
    """Where specific binding goes: cerebral GM, strongest in the GAAIN cortex VOI."""
    anat = build_anatomy(voxel_mm)
    ctx = ndimage.gaussian_filter(anat.ctx_voi.astype(np.float32), 3.0 / voxel_mm)
    return ((0.35 + 0.65 * np.clip(ctx / 0.5, 0.0, 1.0)) * ~anat.cerebellum).astype(np.float32)


@dataclass(frozen=True)
class PETActivity:
    volume: np.ndarray     # template space, relative to GM non-specific uptake
    suvr: float            # realised ctx / WhlCbl SUVR of the noise-free volume
    amplitude: float       # specific binding added to cortical GM


def pet_activity(anat: Anatomy, morph: Morphology, tracer: str, target_suvr: float) -> PETActivity:
    """Noise-free tracer distribution whose GAAIN ctx/WhlCbl SUVR equals ``target_suvr``."""
    base = mix(anat, morph, PET_UPTAKE[tracer])
    pattern = morph.gm * _amyloid_pattern_weight(int(anat.voxel_mm))
    ref = float(base[anat.cerebellum].mean())
    c0 = float(base[anat.ctx_voi].mean())
    p = float(pattern[anat.ctx_voi].mean())
    amplitude = (target_suvr * ref - c0) / p
    if amplitude <= -0.9 * PET_UPTAKE[tracer]["gm"]:
        raise ValueError(f"SUVR {target_suvr:.3f} is below what the {tracer} model can produce")
    volume = base + np.float32(amplitude) * pattern
    suvr = float(volume[anat.ctx_voi].mean() / volume[anat.cerebellum].mean())
    return PETActivity(volume=volume, suvr=suvr, amplitude=float(amplitude))


def synth_pet(anat: Anatomy, activity: PETActivity, pose: Pose, affine: np.ndarray,
              shape: tuple[int, int, int], rng: np.random.Generator, n_frames: int,
              level_bq_ml: float) -> tuple[np.ndarray, dict[str, float]]:
    """4D PET (Bq/mL): scanner blur, pose, frame-wise washout and correlated noise."""
    sigma_vox = PET_FWHM_MM / 2.3548 / anat.voxel_mm
    blurred = ndimage.gaussian_filter(activity.volume, sigma_vox)
    clean = sample(blurred, anat.affine, pose, affine, shape) * np.float32(level_bq_ml)
    noise = float(rng.uniform(0.06, 0.12))
    frames = []
    for k in range(n_frames):
        drift = np.float32(1.0 - 0.012 * k + rng.normal(0.0, 0.005))
        field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.8)
        field /= np.float32(field.std() + 1e-6)
        std = np.float32(noise) * np.sqrt(np.maximum(clean, 0.0) * np.float32(level_bq_ml))
        frames.append(np.maximum(clean * drift + field * std, 0.0))
    return np.stack(frames, axis=-1).astype(np.float32), {"noise_fraction": noise}
