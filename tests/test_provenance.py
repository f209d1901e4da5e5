"""Provenance from participant to predict: one pairing, --session-label, the caches' parameters.

Fast tests drive the real participant level with the image functions swapped for
``participant_fakes`` on hand-built BIDS trees; the ``slow`` chain runs the real
preprocessing, the group level and predict on a tiny simulated cohort.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_amyloid import derivatives as drv
from bids_amyloid.bids import collect_inventory
from bids_amyloid.cli import main
from bids_amyloid.cohort import build_cohort
from bids_amyloid.config import AppConfig, apply_overrides
from bids_amyloid.errors import UsageError
from bids_amyloid.options import RunOptions
from bids_amyloid.participant.outputs import unit_parameters
from bids_amyloid.train.data import cache_parameters, check_caches, with_cache_parameters
from tests import participant_fakes
from tests.bids_builders import BidsBuilder, clinica_oasis3_dataset, write_nifti

SUBJECTS = ("01", "02", "03")


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    participant_fakes.install(monkeypatch)


def participant(bids: Path, out: Path, *extra: str) -> int:
    return main([str(bids), str(out), "participant", "--skip-bids-validation", "-q", *extra])


def two_session_dataset(root: Path) -> Path:
    """Per subject: MRI ses-a (T1w, 1 Jan), MRI ses-b (T1w + T2w, 1 Apr), AV45 PET ses-p
    (21 Jan). The PET's closest session with a T1w is ses-a (20 days); with T1w + T2w it
    is ses-b (71 days)."""
    b = BidsBuilder(root)
    for k, sub in enumerate(SUBJECTS):
        b.anat(sub, "a", "T1w")
        b.anat(sub, "b", "T1w")
        b.anat(sub, "b", "T2w")
        b.pet(sub, "p", "AV45")
        b.sessions(sub, [
            {"session_id": "ses-a", "acq_time": "2020-01-01T10:00:00", "centiloid": None},
            {"session_id": "ses-b", "acq_time": "2020-04-01T10:00:00", "centiloid": None},
            {"session_id": "ses-p", "acq_time": "2020-01-21T10:00:00", "centiloid": 10.0 + 40 * k}])
    return enlarge(root)


def enlarge(root: Path) -> Path:
    """Give every image of a hand-built tree 12 voxels per axis (the input checks refuse 4);
    a 4D PET keeps its frames. The fakes only read the values."""
    import nibabel as nib

    for path in root.rglob("*.nii.gz"):
        frames = nib.load(path).shape[3:]
        write_nifti(path, (12, 12, 12, *frames), value=2.0)
    return root


def options(bids: Path, out: Path) -> RunOptions:
    return RunOptions(bids_dir=bids, output_dir=out, analysis_level="group",
                      skip_bids_validation=True)


def pet_registered_through(out: Path, sub: str) -> str:
    cache = drv.pet_slice_cache(out, sub, "p", "AV45")
    return json.loads(drv.sidecar_of(cache).read_text())["MRISession"]


# --------------------------------------------------------------------------- one pairing


def test_multi_contrast_run_registers_the_pet_through_the_session_the_cohort_lists(
        fakes: None, tmp_path: Path) -> None:
    bids, out = two_session_dataset(tmp_path / "bids"), tmp_path / "out"
    assert participant(bids, out, "--contrasts", "T1w", "T2w") == 0
    cfg = apply_overrides(AppConfig(), {"cohort": {"contrasts": ["T1w", "T2w"], "n_folds": 3,
                                                   "val_fold": 0, "test_fold": 1}})
    cohort, excluded = build_cohort(collect_inventory(options(bids, out), cfg), cfg)
    assert excluded.empty and len(cohort) == 3
    assert set(cohort["mri_session"]) == {"ses-b"}
    assert {pet_registered_through(out, s) for s in SUBJECTS} == {"ses-b"}
    usable, missing = check_caches(cohort, out, ("T1w", "T2w"))
    assert len(usable) == 3 and missing.empty


def test_pet_registered_through_another_session_is_left_out_with_the_reason(
        fakes: None, tmp_path: Path) -> None:
    """A participant run for T1w + T2w registers the PET through ses-b; a T1w-only group run
    pairs it with ses-a (closer, and it has the T1w): that row is not trained on, and says why."""
    bids, out = two_session_dataset(tmp_path / "bids"), tmp_path / "out"
    assert participant(bids, out, "--contrasts", "T1w", "T2w") == 0
    assert {pet_registered_through(out, s) for s in SUBJECTS} == {"ses-b"}
    cfg = apply_overrides(AppConfig(), {"cohort": {"n_folds": 3, "val_fold": 0, "test_fold": 1}})
    cohort, _ = build_cohort(collect_inventory(options(bids, out), cfg), cfg)
    assert set(cohort["mri_session"]) == {"ses-a"}
    assert all(drv.mri_slice_cache(out, s, "a", "T1w").is_file() for s in SUBJECTS)
    usable, missing = check_caches(cohort, out, ("T1w",))
    assert usable.empty and len(missing) == 3
    assert missing["reason"].str.contains("was registered through ses-b, the cohort pairs it "
                                          "with ses-a").all()
    # the cohort with the participant run's contrasts lists what it did
    cohort, _ = build_cohort(collect_inventory(options(bids, out), cfg), cfg, ("T2w",))
    assert set(cohort["mri_session"]) == {"ses-b"}
    assert len(check_caches(cohort, out, ("T1w", "T2w"))[0]) == 3


# --------------------------------------------------------------------------- --session-label


@pytest.mark.parametrize("label", ["d0129", "d0150"])
def test_session_label_does_not_orphan_pet_or_mri_in_another_session(
        fakes: None, tmp_path: Path, label: str, caplog: pytest.LogCaptureFixture) -> None:
    """OASIS-3 layout: MR ses-d0129, its PiB ses-d0150. Either label processes both."""
    bids = tmp_path / "oasis"
    enlarge(clinica_oasis3_dataset(bids).root)
    out = tmp_path / "out"
    caplog.set_level("INFO", logger="bids_amyloid")
    assert participant(bids, out, "--session-label", label) == 0
    sub = "OAS30001"
    assert drv.mri_slice_cache(out, sub, "d0129", "T1w").is_file()
    cache = drv.pet_slice_cache(out, sub, "d0150", "PIB")
    assert json.loads(drv.sidecar_of(cache).read_text())["MRISession"] == "ses-d0129"
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_desc-slices_*.npy"))
    assert made == [f"sub-{sub}/ses-d0129/anat/sub-{sub}_ses-d0129_space-MNI152NLin2009aSym_"
                    "desc-slices_T1w.npy",
                    f"sub-{sub}/ses-d0150/pet/sub-{sub}_ses-d0150_trc-PIB_space-MNI152NLin2009aSym_"
                    "desc-slices_pet.npy"]
    assert f"--session-label {label}: 1 MRI sessions and 1 PET scans selected" in caplog.text
    assert "added:" in caplog.text and "FAILED" not in caplog.text


# --------------------------------------------------------------------------- the caches' parameters


def write_caches(out: Path, cfg: AppConfig, sub: str) -> None:
    """One MRI and one PET cache of ``sub`` whose sidecars record ``cfg``'s parameters, as the
    participant level's staging writes them."""
    rng = np.random.default_rng(int(sub))
    drv.write_slice_cache(drv.mri_slice_cache(out, sub, "01", "T1w"),
                          rng.random((3, 8, 8)).astype(np.float32), [1, 2, 3],
                          {"Parameters": unit_parameters(cfg, "mri")})
    drv.write_slice_cache(drv.pet_slice_cache(out, sub, "02", "AV45"),
                          rng.random((5, 8, 8)).astype(np.float32), [0, 1, 2, 3, 4],
                          {"Parameters": unit_parameters(cfg, "pet"), "MRISession": "ses-01"})


