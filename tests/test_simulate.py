"""Tests of the synthetic cohort (bids_amyloid.simulate and bids_amyloid.sim)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_amyloid.sim.geometry import rotation_angle_deg
from bids_amyloid.sim.imaging import centiloid_from_suvr, suvr_from_centiloid
from bids_amyloid.sim.plan import plan_cohort, thinning, ventricle_growth
from bids_amyloid.sim.writer import truth_paths
from bids_amyloid.simulate import main, simulate_cohort

pytestmark = pytest.mark.xdist_group("simulate")  # one worker builds the shared cohort
VALIDATOR = Path(sys.executable).parent / "bids-validator-deno"
THRESHOLD = 20.6


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-subject small cohort shared by the tests of this module."""
    return simulate_cohort(tmp_path_factory.mktemp("sim") / "bids", 6, seed=11, size="small")


def _images(root: Path, pattern: str) -> list[Path]:
    return sorted(root.glob(f"sub-*/ses-*/*/{pattern}"))


def _sessions(root: Path) -> pd.DataFrame:
    frames = []
    for path in sorted(root.glob("sub-*/sub-*_sessions.tsv")):
        table = pd.read_csv(path, sep="\t", na_values="n/a")
        table["participant_id"] = path.parent.name
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def _days(label: str) -> int:
    match = re.fullmatch(r"ses-d(\d{4})", label)
    assert match, label
    return int(match.group(1))


def test_validator_reports_no_errors(cohort: Path) -> None:
    if not VALIDATOR.exists():
        pytest.skip("bids-validator-deno not installed")
    run = subprocess.run([str(VALIDATOR), "--format", "json", str(cohort)],
                         capture_output=True, text=True, timeout=300, check=False)
    report = json.loads(run.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == [], errors[:3]
    assert sorted(report["summary"]["subjects"]) == [f"{i:03d}" for i in range(1, 7)]


def test_layout_is_oasis_like(cohort: Path) -> None:
    participants = pd.read_csv(cohort / "participants.tsv", sep="\t")
    assert list(participants.columns) == ["participant_id", "age", "sex"]
    assert participants["participant_id"].str.fullmatch(r"sub-[A-Za-z0-9]+").all()
    assert participants["sex"].isin(["M", "F"]).all()
    sessions = _sessions(cohort)
    assert {"session_id", "acq_time", "centiloid", "tracer"} <= set(sessions.columns)
    for sub, table in sessions.groupby("participant_id"):
        dates = pd.to_datetime(table["acq_time"], format="%Y-%m-%dT%H:%M:%S")
        days = table["session_id"].map(_days)
        # acq_time and the day-offset labels agree
        assert ((dates.dt.normalize() - dates.dt.normalize().min()).dt.days == days).all(), sub
    pet = sessions[sessions["tracer"].notna()]
    mri = sessions[sessions["tracer"].isna()]
    assert pet["centiloid"].notna().all() and mri["centiloid"].isna().all()
    assert set(pet["tracer"]) == {"PIB", "AV45"}
    beyond = 0
    for _, row in pet.iterrows():
        same = mri[mri["participant_id"] == row["participant_id"]]
        gaps = (same["session_id"].map(_days) - _days(row["session_id"])).abs()
        assert (gaps > 0).all(), "MRI and PET on the same day"
        beyond += int(gaps.min() > 365)
    assert beyond >= 1, "no PET beyond 365 days from every MRI"
    for path in _images(cohort, "*_pet.nii.gz"):
        assert path.parent.name == "pet" and not (path.parent.parent / "anat").exists()
        trc = re.search(r"_trc-([A-Z0-9]+)_pet", path.name).group(1)
        ses = path.parent.parent.name
        row = pet[(pet["participant_id"] == path.parts[-4]) & (pet["session_id"] == ses)]
        assert row["tracer"].tolist() == [trc]


def test_pet_files_match_their_sidecars(cohort: Path) -> None:
    for path in _images(cohort, "*_pet.nii.gz"):
        img = nib.load(path)
        side = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert img.ndim == 4 and img.shape[3] == len(side["FrameDuration"]) == 12
        assert len(side["FrameTimesStart"]) == img.shape[3]
        # dynamic from the injection to 70 min, contiguous frames of growing then 5 min length
        starts, durations = np.array(side["FrameTimesStart"]), np.array(side["FrameDuration"])
        assert starts[0] == side["InjectionStart"] == 0
        np.testing.assert_array_equal(starts[1:], (starts + durations)[:-1])
        assert starts[-1] + durations[-1] == 70 * 60 and durations[0] < durations[7]
        assert 3.0 <= min(img.header.get_zooms()[:3]) <= 4.5
        assert side["TracerRadionuclide"] in {"C11", "F18"}
        data = np.asarray(img.dataobj)
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() > 1000


def test_ground_truth_is_consistent(cohort: Path) -> None:
    from nilearn.datasets import load_mni152_brain_mask

    template = load_mni152_brain_mask(resolution=2)
    inside_template = np.asarray(template.dataobj) > 0.5
    sessions = _sessions(cohort)
    images = _images(cohort, "*.nii.gz")
    assert len(images) > 20
    for image in images:
        truth_json, truth_mask = truth_paths(cohort, image)
        truth = json.loads(truth_json.read_text())
        mask_img = nib.load(truth_mask)
        assert mask_img.shape == nib.load(image).shape[:3]
        np.testing.assert_allclose(mask_img.affine, nib.load(image).affine, atol=1e-4)
        to_template = np.array(truth["native_to_template"])
        rot = to_template[:3, :3]
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-6)
        assert 0.85 < truth["head_scale"] < 1.15
        idx = np.argwhere(np.asarray(mask_img.dataobj) > 0)
        world = mask_img.affine @ np.c_[idx, np.ones(len(idx))].T
        # the true mask's centroid is the recorded brain centroid
        np.testing.assert_allclose(world[:3].mean(axis=1), truth["centroid_native"], atol=1.0)
        # ... and it maps into the template brain under native_to_template
        vox = np.rint(np.linalg.inv(template.affine) @ to_template @ world)[:3].astype(int)
        assert inside_template[vox[0], vox[1], vox[2]].mean() > 0.8, image.name
        mapped = to_template @ np.append(truth["centroid_native"], 1.0)
        np.testing.assert_allclose(mapped[:3], truth["centroid_template"], atol=1e-3)
        if image.name.endswith("_pet.nii.gz"):
            cl = centiloid_from_suvr(truth["cortical_suvr"], truth["tracer"])
            assert cl == pytest.approx(truth["centiloid"], abs=0.05)
            row = sessions[(sessions["participant_id"] == image.parts[-4])
                           & (sessions["session_id"] == image.parts[-3])]
            assert row["centiloid"].item() == pytest.approx(truth["centiloid"])
    parameters = pd.read_csv(cohort / "sourcedata/simulation/parameters.tsv", sep="\t")
    assert len(parameters) == len(sessions)


