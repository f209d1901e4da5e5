"""Dynamic PET: late-window frame selection, missing timing, 3D PET, frame realignment."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_amyloid.config import PreprocConfig
from bids_amyloid.errors import InputDataError
from bids_amyloid.preproc import frames, pet

CFG = PreprocConfig()
FAIL = dataclasses.replace(CFG, pet_window_policy="fail")


def _timing(starts_min: list[float], durations_min: list[float], injection_s: float = 0.0) -> dict:
    """BIDS timing of frames starting ``starts_min`` after an injection at ``injection_s``."""
    return {"FrameTimesStart": [injection_s + 60.0 * s for s in starts_min],
            "FrameDuration": [60.0 * d for d in durations_min], "InjectionStart": injection_s}


def test_pib_window_takes_the_frames_from_50_to_70_minutes() -> None:
    # 14 frames of 5 min from injection: PiB 50-70 min (Klunk 2015) is frames 10..13
    meta = _timing([5.0 * k for k in range(14)], [5.0] * 14)
    sel = frames.select_frames(meta, 14, "PIB", FAIL)
    assert sel.used == [10, 11, 12, 13]
    assert sel.window_min == (50.0, 70.0) and sel.coverage == pytest.approx(1.0)
    assert sel.flag is None and sel.weights == pytest.approx([0.25] * 4)
    # AV45 50-60 min: two of them
    assert frames.select_frames(meta, 14, "AV45", FAIL).used == [10, 11]


def test_window_edges_half_a_frame_and_injection_offset() -> None:
    # frames straddling the edges: a frame is used when at least half of it is inside
    meta = _timing([47.5, 52.5, 57.5, 62.5, 67.5, 72.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0])
    sel = frames.select_frames(meta, 6, "PIB", FAIL)
    assert sel.used == [0, 1, 2, 3, 4]  # 47.5-52.5 and 67.5-72.5 are half inside; 72-77 is out
    assert sel.coverage == pytest.approx(1.0)
    # times count from the injection, not from TimeZero: 2 min between them here (read
    # from TimeZero, these frames would be 52-72 min and cover only 90% of the window)
    late = _timing([50.0, 55.0, 60.0, 65.0], [5.0] * 4, injection_s=120.0)
    assert frames.select_frames(late, 4, "PIB", FAIL).used == [0, 1, 2, 3]
    # weights follow FrameDuration
    meta = _timing([50.0, 60.0], [10.0, 5.0])
    assert frames.select_frames(meta, 2, "PIB", CFG).weights == pytest.approx([2 / 3, 1 / 3])


def test_window_not_covered_fails_or_is_flagged() -> None:
    meta = _timing([40.0, 45.0, 50.0, 55.0], [5.0] * 4)  # OASIS-like PiB ending at 60 min
    with pytest.raises(InputDataError, match="cover only 50% of the PIB window 50–70 min"):
        frames.select_frames(meta, 4, "PIB", FAIL, source="x_pet.nii.gz")
    sel = frames.select_frames(meta, 4, "PIB", CFG)
    assert sel.used == [2, 3] and sel.flag == "window 50–70 min covered 50%"
    # the OASIS-3 PUP window (30-60) is a configuration choice
    pup = dataclasses.replace(FAIL, pet_windows={"PIB": (30.0, 60.0)})
    assert frames.select_frames(_timing([30.0 + 5 * k for k in range(6)], [5.0] * 6), 6,
                                "PIB", pup).used == list(range(6))
    # no frame in the window: always refused, whatever the policy
    with pytest.raises(InputDataError, match="none of its 3 frames"):
        frames.select_frames(_timing([0.0, 5.0, 10.0], [5.0] * 3), 3, "PIB", CFG)


def test_missing_timing_fails_or_averages_all_frames_with_a_flag() -> None:
    with pytest.raises(InputDataError, match="no usable FrameTimesStart"):
        frames.select_frames({}, 3, "PIB", FAIL)
    with pytest.raises(InputDataError, match="no usable FrameTimesStart"):  # wrong length
        frames.select_frames(_timing([50.0, 55.0], [5.0, 5.0]), 3, "PIB", FAIL)
    sel = frames.select_frames({"FrameDuration": [100, 100, 200]}, 3, "PIB", CFG)
    assert sel.used == [0, 1, 2] and sel.flag.startswith("all frames averaged")
    assert sel.weights == pytest.approx([0.25, 0.25, 0.5])  # by FrameDuration when known
    assert frames.select_frames({}, 4, "PIB", CFG).weights == pytest.approx([0.25] * 4)
    with pytest.raises(InputDataError, match="no frame window configured for tracer None"):
        frames.select_frames(_timing([50.0, 60.0], [10.0, 10.0]), 2, None, FAIL)


def _write(path: Path, data: np.ndarray, sidecar: dict | None) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    if sidecar is not None:
        Path(str(path).removesuffix(".nii.gz") + ".json").write_text(json.dumps(sidecar))
    return path


def test_3d_pet_is_used_as_it_is(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.uniform(1.0, 2.0, (8, 9, 10)).astype(np.float32)
    path = _write(tmp_path / "sub-1_trc-PIB_pet.nii.gz", data, None)  # no sidecar at all
    out = pet.load_pet(path, FAIL)
    np.testing.assert_array_equal(np.asarray(out.image.dataobj), data)
    assert out.selection.used == [0] and out.selection.flag is None and out.motion == []
    assert out.metadata()["NumberOfFrames"] == 1


def test_load_pet_averages_only_the_window(tmp_path: Path) -> None:
    # early frames 10x brighter (perfusion): they must not reach the average
    data = np.stack([np.full((6, 6, 6), v, np.float32) for v in (10.0, 10.0, 1.0, 3.0)], -1)
    sidecar = _timing([0.0, 20.0, 50.0, 60.0], [20.0, 30.0, 10.0, 10.0])
    path = _write(tmp_path / "sub-1_trc-PIB_pet.nii.gz", data, sidecar | {"TracerName": "PiB"})
    cfg = dataclasses.replace(FAIL, pet_realign=False)
    out = pet.load_pet(path, cfg)
    np.testing.assert_allclose(np.asarray(out.image.dataobj), 2.0)
    assert out.metadata()["FramesUsed"] == [2, 3]
    assert out.metadata()["FrameWindowMinutes"] == [50.0, 70.0]
    # the tracer comes from the file name when the sidecar does not say
    path2 = _write(tmp_path / "sub-1_trc-AV45_pet.nii.gz", data, sidecar)
    assert pet.load_pet(path2, cfg).metadata()["FramesUsed"] == [2]


def _phantom(shift_mm: np.ndarray, shape: tuple[int, int, int] = (40, 44, 36),
             voxel: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Analytic head-like volume (asymmetric blobs) moved by ``shift_mm`` (world mm)."""
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = -voxel * (np.asarray(shape) - 1) / 2.0
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = nib.affines.apply_affine(affine, ijk) - shift_mm
    blobs = ((0, 0, 0, 22, 1.0), (12, 8, -6, 7, 1.5), (-10, -14, 4, 6, 2.0),
             (4, -6, 14, 5, 1.2), (-14, 10, -10, 4, 2.5))
    vol = np.zeros(len(xyz))
    for cx, cy, cz, width, amp in blobs:
        vol += amp * np.exp(-((xyz - (cx, cy, cz)) ** 2).sum(1) / (2 * width**2))
    return vol.reshape(shape).astype(np.float32), affine


