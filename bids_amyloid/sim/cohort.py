"""Orchestration of the simulator: cohort → subject → session → image.

Public entry point: :func:`bids_amyloid.simulate.simulate_cohort` (documented
there, with how each property is generated); this module holds its parts.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_amyloid.sim.anatomy import Anatomy, apply_atrophy, build_anatomy
from bids_amyloid.sim.geometry import ORIENTATIONS, Pose, native_grid, random_pose, sample
from bids_amyloid.sim.imaging import (
    PET_FRAMES_S,
    pet_activity,
    suvr_from_centiloid,
    synth_mri,
    synth_pet,
)
from bids_amyloid.sim.plan import (
    THINNING_SESSION_SD,
    VENTRICLE_SESSION_SD,
    SessionPlan,
    SubjectPlan,
    mri_amyloid_signal,
    plan_cohort,
    thinning,
    ventricle_growth,
)
from bids_amyloid.sim.writer import (
    TRUTH_FOLDER,
    mri_sidecar,
    pet_sidecar,
    truth_paths,
    write_dataset_files,
    write_json,
    write_nifti,
    write_tsv,
)

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SizeSpec:
    anatomy_mm: int
    mri_voxels: tuple[tuple[float, float, float], ...]
    pet_voxels: tuple[tuple[float, float, float], ...]


SIZES = {
    "full": SizeSpec(1, ((1.0, 1.0, 1.0), (1.0, 1.0, 1.2), (0.9, 0.9, 1.1), (1.2, 1.2, 1.5)),
                     ((2.0, 2.0, 2.0), (2.0, 2.0, 2.03), (2.086, 2.086, 2.03))),
    "small": SizeSpec(2, ((2.2, 2.2, 2.2), (2.2, 2.2, 2.64), (2.5, 2.5, 3.0)),
                      ((4.0, 4.0, 4.0), (3.5, 3.5, 4.06))),
    # one T1w-only MRI session per subject, 3 mm MRI, 5 mm PET: the CPU demo's cohort
    "tiny": SizeSpec(2, ((3.0, 3.0, 3.0), (3.0, 3.0, 3.6)), ((5.0, 5.0, 5.0),)),
}
PET_ORIENTATIONS = ("RAS", "LPS", "LAS")


def build_cohort(out: Path, n_subjects: int, seed: int, size: str = "full",
                 nprocs: int = 1) -> Path:
    """See :func:`bids_amyloid.simulate.simulate_cohort`."""
    out = Path(out)
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: output folder exists and is not empty")
    plans = plan_cohort(n_subjects, seed, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        write_dataset_files(work, n_subjects, seed, size)
        build_anatomy(SIZES[size].anatomy_mm)  # once, before any worker forks
        tasks = [(work, size, plan, seed) for plan in plans]
        if nprocs > 1 and len(plans) > 1:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(min(nprocs, len(plans)), mp_context=context) as pool:
                results = list(pool.map(_simulate_subject, tasks))
        else:
            results = [_simulate_subject(task) for task in tasks]
        participants = [participant for participant, _ in results]
        parameters = [row for _, rows in results for row in rows]
        write_tsv(work / "participants.tsv", pd.DataFrame(participants))
        write_tsv(work / TRUTH_FOLDER / "parameters.tsv", pd.DataFrame(parameters))
        _open_permissions(work)
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return out


def _open_permissions(root: Path) -> None:
    """Give the dataset the usual umask permissions (temporary files start private)."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _simulate_subject(task: tuple[Path, str, SubjectPlan, int],
                      ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All sessions of one subject; returns its participants.tsv and parameters.tsv rows."""
    root, size, plan, seed = task
    spec = SIZES[size]
    anat = build_anatomy(spec.anatomy_mm)
    LOG.info("simulating sub-%s (%d sessions)", plan.label, len(plan.sessions))
    rows = [_simulate_session(root, anat, spec, plan, ses, seed) for ses in plan.sessions]
    _write_sessions_tsv(root, plan, rows)
    return {"participant_id": f"sub-{plan.label}", "age": plan.age, "sex": plan.sex}, rows


def _write_sessions_tsv(out: Path, plan: SubjectPlan, rows: list[dict[str, Any]]) -> None:
    table = pd.DataFrame({
        "session_id": [r["session_id"] for r in rows],
        "acq_time": [r["acq_time"] for r in rows],
        "centiloid": [r["centiloid"] if r["modality"] == "pet" else None for r in rows],
        "tracer": [r["tracer"] for r in rows],
    })
    write_tsv(out / f"sub-{plan.label}" / f"sub-{plan.label}_sessions.tsv", table)


def _simulate_session(out: Path, anat: Anatomy, spec: SizeSpec, plan: SubjectPlan,
                      ses: SessionPlan, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 2, plan.index, ses.day])
    age = plan.age_at(ses.day)
    latent = plan.centiloid(ses.day)
    thin = thinning(age, latent, plan.thinning_offset + rng.normal(0.0, THINNING_SESSION_SD))
    vent = ventricle_growth(age, latent, plan.ventricle_offset
                            + rng.normal(0.0, VENTRICLE_SESSION_SD))
    morph = apply_atrophy(anat, thin, vent)
    pose = random_pose(rng, anat.centroid, plan.head_scale)
    when = plan.first_date.toordinal() + ses.day
    hour = 8 + int(rng.integers(0, 9))
    row: dict[str, Any] = {
        "participant_id": f"sub-{plan.label}", "session_id": f"ses-{ses.label}",
        "modality": ses.kind, "day": ses.day,
        "acq_time": f"{_iso_date(when)}T{hour:02d}:{int(rng.integers(0, 60)):02d}:00",
        "age": round(age, 2), "sex": plan.sex, "head_scale": round(plan.head_scale, 4),
        "amyloid_group": "positive" if plan.positive else "negative",
        "latent_centiloid": round(latent, 2),
        "mri_amyloid_signal": round(mri_amyloid_signal(latent), 5),
        "cortical_thinning": round(thin, 4),
        "ventricle_growth_mm": round(vent, 3), "rotation_deg": round(pose.angle_deg, 3),
        "translation_mm": round(float(np.linalg.norm(pose.translation)), 3),
        "contrasts": ",".join(ses.contrasts) if ses.contrasts else None,
        "tracer": ses.tracer, "centiloid": None, "cortical_suvr": None,
    }
    common = {"participant_id": row["participant_id"], "session_id": row["session_id"],
              "acq_time": row["acq_time"],
              "age": row["age"], "latent_centiloid": row["latent_centiloid"],
              "mri_amyloid_signal": row["mri_amyloid_signal"],
              "cortical_thinning": thin, "ventricle_growth_mm": vent}
    if ses.kind == "mri":
        for contrast in ses.contrasts:
            _write_mri(out, anat, spec, plan, ses, contrast, morph, pose, rng, common)
    else:
        row.update(_write_pet(out, anat, spec, plan, ses, morph, pose, rng, common, latent))
    return row


def _iso_date(ordinal: int) -> str:
    return dt.date.fromordinal(ordinal).isoformat()


def _bbox_points(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates (n, 3) of the 8 corners of ``mask``'s bounding box."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                        for c in (lo[2], hi[2])])
    return (affine @ corners.T).T[:, :3]


def _posed(points: np.ndarray, pose: Pose) -> np.ndarray:
    homo = np.c_[points, np.ones(len(points))]
    return (pose.full @ homo.T).T[:, :3]


def _truth(pose: Pose, affine: np.ndarray, shape: tuple[int, ...], axcodes: str,
           voxel: tuple[float, float, float], image: Path, out: Path) -> dict[str, Any]:
    centroid_native = pose.rigid @ np.append(pose.centroid, 1.0)
    return {
        "image": image.relative_to(out).as_posix(), "space": "MNI152NLin2009aSym",
        "native_to_template": np.linalg.inv(pose.rigid).round(8).tolist(),
        "head_scale": round(pose.scale, 6),
        "centroid_native": centroid_native[:3].round(4).tolist(),
        "centroid_template": np.asarray(pose.centroid).round(4).tolist(),
        "rotation_deg": round(pose.angle_deg, 4),
        "translation_mm": round(float(np.linalg.norm(pose.translation)), 4),
        "orientation": axcodes, "voxel_size": [float(v) for v in voxel],
        "shape": [int(n) for n in shape], "affine": np.asarray(affine).round(6).tolist(),
    }


def _write_mri(out: Path, anat: Anatomy, spec: SizeSpec, plan: SubjectPlan, ses: SessionPlan,
               contrast: str, morph: Any, session_pose: Pose, rng: np.random.Generator,
               common: dict[str, Any]) -> None:
    pose = random_pose(rng, anat.centroid, plan.head_scale, max_angle=2.0, max_shift=2.0,
                       base=session_pose)
    axcodes = str(rng.choice(ORIENTATIONS))
    voxel = spec.mri_voxels[int(rng.integers(len(spec.mri_voxels)))]
    points = _posed(_bbox_points(anat.head, anat.affine), pose)
    affine, shape = native_grid(points, axcodes, voxel, float(rng.uniform(4.0, 20.0)))
    image, params = synth_mri(anat, morph, contrast, pose, affine, shape, rng)
    stem = f"sub-{plan.label}_ses-{ses.label}_{contrast}"
    path = out / f"sub-{plan.label}" / f"ses-{ses.label}" / "anat" / f"{stem}.nii.gz"
    write_nifti(path, image.data, affine)
    write_json(path.with_name(f"{stem}.json"), mri_sidecar(contrast, voxel))
    truth_json, truth_mask = truth_paths(out, path)
    write_nifti(truth_mask, image.mask, affine)
    write_json(truth_json, {**_truth(pose, affine, shape, axcodes, voxel, path, out),
                            "contrast": contrast, **common,
                            **{k: round(v, 5) for k, v in params.items()}})


def _write_pet(out: Path, anat: Anatomy, spec: SizeSpec, plan: SubjectPlan, ses: SessionPlan,
               morph: Any, pose: Pose, rng: np.random.Generator, common: dict[str, Any],
               latent: float) -> dict[str, Any]:
    tracer = str(ses.tracer)
    centiloid = round(latent + float(rng.normal(0.0, 2.0)), 1)
    target = suvr_from_centiloid(centiloid, tracer)
    activity = pet_activity(anat, morph, tracer, target)
    axcodes = str(rng.choice(PET_ORIENTATIONS))
    voxel = spec.pet_voxels[int(rng.integers(len(spec.pet_voxels)))]
    points = _posed(_bbox_points(anat.brain, anat.affine), pose)
    affine, shape = native_grid(points, axcodes, voxel, float(rng.uniform(20.0, 35.0)))
    injected = float(rng.uniform(0.85, 1.15))
    level = float(rng.uniform(4000.0, 8000.0)) * injected
    data, params, frames = synth_pet(anat, morph, activity, pose, affine, shape, rng, level)
    stem = f"sub-{plan.label}_ses-{ses.label}_trc-{tracer}_pet"
    path = out / f"sub-{plan.label}" / f"ses-{ses.label}" / "pet" / f"{stem}.nii.gz"
    write_nifti(path, data, affine)
    write_json(path.with_name(f"{stem}.json"),
               pet_sidecar(tracer, PET_FRAMES_S, injected, common["acq_time"][11:]))
    truth_json, truth_mask = truth_paths(out, path)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[sample(anat.brain_float, anat.affine, pose, affine, shape) >= 0.5] = 1
    write_nifti(truth_mask, mask, affine)
    suvr = round(activity.suvr, 5)
    write_json(truth_json, {**_truth(pose, affine, shape, axcodes, voxel, path, out), **common,
                            "tracer": tracer, "centiloid": centiloid,
                            "target_suvr": round(target, 5), "cortical_suvr": suvr,
                            "specific_amplitude": round(activity.amplitude, 5),
                            "reference_level_bq_ml": round(level, 2), **frames,
                            **{k: round(v, 5) for k, v in params.items()}})
    return {"centiloid": centiloid, "cortical_suvr": suvr}