def cohort_rows(subjects: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{"participant_id": f"sub-{s}", "mri_session": "ses-01",
                          "pet_session": "ses-02", "tracer": "AV45", "centiloid": 30.0,
                          "label": 1, "days_apart": 10, "split": "train"} for s in subjects])


def test_caches_made_with_two_parameter_sets_are_refused_naming_the_fields(tmp_path: Path) -> None:
    out = tmp_path / "out"
    one = apply_overrides(AppConfig(), {"preproc": {"gamma": 0.8, "n_slices": 30}})
    other = apply_overrides(one, {"preproc": {"gamma": 1.0, "pet_fwhm_mm": 6.0}})
    for sub in ("01", "02", "03"):
        write_caches(out, one, sub)
    write_caches(out, other, "04")
    with pytest.raises(UsageError) as err:
        cache_parameters(cohort_rows(["01", "02", "03", "04"]), out, ("T1w",))
    text = str(err.value)
    assert "(gamma, pet_fwhm_mm)" in text  # the two fields that differ, and only those
    assert "n_slices" not in text and "skull_strip" not in text
    assert "gamma: 0.8 (6 files, e.g. sub-01/ses-01/anat/" in text
    assert "1.0 (2 files, e.g. sub-04/ses-01/anat/sub-04_ses-01_space-MNI152NLin2009aSym_" \
           "desc-slices_T1w.npy)" in text
    assert "pet_fwhm_mm: 6.0 (1 files, e.g. sub-04/ses-02/pet/" in text
    # without sub-04 they agree, and the model records their values, not the run's
    params = cache_parameters(cohort_rows(["01", "02", "03"]), out, ("T1w",))
    assert params["gamma"] == 0.8 and params["n_slices"] == 30 and params["pet_fwhm_mm"] == 8.0
    group = AppConfig()  # a group run without the participant's --config
    recorded = with_cache_parameters(group, params)
    assert recorded.preproc.gamma == 0.8 and recorded.preproc.n_slices == 30
    assert recorded.preproc.slice_range == (0.4, 0.6) and recorded.model == group.model


