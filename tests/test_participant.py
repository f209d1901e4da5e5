"""Participant level: outputs, sidecars, validator, restart, kill-and-resume, QC report.

Most tests swap the image functions for fast fakes (``participant_fakes``) and
drive the real CLI, inventory, pairing, staging, commit and report code; the
``slow`` test runs the real preprocessing on a 2-subject simulated cohort.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_amyloid.cli import main
from bids_amyloid.config import AppConfig
from bids_amyloid.derivatives import read_slice_cache, sidecar_of
from bids_amyloid.io import TMP_MARK
from bids_amyloid.participant import outputs, plan, staging
from bids_amyloid.participant.run import run_mri_sessions
from bids_amyloid.preproc.report import Failure, build_report, flag_metrics
from tests import participant_fakes

SPACE = "space-MNI152NLin2009aSym"
ROOT = Path(__file__).resolve().parents[1]
# the 2-subject small cohort (seed 1): MRI sessions and PET → MRI session pairs
MRI_SESSIONS = [("001", "d0000"), ("002", "d0000"), ("002", "d0502")]
PETS = [("001", "d0101", "PIB", "d0000"), ("002", "d0143", "AV45", "d0000")]


@pytest.fixture(scope="session")
def sim_bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bids_amyloid.simulate import simulate_cohort

    return simulate_cohort(tmp_path_factory.mktemp("sim") / "bids", 2, seed=1, size="small")


@pytest.fixture
def bids(sim_bids: Path, tmp_path: Path) -> Path:
    """A private copy tests may damage."""
    return Path(shutil.copytree(sim_bids, tmp_path / "bids"))


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    participant_fakes.install(monkeypatch)


def run(bids: Path, out: Path, *extra: str) -> int:
    return main([str(bids), str(out), "participant", "--skip-bids-validation", *extra])


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and "work" not in p.relative_to(out).parts}


def mri_files(out: Path, sub: str, ses: str, contrast: str = "T1w") -> list[Path]:
    anat = out / f"sub-{sub}" / f"ses-{ses}" / "anat"
    stem = f"sub-{sub}_ses-{ses}"
    return [anat / f"{stem}_{SPACE}_desc-preproc_{contrast}.nii.gz",
            anat / f"{stem}_{SPACE}_desc-slices_{contrast}.npy",
            anat / f"{stem}_from-{contrast}_to-MNI152NLin2009aSym_mode-image_xfm.mat"]


def pet_files(out: Path, sub: str, ses: str, tracer: str) -> list[Path]:
    pet = out / f"sub-{sub}" / f"ses-{ses}" / "pet"
    stem = f"sub-{sub}_ses-{ses}_trc-{tracer}_{SPACE}"
    return [pet / f"{stem}_desc-suvr_pet.nii.gz", pet / f"{stem}_desc-slices_pet.npy"]


def all_outputs(out: Path) -> list[Path]:
    files = []
    for sub, ses in MRI_SESSIONS:
        files += mri_files(out, sub, ses)
        files.append(out / f"sub-{sub}" / f"ses-{ses}" / "anat" /
                     f"sub-{sub}_ses-{ses}_{SPACE}_desc-brain_mask.nii.gz")
    for sub, ses, tracer, _ in PETS:
        files += pet_files(out, sub, ses, tracer)
    return files


def unit_hash(path: Path) -> str:
    """The parameter hash an output of the MRI or the PET unit must record (default config)."""
    return outputs.parameter_hash(AppConfig(), "pet" if "pet" in path.parent.name else "mri")


def validator_errors(out: Path) -> list[str]:
    exe = Path(sys.executable).parent / "bids-validator-deno"
    done = subprocess.run([str(exe), "--format", "json", str(out)], capture_output=True,
                          text=True, timeout=300, check=False)
    issues = json.loads(done.stdout)["issues"]["issues"]
    return [f"{i['code']} {i.get('location')}" for i in issues if i["severity"] == "error"]


def assert_clean(out: Path, failed_jobs: bool = False) -> None:
    """No temporaries, every output has a sidecar, no job folders left (failed ones may stay)."""
    assert not [p for p in out.rglob(f"{TMP_MARK}*")], "temporary files left behind"
    for path in out.rglob("*"):
        if "work" in path.relative_to(out).parts:
            continue
        if path.suffix in (".npy", ".mat") or path.name.endswith(".nii.gz"):
            assert sidecar_of(path).is_file(), f"{path} has no sidecar"
    work = out / "work"
    if not failed_jobs:
        assert not work.exists() or not list(work.glob("sub-*")), "job work folders left behind"


# --------------------------------------------------------------------------- fakes, fast


def test_outputs_sidecars_report(fakes: None, bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = tree_digest(bids)
    assert run(bids, out, "--contrasts", "T1w", "T2w") == 0
    assert tree_digest(bids) == before, "the input dataset was modified"
    for path in all_outputs(out):
        assert path.is_file(), path
        meta = json.loads(sidecar_of(path).read_text())
        assert meta["ParameterHash"] == unit_hash(path)
        assert meta["Sources"] and all(s.startswith("bids:") for s in meta["Sources"])
        if path.name.endswith(".nii.gz"):
            assert "SkullStripped" in meta and meta["SpatialReference"]
    # other contrasts: T2w where the session has one, registered through the T1w
    t2 = mri_files(out, "002", "d0502", "T2w")[0]
    sources = json.loads(sidecar_of(t2).read_text())["Sources"]
    assert sources == ["bids:raw:sub-002/ses-d0502/anat/sub-002_ses-d0502_T2w.nii.gz",
                       "bids:raw:sub-002/ses-d0502/anat/sub-002_ses-d0502_T1w.nii.gz"]
    assert not list(out.rglob("*_FLAIR.nii.gz")), "FLAIR was not requested"
    # PET: registered through its paired MRI session, all candidate slices, SUVR not rescaled
    for sub, ses, tracer, mri_ses in PETS:
        suvr, cache = pet_files(out, sub, ses, tracer)
        meta = json.loads(sidecar_of(suvr).read_text())
        assert meta["MRISession"] == f"ses-{mri_ses}" and meta["TracerName"] == tracer
        assert f"sub-{sub}/ses-{mri_ses}/anat/" in meta["Sources"][-1]
        array, indices, cmeta = read_slice_cache(cache)
        assert indices == list(range(6, 14)) and array.shape[0] == 8
        assert float(array.max()) > 1.0 and cmeta["MRISession"] == f"ses-{mri_ses}"
    assert validator_errors(out) == []
    assert_clean(out)
    for sub in ("001", "002"):
        page = (out / f"sub-{sub}.html").read_text()
        assert page.count("data:image/png;base64,") >= 3
        assert "http://" not in page and "https://" not in page and "<script" not in page
        assert "FAILED" not in page
        assert (out / f"sub-{sub}" / "log").is_dir()


def test_rerun_is_noop_then_parameters_change(fakes: None, bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(bids, out) == 0
    first = mtimes(out)
    assert run(bids, out) == 0
    assert mtimes(out) == first, "a re-run rewrote finished outputs"

    # a missing output: only its job is redone
    victim = pet_files(out, "001", "d0101", "PIB")[0]
    victim.unlink()
    assert run(bids, out) == 0
    now = mtimes(out)
    assert victim.is_file()
    redone = {k for k in first if now[k] != first[k]}
    assert redone and all(k.startswith("sub-001") for k in redone)
    assert all(now[k] == first[k] for k in first if k.startswith("sub-002/"))

    # changed preprocessing parameters: everything is redone with the new hash
    conf = tmp_path / "gamma.toml"
    conf.write_text("[preproc]\ngamma = 0.8\n")
    assert run(bids, out, "--config", str(conf)) == 0
    meta = json.loads(sidecar_of(all_outputs(out)[0]).read_text())
    assert meta["Parameters"]["gamma"] == 0.8
    changed = mtimes(out)
    assert all(changed[str(p.relative_to(out))] != now[str(p.relative_to(out))]
               for p in all_outputs(out))
    assert run(bids, out, "--config", str(conf)) == 0
    assert mtimes(out) == changed
    assert run(bids, out, "--config", str(conf), "--overwrite") == 0
    assert all(v != changed[k] for k, v in mtimes(out).items() if k.endswith(".nii.gz"))
    assert_clean(out)


def test_pet_only_change_does_not_redo_mri(fakes: None, bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(bids, out) == 0
    before = mtimes(out)
    mri = [p for sub, ses in MRI_SESSIONS for p in mri_files(out, sub, ses)]
    pet = [p for sub, ses, tracer, _ in PETS for p in pet_files(out, sub, ses, tracer)]
    conf = tmp_path / "pet.toml"
    conf.write_text("[preproc]\npet_fwhm_mm = 6.0\n")
    participant_fakes.CALLS.clear()
    assert run(bids, out, "--config", str(conf)) == 0
    assert participant_fakes.CALLS == [], "an MRI session was preprocessed again"
    after = mtimes(out)
    rel = [str(p.relative_to(out)) for p in mri]
    assert all(after[k] == before[k] for k in rel), "MRI outputs were rewritten"
    assert all(after[str(p.relative_to(out))] != before[str(p.relative_to(out))] for p in pet)
    assert json.loads(sidecar_of(pet[0]).read_text())["Parameters"]["pet_fwhm_mm"] == 6.0
    assert "pet_fwhm_mm" not in json.loads(sidecar_of(mri[0]).read_text())["Parameters"]
    # a slice parameter shapes the MRI caches too: the MRI is redone
    conf.write_text("[preproc]\npet_fwhm_mm = 6.0\nmin_slice_mean = 0.02\n")
    assert run(bids, out, "--config", str(conf)) == 0
    assert len(participant_fakes.CALLS) == len(MRI_SESSIONS)
    assert_clean(out)


def test_failing_session_commits_nothing(fakes: None, bids: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An error after some files of a session were staged: none reach OUT; the run goes on."""
    from bids_amyloid import derivatives

    real = derivatives.write_slice_cache

    def broken(path: Path, *args: object, **kw: object) -> None:
        if "ses-d0502" in path.name:
            raise RuntimeError("injected failure while writing the slice cache")
        real(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(derivatives, "write_slice_cache", broken)
    out = tmp_path / "out"
    assert run(bids, out) == 1
    assert not (out / "sub-002" / "ses-d0502").exists(), "partial outputs of a failed session"
    log = (out / "sub-002" / "log" / "ses-d0502.log").read_text()
    assert "injected failure while writing the slice cache" in log and "Traceback" in log
    for sub, ses in MRI_SESSIONS[:2]:
        assert all(p.is_file() for p in mri_files(out, sub, ses))
    assert "FAILED" in (out / "sub-002.html").read_text()
    assert (out / "work" / "sub-002_ses-d0502").is_dir(), "a failed job keeps its work folder"

    monkeypatch.setattr(derivatives, "write_slice_cache", real)
    before = mtimes(out)
    assert run(bids, out) == 0
    after = mtimes(out)
    assert all(after[k] == v for k, v in before.items() if k.startswith("sub-001/"))
    assert all(p.is_file() for p in mri_files(out, "002", "d0502"))
    assert "FAILED" not in (out / "sub-002.html").read_text()
    assert_clean(out)


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from tests import participant_fakes
    from bids_amyloid.io import atomic_path
    from bids_amyloid.participant import commit, worker

    worker.load_steps = participant_fakes.steps
    where, count = sys.argv[1], [0]
    if where == "commit":  # killed in the middle of moving a session's files into OUT
        real_move = commit._move_atomic
        def move(src, target):
            count[0] += 1
            if count[0] == 4:
                with atomic_path(target) as tmp:
                    tmp.write_bytes(b"half")
                    os.kill(os.getpid(), signal.SIGKILL)
            real_move(src, target)
        commit._move_atomic = move
    else:  # killed while preprocessing the first PET (its MRI session already committed)
        def pet(*args, **kw):
            os.kill(os.getpid(), signal.SIGKILL)
        participant_fakes.preprocess_pet = pet
    from bids_amyloid.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("where", ["commit", "pet"])
def test_killed_run_restarts_cleanly(fakes: None, bids: Path, tmp_path: Path, where: str) -> None:
    out = tmp_path / "out"
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(ROOT)))
    done = subprocess.run([sys.executable, str(script), where, str(bids), str(out), "participant",
                           "--skip-bids-validation"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    if where == "commit":
        assert list(out.rglob(f"{TMP_MARK}*")), "the kill should have left a temporary file"
    else:
        assert all(p.is_file() for p in mri_files(out, "001", "d0000"))
        assert not (out / "sub-001" / "ses-d0101").exists()
    before = tree_digest(bids)
    assert run(bids, out) == 0
    assert tree_digest(bids) == before
    assert_clean(out)
    for path in all_outputs(out):
        meta = json.loads(sidecar_of(path).read_text())
        assert meta["ParameterHash"] == unit_hash(path)
    first = mtimes(out)
    assert run(bids, out) == 0
    assert mtimes(out) == first


def test_run_mri_sessions_for_predict(fakes: None, bids: Path, tmp_path: Path) -> None:
    from bids_amyloid.bids import MRISession
    from bids_amyloid.options import RunOptions

    anat = bids / "sub-002" / "ses-d0502" / "anat"
    sessions = [
        MRISession("002", "d0502", None, "", {"T1w": anat / "sub-002_ses-d0502_T1w.nii.gz",
                                               "T2w": anat / "sub-002_ses-d0502_T2w.nii.gz"}),
        MRISession("002", "x", None, "", {"FLAIR": anat / "sub-002_ses-d0502_FLAIR.nii.gz"}),
    ]
    out = tmp_path / "predict"
    opts = RunOptions(bids_dir=bids, output_dir=out, analysis_level="predict")
    status = run_mri_sessions(sessions, ("T2w",), out, AppConfig(), opts)
    assert status[("002", "d0502")] is None
    assert "no T2w image" in str(status[("002", "x")])
    assert all(p.is_file() for p in mri_files(out, "002", "d0502", "T2w"))
    assert all(p.is_file() for p in mri_files(out, "002", "d0502", "T1w"))  # T2w goes via T1w
    assert_clean(out)


def test_report_flags_and_failures(tmp_path: Path) -> None:
    assert flag_metrics({"mask_volume_ml": 3100.0})
    assert flag_metrics({"template_mask_dice": 0.6})
    assert not flag_metrics({"mask_volume_ml": 1300.0, "template_mask_dice": 0.88})
    tpl = participant_fakes.template()
    brain = np.asarray(tpl.dataobj) > 0.05 * float(np.asarray(tpl.dataobj).max())
    good = nib.Nifti1Image(brain.astype(np.uint8), tpl.affine)
    half = brain.copy()
    half[: brain.shape[0] // 2] = False  # a strip that lost a hemisphere
    assert staging.template_dice(good, tpl) == pytest.approx(1.0)
    assert staging.template_dice(nib.Nifti1Image(half.astype(np.uint8), tpl.affine),
                                 tpl) < 0.75
    page = build_report("01", [], [Failure("ses-01", "sub-01_T1w.nii.gz: file is empty", "x.log")])
    assert "FAILED" in page and "sub-01_T1w.nii.gz: file is empty" in page


def test_unit_tags() -> None:
    assert plan.unit_tag("01") == "ses-01"
    assert plan.unit_tag("02", "AV45") == "ses-02_trc-AV45"
    assert plan.unit_tag("", "PIB") == "trc-PIB" and plan.unit_tag("") == "mri"


# --------------------------------------------------------------------------- real, slow


@pytest.mark.slow
def test_real_pipeline_end_to_end(sim_bids: Path, tmp_path: Path) -> None:
    """Real preprocessing of sub-002: its two MRI sessions in parallel (one with a PET,
    one without), validated outputs; then a re-run is a no-op."""
    out, work = tmp_path / "out", tmp_path / "work"
    before = tree_digest(sim_bids)
    args = [str(sim_bids), str(out), "participant", "--participant-label", "002", "-w", str(work)]
    assert main([*args, "--nprocs", "2"]) == 0
    assert tree_digest(sim_bids) == before
    sessions = [m for m in MRI_SESSIONS if m[0] == "002"]
    pets = [p for p in PETS if p[0] == "002"]
    for sub, ses in sessions:
        for path in mri_files(out, sub, ses):
            assert path.is_file() and sidecar_of(path).is_file(), path
        array, indices, _ = read_slice_cache(mri_files(out, sub, ses)[1])
        assert array.shape[1:] == (224, 224) and 0 < len(indices) <= 40
        assert indices == sorted(indices) and np.isfinite(array).all()
        mask = out / f"sub-{sub}" / f"ses-{ses}" / "anat" / \
            f"sub-{sub}_ses-{ses}_{SPACE}_desc-brain_mask.nii.gz"
        assert json.loads(sidecar_of(mask).read_text())["TemplateMaskDice"] > 0.8
    for sub, ses, tracer, mri_ses in pets:
        suvr, cache = pet_files(out, sub, ses, tracer)
        assert json.loads(sidecar_of(suvr).read_text())["MRISession"] == f"ses-{mri_ses}"
        array, indices, _ = read_slice_cache(cache)
        assert array.shape == (40, 224, 224) and float(array.max()) > 1.0
    assert validator_errors(out) == []
    assert_clean(out)
    assert not work.exists() or not list(work.glob("sub-*"))
    page = (out / "sub-002.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "FAILED" not in page
    first = mtimes(out)
    assert main(args) == 0
    assert mtimes(out) == first
