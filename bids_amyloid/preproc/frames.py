"""Dynamic PET: the frames of the tracer's late window, realigned, then averaged.

Centiloid SUVRs are defined on a tracer-specific late window after injection
(Klunk et al. 2015, and the tracer calibration papers; ``PreprocConfig.pet_windows``):
early frames follow perfusion, not amyloid, and must not enter the SUVR image.

- A frame is used when at least half of it lies inside the window (its
  midpoint is inside); the window counts as covered when the used frames fill
  at least ``MIN_WINDOW_COVERAGE`` of it. Frame times are ``FrameTimesStart`` −
  ``InjectionStart`` (seconds after injection; BIDS times are from ``TimeZero``).
- A 3D PET is used as it is (it was averaged by the site: nothing to select).
- A 4D PET without usable timing, or whose frames do not cover the window, is
  handled by ``pet_window_policy``: ``"fail"`` refuses it; ``"average-available"``
  averages the frames inside the window (or, without timing, all frames), logs a
  warning and sets a QC flag. A 4D PET with timing and no frame in the window
  always fails (early frames are not an amyloid image).
- The used frames are rigidly realigned (ANTs) to their duration-weighted mean,
  then averaged with the same weights; per-frame motion (translation at the
  image's centre of mass, rotation angle) is reported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_amyloid.config import PreprocConfig
from bids_amyloid.errors import InputDataError
from bids_amyloid.preproc.register import pose_error, register_rigid
from bids_amyloid.preproc.template import resample_array
from bids_amyloid.tracers import normalise_tracer

log = logging.getLogger(__name__)

MIN_WINDOW_COVERAGE = 0.95  # the used frames must fill this fraction of the window
POLICIES = ("fail", "average-available")
# frame realignment: 2 mm grid, two levels (PET frames carry little fine structure)
REALIGN_LEVELS = ((2, 1), (1.0, 0.0), (60, 20))


@dataclass
class FrameSelection:
    """Which frames make the SUVR image, and why."""

    n_frames: int
    used: list[int]
    weights: np.ndarray  # duration weights of the used frames (sum 1)
    tracer: str | None = None
    window_min: tuple[float, float] | None = None  # minutes after injection
    coverage: float | None = None  # fraction of the window the used frames fill
    flag: str | None = None  # why the window could not be honoured (None: it was)


@dataclass
class FrameAverage:
    """The averaged image and how it was made (for the sidecar and the QC page)."""

    image: nib.Nifti1Image
    selection: FrameSelection
    motion: list[tuple[float, float]] = field(default_factory=list)  # (mm, deg) per used frame
    transforms: list[np.ndarray] = field(default_factory=list)  # used frame world → mean world

    @property
    def max_translation_mm(self) -> float:
        return max((m[0] for m in self.motion), default=0.0)

    @property
    def max_rotation_deg(self) -> float:
        return max((m[1] for m in self.motion), default=0.0)

    def metadata(self) -> dict[str, object]:
        """JSON-ready description (sidecar ``FramesUsed`` etc. and the QC page)."""
        sel = self.selection
        return {
            "NumberOfFrames": sel.n_frames, "FramesUsed": sel.used,
            "FrameWindowMinutes": list(sel.window_min) if sel.window_min else None,
            "FrameWindowCoverage": None if sel.coverage is None else round(sel.coverage, 4),
            "FrameWindowFlag": sel.flag,
            "FrameMotionTranslationMM": [round(m[0], 3) for m in self.motion],
            "FrameMotionRotationDeg": [round(m[1], 3) for m in self.motion],
        }


def read_timing(sidecar: Path | None) -> tuple[dict[str, object], str | None]:
    """The PET sidecar's fields (empty without a sidecar) and its canonical tracer, if any."""
    if sidecar is None or not sidecar.is_file():
        return {}, None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputDataError(f"{sidecar}: unreadable PET sidecar ({err})") from err
    tracer = None
    if isinstance(meta.get("TracerName"), str):
        try:
            tracer = normalise_tracer(meta["TracerName"])
        except ValueError:
            tracer = None
    return meta, tracer