def test_realignment_recovers_a_known_shift() -> None:
    shift = np.array([3.0, -2.0, 1.5])
    still, affine = _phantom(np.zeros(3))
    moved, _ = _phantom(shift)
    data = np.stack([still, moved, still], axis=-1)
    sel = frames.FrameSelection(3, [0, 1, 2], np.full(3, 1 / 3), "PIB", (50.0, 70.0), 1.0)
    out = frames.realign_and_average(nib.Nifti1Image(data, affine), sel, CFG)
    # frame 1 → mean → frame 0 undoes the known shift
    rel = np.linalg.inv(out.transforms[0]) @ out.transforms[1]
    assert np.linalg.norm(rel[:3, 3] + shift) < 0.5, rel[:3, 3]
    assert frames.pose_error(rel, np.eye(4))[0] < 0.5
    assert out.max_translation_mm > 1.0  # the moved frame is reported
    # the realigned frames sit where the mean put them (a third of the shift): their average
    # is that head, unblurred, much closer to it than the plain average
    target, _ = _phantom(shift / 3.0)
    plain = data.mean(axis=-1)
    realigned = np.asarray(out.image.dataobj)
    assert np.abs(realigned - target).mean() < 0.5 * np.abs(plain - target).mean()


def test_flags_and_description_for_the_sidecar_and_qc_page() -> None:
    result = pet.PETResult(suvr_mni=nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)),
                           reference_mean=1.0)
    assert pet.pet_flags(result) == [] and pet.frames_description(result.frames) == \
        "3D image used as provided"
    result.frames = {"NumberOfFrames": 12, "FramesUsed": [8, 9, 10, 11],
                     "FrameWindowMinutes": [50.0, 70.0], "FrameWindowFlag": None,
                     "FrameMotionTranslationMM": [0.2, 5.5, 0.1, 0.3],
                     "FrameMotionRotationDeg": [0.1, 0.4, 0.2, 0.1]}
    assert pet.frames_description(result.frames) == \
        "frames 8–11 of 12 (50–70 min after injection) realigned and averaged"
    assert pet.pet_flags(result) == ["PET frame motion up to 5.5 mm / 0.4° (realigned): check "
                                     "the attenuation correction"]
    result.frames |= {"FrameMotionTranslationMM": [0.2] * 4,
                      "FrameWindowFlag": "window 50–70 min covered 50%"}
    assert pet.pet_flags(result) == ["PET frames: window 50–70 min covered 50%"]
    fields = pet.sidecar_fields(result, CFG)
    assert fields["FramesUsed"] == [8, 9, 10, 11] and "affine" in fields["CentiloidVOIPlacement"]
