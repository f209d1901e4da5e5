"""Accuracy of the preprocessing chain against the simulator's ground truth.

On a 2-subject ``small`` simulated cohort, with the default protocol (N4,
HD-BET with test-time augmentation, rigid registration):

- MRI pose: rotation error < 1° and translation error < 1 mm at the brain
  centroid against the known native → template pose;
- brain mask Dice ≥ 0.95 against the true mask on the native grid;
- PET (dynamic, 0–70 min): the late window's frames are used; cortical SUVR
  (GAAIN ctx VOI placed on the subject) vs simulated Centiloid,
  Pearson r ≥ 0.9 per tracer, and over all scans once each SUVR is put on the
  Centiloid scale with its tracer's published equation. Two subjects give two PET scans, too few for a
  correlation, so more PET scans of the same two heads are simulated (both
  tracers, Centiloid −10…110, fresh poses) with the simulator's own functions
  and processed through the subjects' preprocessed T1w.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_amyloid.config import PreprocConfig

pytestmark = pytest.mark.slow

CFG = PreprocConfig()
EXTRA_PET = ((-5.0, "PIB"), (20.0, "AV45"), (45.0, "PIB"), (70.0, "AV45"), (100.0, "PIB"),
             (110.0, "AV45"), (5.0, "AV45"), (85.0, "PIB"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bids_amyloid.simulate import simulate_cohort

    return simulate_cohort(tmp_path_factory.mktemp("sim") / "bids", 2, seed=7, size="small")


def _truth(root: Path, image: Path) -> dict:
    from bids_amyloid.sim.writer import truth_paths

    return json.loads(truth_paths(root, image)[0].read_text())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def mri_results(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """First T1w session of each subject, preprocessed with the default protocol."""
    from bids_amyloid.preproc.mri import preprocess_mri_session

    work = tmp_path_factory.mktemp("work")
    results = {}
    for sub in sorted(p.name for p in cohort.glob("sub-*") if p.is_dir()):
        t1 = sorted(cohort.glob(f"{sub}/ses-*/anat/{sub}_ses-*_T1w.nii.gz"))[0]
        results[sub] = (t1, preprocess_mri_session({"T1w": t1}, CFG, work / sub, threads=2)["T1w"])
    return results


def test_mri_pose_and_brain_mask(cohort: Path, mri_results: dict) -> None:
    from bids_amyloid.preproc.register import pose_error
    from bids_amyloid.sim.writer import truth_paths

    for t1, result in mri_results.values():
        truth = _truth(cohort, t1)
        angle, shift = pose_error(result.to_template, np.array(truth["native_to_template"]),
                                  np.array(truth["centroid_native"]))
        assert angle < 1.0, f"{t1.name}: rotation error {angle:.2f}°"
        assert shift < 1.0, f"{t1.name}: translation error {shift:.2f} mm"
        true_mask = np.asarray(nib.load(truth_paths(cohort, t1)[1]).dataobj) > 0
        ours = np.asarray(result.native_mask.dataobj) > 0
        assert ours.shape == true_mask.shape
        assert _dice(ours, true_mask) >= 0.95, f"{t1.name}: Dice {_dice(ours, true_mask):.3f}"
        # outputs on the template grid, normalised
        assert result.mni_image.shape == (197, 233, 189)
        data = np.asarray(result.mni_image.dataobj)
        assert data.min() >= 0.0 and data.max() <= 1.0
        assert result.metrics["template_correlation"] > 0.5


def _extra_pet(head_scale: float, centiloid: float, tracer: str, seed: int,
               folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """One more simulated PET of a subject's head: (path, native→template truth, centroid)."""
    from bids_amyloid.sim.anatomy import apply_atrophy, build_anatomy
    from bids_amyloid.sim.geometry import native_grid, random_pose
    from bids_amyloid.sim.imaging import (
        PET_FRAMES_S,
        pet_activity,
        suvr_from_centiloid,
        synth_pet,
    )
    from bids_amyloid.sim.writer import pet_sidecar

    rng = np.random.default_rng(seed)
    anat = build_anatomy(2)
    morph = apply_atrophy(anat, 0.0, 0.0)
    activity = pet_activity(anat, morph, tracer, suvr_from_centiloid(centiloid, tracer))
    pose = random_pose(rng, anat.centroid, head_scale)
    idx = np.argwhere(anat.brain)
    corners = np.array([[a, b, c, 1.0] for a in (idx[:, 0].min(), idx[:, 0].max())
                        for b in (idx[:, 1].min(), idx[:, 1].max())
                        for c in (idx[:, 2].min(), idx[:, 2].max())])
    points = (pose.full @ anat.affine @ corners.T).T[:, :3]
    affine, shape = native_grid(points, "LPS", (4.0, 4.0, 4.0), 25.0)
    data, _, _ = synth_pet(anat, morph, activity, pose, affine, shape, rng, 6000.0)
    path = folder / f"extra-{seed}_trc-{tracer}_pet.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(
        json.dumps(pet_sidecar(tracer, PET_FRAMES_S, 1.0)))
    centroid = (pose.rigid @ np.append(pose.centroid, 1.0))[:3]
    return path, np.linalg.inv(pose.rigid), centroid


