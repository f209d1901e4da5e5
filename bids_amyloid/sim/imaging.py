"""Image formation of the simulator: MRI contrasts and dynamic amyloid PET from tissue fractions."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from bids_amyloid.centiloid import SUVREquation, get_equation
from bids_amyloid.sim.anatomy import Anatomy, Morphology, build_anatomy
from bids_amyloid.sim.geometry import (
    Pose,
    bias_field,
    random_pose,
    rician,
    rotation_angle_deg,
    sample,
)

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
#: Blood flow per tissue (relative to grey matter): the pattern of the early frames.
PERFUSION: dict[str, float] = {"gm": 1.0, "wm": 0.35, "csf": 0.05, "bone": 0.1, "marrow": 0.25,
                               "scalp": 0.3, "fat": 0.1}
#: Scanner resolution of the PET (FWHM, mm) before sampling.
PET_FWHM_MM = 6.0
#: Dynamic acquisition from injection to 70 min: frames of increasing length, then
#: 4 x 5 min from 50 min (the late frames: the Centiloid windows of PiB and AV45).
PET_FRAMES_S: tuple[int, ...] = (60, 60, 120, 120, 240, 600, 600, 1200, 300, 300, 300, 300)
LATE_START_S = 3000.0
PERFUSION_END_MIN = 45.0  # the perfusion share of a frame reaches 0 here


#: The app's published equation (bids_amyloid.centiloid) the simulator uses per tracer.
SIM_EQUATIONS = {"PIB": "pib-klunk2015", "AV45": "av45-navitsky2018"}


def _equation(tracer: str) -> SUVREquation:
    if tracer not in SIM_EQUATIONS:
        raise ValueError(f"no Centiloid equation for tracer {tracer!r}")
    return get_equation(SIM_EQUATIONS[tracer])


def suvr_from_centiloid(centiloid: float, tracer: str) -> float:
    """Cortex/whole-cerebellum SUVR for a Centiloid value: the inverse of :func:`centiloid_from_suvr`."""
    eq = _equation(tracer)
    return (centiloid - eq.intercept) / eq.slope


def centiloid_from_suvr(suvr: float, tracer: str) -> float:
    """The app's standard-method equations (GAAIN VOIs, whole cerebellum), one table.

    PiB: CL = 100·(SUVR − 1.009)/1.067 (Klunk et al. 2015); AV45: CL = 175.4·SUVR
    − 182.3 (Navitsky et al. 2018); see :mod:`bids_amyloid.centiloid`.
    """
    return _equation(tracer).to_centiloid(suvr)


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


def perfusion_volume(anat: Anatomy, morph: Morphology, activity: PETActivity) -> np.ndarray:
    """Early-frame tracer distribution: blood flow, grey-matter weighted.

    Scaled so its whole-cerebellum mean equals that of the late (amyloid) volume.
    """
    flow = mix(anat, morph, PERFUSION)
    scale = activity.volume[anat.cerebellum].mean() / flow[anat.cerebellum].mean()
    return flow * np.float32(scale)


def perfusion_weight(mid_minute: float) -> float:
    """Share of the perfusion pattern in a frame centred ``mid_minute`` after injection.

    1 at injection, falling to 0 at ``PERFUSION_END_MIN`` and 0 after it: frames
    from ``LATE_START_S`` on are the amyloid pattern alone (their SUVR is the truth).
    """
    return float(np.clip(1.0 - mid_minute / PERFUSION_END_MIN, 0.0, 1.0) ** 2)


def frame_poses(rng: np.random.Generator, pose: Pose, late: np.ndarray) -> list[Pose]:
    """Small rigid motion of each frame about the scan's pose.

    Early frames move up to 2 mm / 1°, late frames up to 1.5 mm / 0.75°; the late
    frames' translations are centred on the scan pose, so that pose stays the
    truth of their realigned mean.
    """
    deltas = [random_pose(rng, pose.centroid, pose.scale,
                          max_angle=0.75 if is_late else 1.0, max_shift=1.5 if is_late else 2.0)
              for is_late in late]
    centre = np.mean([d.translation for d, is_late in zip(deltas, late, strict=True) if is_late],
                     axis=0)
    return [Pose(rotation=d.rotation @ pose.rotation,
                 translation=pose.translation + d.translation - (centre if is_late else 0.0),
                 scale=pose.scale, centroid=pose.centroid)
            for d, is_late in zip(deltas, late, strict=True)]


def synth_pet(anat: Anatomy, morph: Morphology, activity: PETActivity, pose: Pose,
              affine: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator,
              level_bq_ml: float, durations_s: tuple[int, ...] = PET_FRAMES_S,
              ) -> tuple[np.ndarray, dict[str, float], dict[str, Any]]:
    """Dynamic PET (Bq/mL) from injection: perfusion → amyloid, frame motion, noise.

    Each frame is ``gain · (w · perfusion + (1 − w) · amyloid)`` with ``w`` from
    :func:`perfusion_weight` at the frame's middle, blurred by the scanner, seen
    through its own pose (:func:`frame_poses`), with spatially correlated noise
    whose level grows as the frame shortens. Returns the 4D data, the noise
    parameters and the frame truth (times, which frames are late, motion).
    """
    durations = np.asarray(durations_s, float)
    starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    late = starts >= LATE_START_S
    sigma_vox = PET_FWHM_MM / 2.3548 / anat.voxel_mm
    amyloid = ndimage.gaussian_filter(activity.volume, sigma_vox)
    perfusion = ndimage.gaussian_filter(perfusion_volume(anat, morph, activity), sigma_vox)
    noise = float(rng.uniform(0.06, 0.12))
    poses = frame_poses(rng, pose, late)
    frames, weights = [], []
    for k, (start, duration) in enumerate(zip(starts, durations, strict=True)):
        w = perfusion_weight((start + duration / 2.0) / 60.0)
        gain = np.float32(level_bq_ml * (1.0 + 1.5 * w) * (1.0 - 0.0005 * start / 60.0
                                                           + rng.normal(0.0, 0.005)))
        volume = amyloid if w == 0.0 else np.float32(w) * perfusion + np.float32(1 - w) * amyloid
        clean = sample(volume, anat.affine, poses[k], affine, shape) * gain
        field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.8)
        field /= np.float32(field.std() + 1e-6)
        std = np.float32(noise * np.sqrt(300.0 / duration)) * np.sqrt(
            np.maximum(clean, 0.0) * np.float32(level_bq_ml))
        frames.append(np.maximum(clean + field * std, 0.0))
        weights.append(round(w, 5))
    truth = {
        "frame_start_s": starts.tolist(), "frame_duration_s": durations.tolist(),
        "late_frames": [int(i) for i in np.flatnonzero(late)], "perfusion_weight": weights,
        "frame_native_to_template": [np.linalg.inv(q.rigid).round(8).tolist() for q in poses],
        "frame_motion_deg": [round(rotation_angle_deg(q.rotation @ pose.rotation.T), 4)
                             for q in poses],
        "frame_motion_mm": [round(float(np.linalg.norm(q.translation - pose.translation)), 4)
                            for q in poses],
    }
    return np.stack(frames, axis=-1).astype(np.float32), {"noise_fraction": noise}, truth