def _frame_times(meta: dict[str, object], n_frames: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Frame starts (s after injection) and durations, or None when missing or unusable."""
    starts, durations = meta.get("FrameTimesStart"), meta.get("FrameDuration")
    if not (isinstance(starts, list) and isinstance(durations, list)):
        return None
    if len(starts) != n_frames or len(durations) != n_frames:
        return None
    try:
        s = np.asarray(starts, float)
        d = np.asarray(durations, float)
        injection = float(meta.get("InjectionStart", 0.0) or 0.0)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(d)) and np.all(d > 0)):
        return None
    return s - injection, d


def select_frames(meta: dict[str, object], n_frames: int, tracer: str | None,
                  cfg: PreprocConfig, source: str = "PET") -> FrameSelection:
    """Frames of the tracer's window (see the module docstring for every case).

    Raises
    ------
    InputDataError
        The window cannot be honoured and ``pet_window_policy`` is ``"fail"``,
        or no frame lies in the window at all.
    """
    policy = cfg.pet_window_policy
    if policy not in POLICIES:
        raise ValueError(f"pet_window_policy must be one of {POLICIES}, not {policy!r}")
    if n_frames == 1:
        return FrameSelection(1, [0], np.ones(1), tracer)
    window = cfg.pet_windows.get(tracer) if tracer else None
    times = _frame_times(meta, n_frames)
    if times is None or window is None:
        why = (f"no usable FrameTimesStart/FrameDuration for its {n_frames} frames"
               if times is None else f"no frame window configured for tracer {tracer}")
        return _fallback(n_frames, tracer, window, _durations(meta, n_frames), why, policy,
                         source)
    starts, durations = times
    lo, hi = 60.0 * window[0], 60.0 * window[1]
    overlap = np.clip(np.minimum(starts + durations, hi) - np.maximum(starts, lo), 0.0, None)
    used = [int(i) for i in np.flatnonzero(overlap >= 0.5 * durations)]
    coverage = float(overlap[used].sum() / (hi - lo)) if used else 0.0
    span = f"{window[0]:g}–{window[1]:g} min"
    if not used:
        raise InputDataError(
            f"{source}: none of its {n_frames} frames ({starts.min() / 60:.1f}–"
            f"{(starts + durations).max() / 60:.1f} min after injection) lies in the "
            f"{tracer} window {span}; early frames follow perfusion, not amyloid")
    weights = durations[used] / durations[used].sum()
    selection = FrameSelection(n_frames, used, weights, tracer, (window[0], window[1]), coverage)
    if coverage >= MIN_WINDOW_COVERAGE:
        return selection
    message = (f"{source}: the frames cover only {coverage:.0%} of the {tracer} window {span}")
    if policy == "fail":
        raise InputDataError(f"{message}; set pet_window_policy = \"average-available\" to "
                             "average the frames that exist, or adjust pet_windows")
    log.warning("%s; averaging the %d frame(s) inside it (pet_window_policy)", message, len(used))
    selection.flag = f"window {span} covered {coverage:.0%}"
    return selection


def _durations(meta: dict[str, object], n_frames: int) -> np.ndarray | None:
    """``FrameDuration`` when it fits the frames (positive, one per frame), else None."""
    durations = meta.get("FrameDuration")
    if not isinstance(durations, list) or len(durations) != n_frames:
        return None
    try:
        d = np.asarray(durations, float)
    except (TypeError, ValueError):
        return None
    return d if np.all(np.isfinite(d)) and np.all(d > 0) else None


def _fallback(n_frames: int, tracer: str | None, window: tuple[float, float] | None,
              durations: np.ndarray | None, why: str, policy: str,
              source: str) -> FrameSelection:
    """4D PET whose window cannot be located: refuse, or average every frame with a flag.

    The average is weighted by ``FrameDuration`` when the sidecar has it, else equal.
    """
    if policy == "fail":
        raise InputDataError(f"{source}: 4D PET with {why}: cannot select the late frames; set "
                             "pet_window_policy = \"average-available\" to average all frames")
    log.warning("%s: 4D PET with %s: averaging all %d frames (pet_window_policy); "
                "early frames, if any, bias the SUVR", source, why, n_frames)
    weights = np.full(n_frames, 1.0) if durations is None else durations
    return FrameSelection(n_frames, list(range(n_frames)), weights / weights.sum(),
                          tracer, window, None, f"all frames averaged: {why}")


def _weighted_mean(frames: list[np.ndarray], weights: np.ndarray,
                   covers: list[np.ndarray] | None = None) -> np.ndarray:
    total = np.zeros(frames[0].shape, np.float32)
    norm = np.zeros(frames[0].shape, np.float32) if covers is not None else None
    for k, (frame, w) in enumerate(zip(frames, weights, strict=True)):
        total += np.float32(w) * frame
        if norm is not None and covers is not None:
            norm += np.float32(w) * covers[k]
    if norm is None:
        return total
    # voxels a moved frame does not reach are averaged over the frames that do
    return np.where(norm > 1e-3, total / np.maximum(norm, 1e-3), 0.0).astype(np.float32)


def realign_and_average(image: nib.Nifti1Image, selection: FrameSelection, cfg: PreprocConfig,
                        threads: int = 1, work: Path | None = None,
                        realign: bool = True) -> FrameAverage:
    """Rigidly realign the selected frames to their weighted mean, then average them.

    ``realign=False`` averages without moving the frames (for comparison).
    """
    data = np.asarray(image.dataobj, np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 3:
        return FrameAverage(nib.Nifti1Image(data, image.affine), selection)
    if data.ndim != 4:
        raise ValueError(f"PET must be 3D or 4D, got shape {data.shape}")
    frames = [np.ascontiguousarray(data[..., i]) for i in selection.used]
    del data
    mean = _weighted_mean(frames, selection.weights)
    if not realign or len(frames) == 1:
        return FrameAverage(nib.Nifti1Image(mean, image.affine), selection,
                            [(0.0, 0.0)] * len(frames) if realign else [],
                            [np.eye(4)] * len(frames) if realign else [])
    reference = nib.Nifti1Image(mean, image.affine)
    centre = _centre_of_mass(mean, image.affine)
    moved, covers, motion, transforms = [], [], [], []
    ones = np.ones(mean.shape, np.float32)
    for frame in frames:
        fit = register_rigid(reference, nib.Nifti1Image(frame, image.affine), cfg,
                             threads=threads, work=work, metric="mattes", levels=REALIGN_LEVELS)
        moved.append(resample_array(frame, image.affine, image.affine, mean.shape, order=1,
                                    world=fit.to_fixed))
        covers.append(resample_array(ones, image.affine, image.affine, mean.shape, order=1,
                                     world=fit.to_fixed))
        angle, shift = pose_error(fit.to_fixed, np.eye(4), centre)
        motion.append((shift, angle))
        transforms.append(fit.to_fixed)
    average = _weighted_mean(moved, selection.weights, covers)
    log.info("realigned %d frames: max translation %.2f mm, max rotation %.2f°", len(frames),
             max(m[0] for m in motion), max(m[1] for m in motion))
    return FrameAverage(nib.Nifti1Image(average, image.affine), selection, motion, transforms)


def _centre_of_mass(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates of the intensity centre of mass (positive voxels)."""
    weights = np.clip(volume, 0.0, None).astype(np.float64)
    total = weights.sum()
    if total <= 0:
        centre = (np.asarray(volume.shape) - 1) / 2.0
    else:
        grids = np.indices(volume.shape, sparse=True)
        centre = np.array([(weights * g).sum() / total for g in grids])
    return nib.affines.apply_affine(affine, centre)