def test_pet_suvr_tracks_centiloid(cohort: Path, mri_results: dict,
                                   tmp_path: Path) -> None:
    from bids_amyloid.preproc.pet import preprocess_pet
    from bids_amyloid.preproc.register import pose_error
    from bids_amyloid.sim.imaging import centiloid_from_suvr

    scans = []  # (path, subject, centiloid, truth matrix, centroid)
    for pet in sorted(cohort.glob("sub-*/ses-*/pet/*_pet.nii.gz")):
        truth = _truth(cohort, pet)
        scans.append((pet, pet.name.split("_")[0], truth["centiloid"],
                       np.array(truth["native_to_template"]), np.array(truth["centroid_native"])))
    subjects = sorted(mri_results)
    for k, (cl, tracer) in enumerate(EXTRA_PET):
        sub = subjects[k % len(subjects)]
        scale = _truth(cohort, mri_results[sub][0])["head_scale"]
        path, matrix, centroid = _extra_pet(scale, cl, tracer, 100 + k, tmp_path)
        scans.append((path, sub, cl, matrix, centroid))

    suvrs, centiloids, measured = [], [], []
    for path, sub, cl, matrix, centroid in scans:
        result = preprocess_pet(path, mri_results[sub][1], CFG, tmp_path / "work", threads=2)
        angle, shift = pose_error(result.to_template, matrix, centroid)
        # 4 mm PET voxels, 6 mm scanner blur: a little looser than the MRI criterion
        assert angle < 1.5 and shift < 1.5, f"{path.name}: PET pose {angle:.2f}°, {shift:.2f} mm"
        # dynamic scans: the late window's 4 frames, realigned
        assert result.frames["FramesUsed"] == ([8, 9] if "AV45" in path.name else [8, 9, 10, 11])
        assert result.frames["FrameWindowFlag"] is None
        suvrs.append(result.metrics["cortical_suvr"])  # GAAIN ctx placed on the subject
        centiloids.append(cl)
        # PiB and AV45 SUVRs live on different scales: the published tracer
        # equations (Klunk 2015; Navitsky 2018) put both on the Centiloid scale
        measured.append(centiloid_from_suvr(suvrs[-1], "PIB" if "PIB" in path.name else "AV45"))
        assert result.reference_mean > 0
    assert len(suvrs) >= 8
    r = float(np.corrcoef(measured, centiloids)[0, 1])
    assert r >= 0.9, f"cortical SUVR (as Centiloid) vs simulated Centiloid r = {r:.3f}"
    for tracer in ("PIB", "AV45"):
        rows = [i for i, (p, *_rest) in enumerate(scans) if tracer in p.name]
        r_tracer = float(np.corrcoef([suvrs[i] for i in rows], [centiloids[i] for i in rows])[0, 1])
        assert r_tracer >= 0.9, f"{tracer}: cortical SUVR vs Centiloid r = {r_tracer:.3f}"