def test_labels_are_balanced(cohort: Path) -> None:
    sessions = _sessions(cohort)
    cl = sessions.groupby("participant_id")["centiloid"].max()
    positive = (cl > THRESHOLD).mean()
    assert 0.3 <= positive <= 0.55
    plans = plan_cohort(60, seed=3, size="full")
    assert np.mean([p.positive for p in plans]) == pytest.approx(0.4, abs=0.02)
    pet_cl = [p.centiloid(s.day) for p in plans for s in p.sessions if s.kind == "pet"]
    assert 0.3 <= np.mean(np.array(pet_cl) > THRESHOLD) <= 0.55
    tracers = {s.tracer for p in plans for s in p.sessions if s.kind == "pet"}
    assert tracers == {"PIB", "AV45"}


def test_poses_vary(cohort: Path) -> None:
    truths = [json.loads(p.read_text())
              for p in sorted((cohort / "sourcedata/simulation").glob("*_truth.json"))]
    angles = [rotation_angle_deg(np.array(t["native_to_template"])[:3, :3]) for t in truths]
    assert max(angles) > 8.0 and np.std(angles) > 2.0 and max(angles) < 18.0
    assert len({t["orientation"] for t in truths}) >= 3
    assert len({tuple(t["voxel_size"]) for t in truths}) >= 3
    assert any(len(set(t["voxel_size"])) > 1 for t in truths), "no anisotropic voxels"
    for sub in {t["participant_id"] for t in truths}:
        mine = [t for t in truths if t["participant_id"] == sub]
        poses = {json.dumps(np.round(np.array(t["native_to_template"]), 3).tolist()) for t in mine}
        assert len(poses) == len(mine), f"{sub}: two images share a pose"


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    def digest(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    a = digest(simulate_cohort(tmp_path / "a", 2, seed=5, size="small"))
    b = digest(simulate_cohort(tmp_path / "b", 2, seed=5, size="small", nprocs=2))
    assert a == b and len(a) > 16
    c = digest(simulate_cohort(tmp_path / "c", 2, seed=6, size="small"))
    assert a != c
    assert not list(tmp_path.glob(".tmp-*")), "temporary folder left behind"
    umask = os.umask(0)
    os.umask(umask)
    mode = (tmp_path / "a" / "participants.tsv").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask, oct(mode)  # not the private mode of temporary files


def test_mri_relates_weakly_to_amyloid() -> None:
    plans = plan_cohort(200, seed=1, size="full")
    cl, thin, vent, age = [], [], [], []
    for p in plans:
        day = p.sessions[0].day
        cl.append(p.centiloid(day))
        age.append(p.age_at(day))
        thin.append(thinning(age[-1], cl[-1], p.thinning_offset))
        vent.append(ventricle_growth(age[-1], cl[-1], p.ventricle_offset))
    for feature in (thin, vent):
        r = np.corrcoef(cl, feature)[0, 1]
        assert 0.2 < r < 0.85, r  # learnable, not trivial
        assert np.corrcoef(age, feature)[0, 1] > 0.1  # age is a nuisance


def test_centiloid_equations() -> None:
    # published anchors: PiB YC-0 1.009 and AD-100 2.076 (Klunk 2015); AV45 standard method
    # CL = 175.4·SUVR − 182.3 (Navitsky 2018) → −6.9 at SUVR 1
    assert centiloid_from_suvr(1.009, "PIB") == pytest.approx(0.0)
    assert centiloid_from_suvr(2.076, "PIB") == pytest.approx(100.0)
    assert centiloid_from_suvr(1.0, "AV45") == pytest.approx(-6.9)
    # the simulator uses the app's table (bids_amyloid.centiloid), not a copy of it
    from bids_amyloid.centiloid import get_equation
    from bids_amyloid.sim.imaging import SIM_EQUATIONS

    for tracer, key in SIM_EQUATIONS.items():
        assert centiloid_from_suvr(1.37, tracer) == get_equation(key).to_centiloid(1.37)
    for tracer in ("PIB", "AV45"):
        assert centiloid_from_suvr(suvr_from_centiloid(37.5, tracer), tracer) == pytest.approx(37.5)
    with pytest.raises(ValueError, match="FBB"):
        suvr_from_centiloid(10.0, "FBB")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bids"
    assert main([str(out), "--subjects", "1", "--seed", "2", "--size", "small"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert (out / "sub-001" / "sub-001_sessions.tsv").is_file()
    assert main([str(out), "--subjects", "1", "--size", "small"]) == 73  # not empty
    assert main([str(tmp_path / "x"), "--subjects", "0"]) == 64
    shutil.rmtree(out)


def test_dynamic_pet_early_frames_follow_perfusion_late_frames_amyloid(cohort: Path) -> None:
    """Truth names the late frames (from 50 min); early frames have a perfusion-like pattern."""
    for image in _images(cohort, "*_pet.nii.gz"):
        truth = json.loads(truth_paths(cohort, image)[0].read_text())
        late = truth["late_frames"]
        assert late == [k for k, t in enumerate(truth["frame_start_s"]) if t >= 3000]
        assert late == [8, 9, 10, 11]
        assert [truth["perfusion_weight"][k] for k in late] == [0.0] * 4
        assert truth["perfusion_weight"][0] > 0.9
        assert max(truth["frame_motion_mm"]) <= 3.5 and max(truth["frame_motion_deg"]) <= 1.0
        assert max(truth["frame_motion_mm"]) > 0.1  # the frames do move


def test_pet_uptake_follows_centiloid(cohort: Path) -> None:
    """Cortex/cerebellum SUVR measured on the late frames of the noisy PET tracks the truth."""

    from bids_amyloid.sim.anatomy import build_anatomy

    anat = build_anatomy(2)
    true_cl, measured_cl, all_frames_cl = [], [], []
    for image in _images(cohort, "*_pet.nii.gz"):
        truth = json.loads(truth_paths(cohort, image)[0].read_text())
        img = nib.load(image)
        data = np.asarray(img.dataobj, dtype=np.float32)
        weights = np.array(truth["frame_duration_s"]) / sum(truth["frame_duration_s"])
        for frames, out in ((data[..., truth["late_frames"]].mean(axis=-1), measured_cl),
                            (data @ weights.astype(np.float32), all_frames_cl)):
            out.append(_measured_centiloid(frames, img.affine, truth, anat))
        true_cl.append(truth["centiloid"])
    error = np.abs(np.array(measured_cl) - np.array(true_cl))
    # blur and partial volume bias high loads down, as on real scanners
    allowed = 10.0 + 0.25 * np.abs(true_cl)
    assert (error < allowed).all(), list(zip(true_cl, measured_cl, strict=True))
    assert np.corrcoef(true_cl, measured_cl)[0, 1] > 0.9
    # early frames follow perfusion: averaging all of them pulls the Centiloid far off
    all_error = np.abs(np.array(all_frames_cl) - np.array(true_cl))
    assert all_error.mean() > 2.0 * error.mean(), (all_error, error)


def _measured_centiloid(mean: np.ndarray, affine: np.ndarray, truth: dict, anat: Any) -> float:
    """GAAIN ctx / WhlCbl of a native PET volume read through the true pose, as Centiloid."""
    from scipy import ndimage

    s, c = truth["head_scale"], np.array(truth["centroid_template"])
    scale = np.eye(4)
    scale[:3, :3] *= s
    scale[:3, 3] = c * (1 - s)
    template_to_native = np.linalg.inv(np.array(truth["native_to_template"])) @ scale
    index_map = np.linalg.inv(affine) @ template_to_native @ anat.affine
    pet = ndimage.affine_transform(mean, index_map[:3, :3], index_map[:3, 3],
                                   output_shape=anat.shape, order=1)
    suvr = pet[anat.ctx_voi].mean() / pet[anat.cerebellum].mean()
    return centiloid_from_suvr(float(suvr), truth["tracer"])
