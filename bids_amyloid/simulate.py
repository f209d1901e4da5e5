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
    SUVR from the inverse of the app's published equations
    (``bids_amyloid.centiloid``: PiB ``pib-klunk2015``, CL = 100·(SUVR −
    1.009)/1.067; AV45 ``av45-navitsky2018``, CL = 175.4·SUVR − 182.3; whole-
    cerebellum reference). Non-specific uptake per tissue (white matter
    1.35–1.55× grey matter, low in CSF, bone and scalp) plus specific binding
    in cerebral GM (strongest in the GAAIN cortex VOI), its amplitude solved so
    that the noise-free ctx/WhlCbl SUVR equals the target exactly. Dynamic
    acquisition from the injection to 70 min in 12 frames (1, 1, 2, 2, 4, 10,
    10, 20 min, then 4 × 5 min from 50 min): early frames follow perfusion
    (grey-matter weighted flow), fading to none by 45 min; the 4 late frames
    are the amyloid pattern alone. Each frame moves a little (≤ 2 mm / 1°
    early, ≤ 1.5 mm / 0.75° late, late translations centred on the scan pose).
    6 mm FWHM scanner blur, an own rigid pose (different from every MRI), ~2 mm
    voxels (4 mm ``small``), spatially correlated activity-dependent noise
    (stronger in short frames), Bq/mL. Full BIDS PET sidecar with
    ``FrameTimesStart``/``FrameDuration``.

Ground truth (not read by the app; ``sourcedata/`` is ignored by validators)
----------------------------------------------------------------------------
``OUT/sourcedata/simulation/``:

- ``sub-X_ses-Y_<contrast>_truth.json`` per MRI image and
  ``sub-X_ses-Y_trc-T_pet_truth.json`` per PET: ``native_to_template``
  (4×4, native world RAS mm → MNI152NLin2009aSym world mm, rigid part only),
  ``head_scale`` (the true native head is the template scaled by this about the
  centroid), ``centroid_native`` / ``centroid_template`` (brain centroid, mm),
  ``rotation_deg``, ``translation_mm``, grid, and the generating parameters;
  PET adds ``centiloid``, ``tracer``, ``target_suvr``, ``cortical_suvr`` and the
  frames: ``frame_start_s``, ``frame_duration_s``, ``late_frames`` (indices of
  the amyloid-only frames), ``perfusion_weight``, ``frame_motion_mm`` /
  ``frame_motion_deg`` and ``frame_native_to_template`` per frame.
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
import logging
import sys
from pathlib import Path

SIZE_CHOICES = ("full", "small", "tiny")


def simulate_cohort(out: Path, n_subjects: int, seed: int, size: str = "full",
                    nprocs: int = 1) -> Path:
    """Write a synthetic BIDS cohort of ``n_subjects`` to ``out`` (must be new or empty).

    Returns ``out``. ``size="small"`` uses coarser voxels and fewer sessions
    (a few seconds per subject) for tests; ``"tiny"`` one T1w-only 3 mm MRI session
    and 5 mm PET per subject (the CPU demo); ``"full"`` is close to real scans.
    The cohort is built in a temporary sibling folder and renamed to ``out`` when
    complete, so a killed run leaves no half-written dataset under ``out``.
    ``nprocs`` > 1 simulates subjects in parallel processes (same bytes).
    Raises FileExistsError if ``out`` holds anything, ValueError for a bad size.
    """
    from bids_amyloid.sim.cohort import build_cohort

    return build_cohort(Path(out), n_subjects, seed, size, nprocs)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bids-amyloid-simulate",
                                description="Write a synthetic amyloid PET + MRI BIDS cohort "
                                            "with ground truth under sourcedata/simulation.")
    p.add_argument("out", type=Path, help="new (or empty) output folder")
    p.add_argument("--subjects", type=int, default=10, help="number of subjects")
    p.add_argument("--seed", type=int, default=42, help="random seed (same seed → same bytes)")
    p.add_argument("--size", choices=SIZE_CHOICES, default="full",
                   help="'full' ≈ real scans (1 mm MRI, 2 mm PET); 'small' for tests; "
                        "'tiny': one T1w-only MRI session per subject, 3 mm (the CPU demo)")
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
