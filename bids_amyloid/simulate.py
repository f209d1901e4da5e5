"""Synthetic amyloid PET + MRI cohort in BIDS, with known ground truth.

``bids-amyloid-simulate OUT --subjects N --seed S [--size small|full] [--nprocs P]``
or :func:`simulate_cohort`. Same arguments → byte-identical files (gzip with
mtime 0, one random stream per subject and session, whatever ``--nprocs``).
Cost on one core: ``small`` ≈ 3 s per subject, ``full`` ≈ 50 s per subject
(100–200 MB per subject).

How each property is generated
------------------------------
Anatomy (``sim/anatomy.py``)
    nilearn's MNI152 2009 template (brain mask, GM and WM probability maps;
    shipped offline), on a grid padded around the brain. CSF inside the brain
    is what the mask leaves after GM and WM. The template is brain-only, so the
    head is added: extra-axial CSF, inner bone table, diploic marrow, outer
    table, scalp and scalp fat as shells outside the brain mask (distances
    scaled 0.7–1.45× over the head: thick occiput and vertex, thin temples), a
    neck, a crude face and two eyeballs in orbital fat. Ventricles are the
    deep, central CSF. The
    cerebellum and the Centiloid cortex target are the GAAIN ``voi_WhlCbl`` and
    ``voi_ctx`` VOIs read from the installed ``amypet`` package (located with
    ``importlib.util.find_spec``, never imported), resampled by affine.
Subjects (``sim/plan.py``)
    ⌈0.4·N⌉ subjects are amyloid positive at baseline (Centiloid 25–110,
    rising ~3.5 CL/year); the others start near 0 CL (sd 6, ≤ 12) and barely
    move. Age 60–82 at the first visit (+3 years for positives), sex,
    head size (isotropic scale ~N(1 ± 0.03 by sex, 0.035), 0.88–1.12).
Sessions (``sim/plan.py``)
    OASIS-3-like labels ``ses-dNNNN`` (days since the first visit). MRI visits
    350–1100 days apart (``small``: 1–2 visits, ``full``: 2–3); a PET 15–200
    days before or after most MRI visits, never on an MRI day; every third
    subject also has a PET > 365 days after its last MRI. Main tracer
    alternates PiB / AV45 by subject, some subjects also get the other tracer.
    T1w is in every MRI session; T2w, FLAIR and T2starw are sometimes missing.
    ``sub-X/sub-X_sessions.tsv`` holds ``session_id``, ``acq_time`` (ISO
    date-time: a random first date 2005–2014 plus the day offset),
    ``centiloid`` and ``tracer`` on PET rows; ``participants.tsv`` age and sex.
Amyloid in MRI (weak, noisy)
    Cortical thinning (GM next to CSF turned into CSF) and ventricle growth (mm)
    rise with age and with Centiloid, plus a subject-level nuisance offset and
    session noise (``sim/plan.py: thinning, ventricle_growth``); head size and
    age are nuisance. MRI-only prediction is learnable but not trivial.
MRI images (``sim/geometry.py``, ``sim/imaging.py``)
    Per tissue intensities for T1w, T2w, FLAIR, T2starw (±4 % jitter per
    image). Per MRI session a random rigid pose (rotation up to 15° about a
    random axis through the brain centroid, translation up to 15 mm); each
    contrast adds ≤ 2°/2 mm of motion. The head is scaled about the brain
    centroid, posed, and sampled (linear) onto its own native grid: voxel-axis
    orientation drawn from RAS, LPS, LAS, LIA, PIR, RPI; voxel size drawn from
    1 mm isotropic and anisotropic options (×2.2 for ``small``); field of view
    = the head plus a random margin. Then a smooth multiplicative bias field
    (exp of a quadratic, ±8–20 %), Rician noise (1.5–4 % of WM), int16.
PET images
    Centiloid of the scan = the subject's course at that day + N(0, 2); target
    SUVR from the inverse of the published equations (PiB: CL = 100·(SUVR −
    1.009)/1.067, Klunk 2015; AV45: CL = 196.9·SUVR − 196.03, Navitsky 2018;
    whole-cerebellum reference). Non-specific uptake per tissue (white matter
    1.35–1.55× grey matter, low in CSF, bone and scalp) plus specific binding
    in cerebral GM (strongest in the GAAIN cortex VOI), its amplitude solved so
    that the noise-free ctx/WhlCbl SUVR equals the target exactly. 6 mm FWHM
    scanner blur, an own rigid pose (different from every MRI), ~2 mm voxels
    (4 mm ``small``), 4 frames of 5 min (3 ``small``) with slight washout and
    spatially correlated activity-dependent noise, Bq/mL. Full BIDS PET sidecar.

Ground truth (not read by the app; ``sourcedata/`` is ignored by validators)
----------------------------------------------------------------------------
``OUT/sourcedata/simulation/``:

- ``sub-X_ses-Y_<contrast>_truth.json`` per MRI image and
  ``sub-X_ses-Y_trc-T_pet_truth.json`` per PET: ``native_to_template``
  (4×4, native world RAS mm → MNI152NLin2009aSym world mm, rigid part only),
  ``head_scale`` (the true native head is the template scaled by this about the
  centroid), ``centroid_native`` / ``centroid_template`` (brain centroid, mm),
  ``rotation_deg``, ``translation_mm``, grid, and the generating parameters;
  PET adds ``centiloid``, ``tracer``, ``target_suvr`` and ``cortical_suvr``.
  Registration error of an estimate ``T`` (native → template): the angle of
  ``R_T · R_trueᵀ`` and ``|T(centroid_native) − centroid_template|``.
- ``sub-X_ses-Y_<contrast>_desc-brain_mask.nii.gz``: the true brain mask on
  that image's native grid (Dice of a skull-strip against it).
- ``parameters.tsv``: one row per session (MRI and PET).

:func:`bids_amyloid.sim.writer.truth_paths` gives both truth paths of an image.

Example
-------
>>> from pathlib import Path; import tempfile
>>> root = simulate_cohort(Path(tempfile.mkdtemp()) / "bids", 1, seed=3, size="small")
>>> sorted(p.name for p in (root / "sub-001").iterdir())[-1]
'sub-001_sessions.tsv'
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_amyloid.sim.anatomy import Anatomy, apply_atrophy, build_anatomy
from bids_amyloid.sim.geometry import ORIENTATIONS, Pose, native_grid, random_pose, sample
from bids_amyloid.sim.imaging import pet_activity, suvr_from_centiloid, synth_mri, synth_pet
from bids_amyloid.sim.plan import (
    SessionPlan,
    SubjectPlan,
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
    n_frames: int


SIZES = {
    "full": SizeSpec(1, ((1.0, 1.0, 1.0), (1.0, 1.0, 1.2), (0.9, 0.9, 1.1), (1.2, 1.2, 1.5)),
                     ((2.0, 2.0, 2.0), (2.0, 2.0, 2.03), (2.086, 2.086, 2.03)), 4),
    "small": SizeSpec(2, ((2.2, 2.2, 2.2), (2.2, 2.2, 2.64), (2.5, 2.5, 3.0)),
                      ((4.0, 4.0, 4.0), (3.5, 3.5, 4.06)), 3),
}
PET_ORIENTATIONS = ("RAS", "LPS", "LAS")


def simulate_cohort(out: Path, n_subjects: int, seed: int, size: str = "full",
                    nprocs: int = 1) -> Path:
    """Write a synthetic BIDS cohort of ``n_subjects`` to ``out`` (must be new or empty).

    Returns ``out``. ``size="small"`` uses coarser voxels and fewer sessions
    (a few seconds per subject) for tests; ``"full"`` is close to real scans.
    The cohort is built in a temporary sibling folder and renamed to ``out`` when
    complete, so a killed run leaves no half-written dataset under ``out``.
    ``nprocs`` > 1 simulates subjects in parallel processes (same bytes).
    """
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
    thin = thinning(age, latent, plan.thinning_offset + rng.normal(0.0, 0.01))
    vent = ventricle_growth(age, latent, plan.ventricle_offset + rng.normal(0.0, 0.2))
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
        "latent_centiloid": round(latent, 2), "cortical_thinning": round(thin, 4),
        "ventricle_growth_mm": round(vent, 3), "rotation_deg": round(pose.angle_deg, 3),
        "translation_mm": round(float(np.linalg.norm(pose.translation)), 3),
        "contrasts": ",".join(ses.contrasts) if ses.contrasts else None,
        "tracer": ses.tracer, "centiloid": None, "cortical_suvr": None,
    }
    common = {"participant_id": row["participant_id"], "session_id": row["session_id"],
              "acq_time": row["acq_time"],
              "age": row["age"], "latent_centiloid": row["latent_centiloid"],
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
    data, params = synth_pet(anat, activity, pose, affine, shape, rng, spec.n_frames, level)
    stem = f"sub-{plan.label}_ses-{ses.label}_trc-{tracer}_pet"
    path = out / f"sub-{plan.label}" / f"ses-{ses.label}" / "pet" / f"{stem}.nii.gz"
    write_nifti(path, data, affine, zooms_t=300.0)
    write_json(path.with_name(f"{stem}.json"), pet_sidecar(tracer, spec.n_frames, injected, common["acq_time"][11:]))
    truth_json, truth_mask = truth_paths(out, path)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[sample(anat.brain_float, anat.affine, pose, affine, shape) >= 0.5] = 1
    write_nifti(truth_mask, mask, affine)
    suvr = round(activity.suvr, 5)
    write_json(truth_json, {**_truth(pose, affine, shape, axcodes, voxel, path, out), **common,
                            "tracer": tracer, "centiloid": centiloid,
                            "target_suvr": round(target, 5), "cortical_suvr": suvr,
                            "specific_amplitude": round(activity.amplitude, 5),
                            "reference_level_bq_ml": round(level, 2),
                            **{k: round(v, 5) for k, v in params.items()}})
    return {"centiloid": centiloid, "cortical_suvr": suvr}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bids-amyloid-simulate",
                                description="Write a synthetic amyloid PET + MRI BIDS cohort "
                                            "with ground truth under sourcedata/simulation.")
    p.add_argument("out", type=Path, help="new (or empty) output folder")
    p.add_argument("--subjects", type=int, default=10, help="number of subjects")
    p.add_argument("--seed", type=int, default=42, help="random seed (same seed → same bytes)")
    p.add_argument("--size", choices=sorted(SIZES), default="full",
                   help="'full' ≈ real scans (1 mm MRI, 2 mm PET); 'small' for tests")
    p.add_argument("--nprocs", type=int, default=1, help="subjects simulated in parallel")
    p.add_argument("-v", "--verbose", action="store_true", help="log each subject")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console script ``bids-amyloid-simulate``; returns an exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.subjects < 1:
        print("bids-amyloid-simulate: --subjects must be ≥ 1", file=sys.stderr)
        return 64
    try:
        root = simulate_cohort(args.out, args.subjects, args.seed, args.size, args.nprocs)
    except FileExistsError as err:
        print(f"bids-amyloid-simulate: {err}", file=sys.stderr)
        return 73
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