def test_caches_without_recorded_parameters(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    out = tmp_path / "out"
    write_caches(out, AppConfig(), "01")
    drv.write_slice_cache(drv.mri_slice_cache(out, "02", "01", "T1w"),
                          np.zeros((3, 8, 8), np.float32), [1, 2, 3], {"Contrast": "T1w"})
    with pytest.raises(UsageError, match=r"1 slice caches record no preprocessing "
                                             r"parameters while others do .*sub-02"):
        cache_parameters(cohort_rows(["01", "02"]), out, ("T1w",), with_pet=False)
    assert cache_parameters(cohort_rows(["02"]), out, ("T1w",), with_pet=False) == {}
    cfg = apply_overrides(AppConfig(), {"preproc": {"gamma": 0.7}})
    assert with_cache_parameters(cfg, {}) is cfg
    assert "record no preprocessing parameters" in caplog.text


# --------------------------------------------------------------------------- the chain, slow

PARTICIPANT_TOML = """
[preproc]
skull_strip = "deepbet"          # default hdbet
gamma = 0.8                      # default 0.9
registration_iterations = [40, 10]
pet_realign = false
n_slices = 12                    # default 40 (a slice field)
"""
GROUP_TOML = """
[cohort]
n_folds = 3
val_fold = 1
test_fold = 2

[model]
backbone = "test_vit"
image_size = 32

[train]
n_train_slices = 5
bootstrap = 20
amp = false
ablate = ["no-triplet"]  # phase 2 needs two validation subjects; this cohort has one

[pretrain]
max_epochs = 1
batch_size = 2

[contrastive]
max_epochs = 1
batch_size = 2
accumulation = 1

[distill]
max_epochs = 1
batch_size = 2
accumulation = 1
"""
CHANGED = {"skull_strip": "deepbet", "gamma": 0.8, "registration_iterations": [40, 10],
           "n_slices": 12}
HELD_OUT = ("001", "003")  # the validation and test subjects of this cohort and split


def stamps(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("sub-*/**/*")
            if p.is_file()}


@pytest.mark.slow
def test_chain_participant_config_to_group_to_predict(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """participant --config (MRI and slice fields changed) → group without it → predict on
    the held-out subjects' raw MRI: predict preprocesses with the caches' parameters and
    gives the group level's validation/test probabilities; a cohort whose caches mix two
    parameter sets is refused naming the field; re-runs are no-ops.

    4 simulated subjects (size tiny), PET and MRI in different sessions: ``--session-label
    d0000`` selects one PET or MRI session per subject and its partner (4 MRI + 4 PET).
    """
    from bids_amyloid.models import read_model_file
    from bids_amyloid.simulate import simulate_cohort

    bids = simulate_cohort(tmp_path / "bids", 4, seed=2, size="tiny")
    out = tmp_path / "out"
    pconf = tmp_path / "participant.toml"
    pconf.write_text(PARTICIPANT_TOML)
    gconf = tmp_path / "group.toml"
    gconf.write_text(GROUP_TOML)
    select = ["--session-label", "d0000", "--skip-bids-validation", "-q"]
    assert main([str(bids), str(out), "participant", "--config", str(pconf), "--nprocs", "2",
                 *select]) == 0
    caches = sorted(out.rglob("*_desc-slices_*.npy"))
    assert len(caches) == 8  # 4 MRI sessions (T1w) and 4 PET scans, nothing else
    for cache in caches:
        params = drv.read_slice_cache(cache)[2]["Parameters"]
        assert {k: params[k] for k in CHANGED} == CHANGED
    made = stamps(out)
    assert main([str(bids), str(out), "participant", "--config", str(pconf), *select]) == 0
    assert stamps(out) == made, "a participant re-run rewrote outputs"

    # group level, without the participant's --config
    assert main([str(bids), str(out), "group", "--stage", "all", "--config", str(gconf),
                 "--deterministic", *select]) == 0
    run = out / "group" / "default"
    cohort = pd.read_csv(run / "cohort.tsv", sep="\t", dtype=str)
    held = cohort[cohort["split"] != "train"]
    assert sorted(held["participant_id"]) == [f"sub-{s}" for s in HELD_OUT]
    model = run / "student_T1w.pt"
    recorded = read_model_file(model)["config"]["preproc"]
    assert {k: recorded[k] for k in CHANGED} == CHANGED
    assert recorded["pet_realign"] is False and recorded["slice_size"] == 224
    preds = pd.read_csv(run / "predictions.tsv", sep="\t", dtype={"probability": float})
    group = preds[preds["model"] == "student_T1w"].set_index("participant_id")["probability"]

    # predict on the held-out subjects' raw MRI, into an empty OUT: preprocessed anew
    fresh = tmp_path / "fresh"
    # --nprocs 2: spawned workers like the participant run's, so ITK's thread count (read once
    # per process, and registrations depend on it) is not whatever this test process used first
    args = ["predict", "--model", str(model), "--participant-label", *HELD_OUT,
            "--skip-bids-validation", "-q", "--nprocs", "2"]
    assert main([str(bids), str(fresh), *args]) == 0
    for sub in HELD_OUT:
        (cache,) = (fresh / f"sub-{sub}").rglob("*_desc-slices_T1w.npy")
        params = drv.read_slice_cache(cache)[2]["Parameters"]
        assert {k: params[k] for k in CHANGED} == CHANGED
        (made_by_participant,) = (out / f"sub-{sub}").rglob("*_desc-slices_T1w.npy")
        np.testing.assert_array_equal(drv.read_slice_cache(cache)[0],
                                      drv.read_slice_cache(made_by_participant)[0],
                                      err_msg=f"sub-{sub}: predict's slices differ")
    table = pd.read_csv(fresh / "predict" / "student_T1w" / "predictions.tsv", sep="\t")
    assert len(table) == len(HELD_OUT)
    for _, row in table.iterrows():
        assert row["probability"] == pytest.approx(group[row["participant_id"]], abs=1e-5, rel=0)

    # predict in the participant level's OUT: its caches fit the model, reused as they are
    before = stamps(out)
    assert main([str(bids), str(out), *args]) == 0
    assert {k: v for k, v in stamps(out).items() if k in before} == before
    folder = out / "predict" / "student_T1w"
    assert not (folder / "derivatives").exists(), "predict preprocessed instead of reusing"
    again = pd.read_csv(folder / "predictions.tsv", sep="\t")
    assert again["probability"].tolist() == pytest.approx(table["probability"].tolist(),
                                                          abs=1e-5, rel=0)

    # one subject's PET redone with another PET setting: only its PET is redone, and a
    # cohort over both parameter sets is refused, naming the field
    mixed = tmp_path / "mixed.toml"
    mixed.write_text(PARTICIPANT_TOML + "pet_fwhm_mm = 6.0\n")
    mri_before = {k: v for k, v in stamps(out).items() if "sub-004" in k and "/anat/" in k}
    assert main([str(bids), str(out), "participant", "--config", str(mixed),
                 "--participant-label", "004", *select]) == 0
    assert {k: v for k, v in stamps(out).items() if k in mri_before} == mri_before
    caplog.clear()
    code = main([str(bids), str(out), "group", "--stage", "all", "--config", str(gconf),
                 "--run-name", "mixed", *select])
    assert code == 64
    assert "made with different preprocessing parameters (pet_fwhm_mm)" in caplog.text
    assert "pet_fwhm_mm: 6.0 (1 files, e.g. sub-004/ses-d0000/pet/" in caplog.text
    assert not (out / "group" / "mixed" / "student_T1w.pt").exists()
