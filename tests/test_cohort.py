"""The cohort: pairing window, labels, exclusions, split, determinism, files."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_amyloid.bids import (
    DAY_OFFSET_EPOCH,
    Inventory,
    MRISession,
    PETScan,
    SkippedScan,
    pair_pet_with_mri,
    pair_scans,
)
from bids_amyloid.cohort import (
    COHORT_COLUMNS,
    EXCLUSION_CODES,
    build_cohort,
    label_of,
    load_cohort,
    required_contrasts,
    run_cohort_stage,
    threshold_for,
)
from bids_amyloid.config import AppConfig, CohortConfig, apply_overrides
from bids_amyloid.errors import InputDataError, NothingSelectedError, UsageError
from bids_amyloid.io import to_tsv
from bids_amyloid.options import RunOptions
from tests.bids_builders import BidsBuilder, simple_dataset

D0 = datetime.date(2015, 3, 1)


def dated(ses: str, day: int | None, offset: bool) -> tuple[datetime.date | None, str]:
    """A test date and its source: calendar days from D0, or an OASIS day offset."""
    if day is None:
        return None, "no date: nothing"
    if offset:
        return DAY_OFFSET_EPOCH + datetime.timedelta(days=day), f"day offset ses-{ses}"
    return D0 + datetime.timedelta(days=day), "sessions.tsv acq_time"


def mri(sub: str, ses: str, day: int | None, contrasts=("T1w",), offset: bool = False
        ) -> MRISession:
    date, source = dated(ses, day, offset)
    return MRISession(sub, ses, date, source, {c: Path(f"/x/sub-{sub}_ses-{ses}_{c}.nii.gz")
                                               for c in contrasts})


def pet(sub: str, ses: str, day: int | None, cl: float | None = 30.0, tracer: str = "AV45",
        note: str = "sessions.tsv centiloid", offset: bool = False) -> PETScan:
    date, source = dated(ses, day, offset)
    return PETScan(sub, ses, tracer, date, source,
                   Path(f"/x/sub-{sub}_ses-{ses}_trc-{tracer}_pet.nii.gz"), cl, note)


def filler(n: int = 10, start: int = 80) -> tuple[list[MRISession], list[PETScan]]:
    """``n`` ordinary subjects (alternating negative/positive) so a 5-fold split exists."""
    subs = [f"{start + i:02d}" for i in range(n)]
    return ([mri(s, "m", 0) for s in subs],
            [pet(s, "p", 10, cl=5.0 if i % 2 else 60.0) for i, s in enumerate(subs)])


def cohort_of(mris, pets, skipped=(), cfg=None, contrasts=()):
    fm, fp = filler()
    inv = Inventory(tuple(mris) + tuple(fm), tuple(pets) + tuple(fp), tuple(skipped))
    return build_cohort(inv, cfg or AppConfig(), contrasts)


# ----------------------------------------------------------------- pairing


@pytest.mark.parametrize("days,paired", [(365, True), (366, False), (-365, True), (-366, False)])
def test_window_boundary(days, paired):
    inv = Inventory((mri("01", "m", 0),), (pet("01", "p", days),))
    ((_, session, reason),) = pair_pet_with_mri(inv, ("T1w",), 365)
    assert (session is not None) == paired
    if not paired:
        assert reason.startswith("no_mri_within_window") and "366 days" in reason


def test_window_boundary_in_cohort_tsv():
    cohort, excluded = cohort_of([mri("01", "m", 0), mri("02", "m", 0)],
                                 [pet("01", "p", 365), pet("02", "p", 366)])
    row = cohort[cohort["participant_id"] == "sub-01"].iloc[0]
    assert row["days_apart"] == 365
    assert list(excluded["participant_id"]) == ["sub-02"]
    assert excluded["reason"].iloc[0] == "no_mri_within_window"


def test_closest_session_wins_and_ties_go_to_the_earlier_mri():
    inv = Inventory((mri("01", "a", 0), mri("01", "b", 200), mri("01", "c", 260)),
                    (pet("01", "p", 230), pet("01", "q", 190)))
    got = {p.ses: m.ses for p, m, _ in pair_pet_with_mri(inv, ("T1w",), 365)}
    assert got == {"p": "b", "q": "b"}
    inv = Inventory((mri("01", "late", 20), mri("01", "early", 0)), (pet("01", "p", 10),))
    ((_, m, _),) = pair_pet_with_mri(inv, ("T1w",), 365)
    assert m.ses == "early"


def test_pairing_needs_every_contrast():
    inv = Inventory((mri("01", "near", 5, ("T1w",)), mri("01", "far", 100, ("T1w", "T2w"))),
                    (pet("01", "p", 0),))
    ((_, m, _),) = pair_pet_with_mri(inv, ("T1w", "T2w"), 365)
    assert m.ses == "far"
    ((_, m, _),) = pair_pet_with_mri(inv, ("T1w",), 365)
    assert m.ses == "near"


def test_cohort_pairs_only_with_a_session_the_pet_can_be_registered_through():
    """A FLAIR-only cohort still needs the T1w: the participant level registers every PET
    through its session's T1w (one pairing rule, bids.pair_scans)."""
    near = mri("01", "near", 5, ("FLAIR",))
    far = mri("01", "far", 100, ("T1w", "FLAIR"))
    inv = Inventory((near, far), (pet("01", "p", 0),))
    ((_, m, _),) = pair_scans(inv, CohortConfig(contrasts=("FLAIR",)))
    assert m.ses == "far"
    ((_, m, reason),) = pair_scans(inv, CohortConfig(contrasts=("FLAIR",), pair_window_days=50))
    assert m is None and reason.startswith("no_mri_within_window")


def test_required_contrasts_union_in_canonical_order():
    assert required_contrasts(("T1w",), ("FLAIR", "T1w", "T2w")) == ("T1w", "T2w", "FLAIR")
    with pytest.raises(UsageError, match="T1"):
        required_contrasts(("T1",))


# ----------------------------------------------------------------- labels


def test_threshold_is_strict_and_per_tracer():
    cfg = CohortConfig()
    assert label_of(20.6, threshold_for("AV45", cfg)) == 0
    assert label_of(20.600001, threshold_for("AV45", cfg)) == 1
    per = CohortConfig(tracer_thresholds={"PiB": 16.4, "AV45": 20.6})
    assert threshold_for("PIB", per) == 16.4 and threshold_for("FBB", per) == 20.6
    app = apply_overrides(AppConfig(), {"cohort": {"tracer_thresholds": {"11CPIB": 16.4}}})
    cohort, _ = cohort_of(
        [mri(s, "m", 0) for s in ("01", "02", "03", "04")],
        [pet("01", "p", 0, cl=20.6), pet("02", "p", 0, cl=20.7),
         pet("03", "p", 0, cl=16.4, tracer="PIB"), pet("04", "p", 0, cl=16.5, tracer="PIB")],
        cfg=app)
    labels = dict(zip(cohort["participant_id"], cohort["label"], strict=True))
    assert [labels[f"sub-0{i}"] for i in range(1, 5)] == [0, 1, 0, 1]


# ----------------------------------------------------------------- exclusions


def test_every_exclusion_reason():
    mris = [mri("02", "m", 0, ("T1w",)), mri("03", "m", 0), mri("04", "m", 0),
            mri("05", "m", 0), mri("06", "m", 0), mri("07", "m", 0), mri("08", "m", 0),
            mri("09", "m", 0), mri("10", "m", 0), mri("11", "m", None, ("T1w", "T2w"))]
    mris = [m if m.sub in ("02", "11") else mri(m.sub, "m", 0, ("T1w", "T2w")) for m in mris]
    pets = [
        pet("01", "p", 0),                                   # no MRI at all
        pet("02", "p", 0),                                   # T2w missing
        pet("03", "p", 500),                                 # too far
        pet("04", "p", None),                                # PET undated
        pet("05", "p", 0, offset=True),                      # day offset vs calendar
        pet("06", "p", 0, cl=None, note="centiloid_missing: no value"),
        pet("07", "p", 0, cl=None, note="centiloid_nan: sessions.tsv centiloid = 'nan'"),
        pet("08", "p", 0, cl=None, note="centiloid_non_numeric: sessions.tsv centiloid = 'x'"),
        pet("09", "p", 0, cl=None, note="centiloid_contradictory: 10 vs 50"),
        pet("10", "p", 0, cl=None, note="no_suvr_equation: none for PIB"),
        pet("11", "p", 0),                                   # MRI undated
    ]
    skipped = [SkippedScan("12", "p", Path("/x/sub-12_ses-p_trc-FDG_pet.nii.gz"),
                           "not_amyloid_tracer: 'FDG' (trc- entity)"),
               SkippedScan("13", "p", Path("/x/sub-13_ses-p_pet.nii.gz"),
                           "unknown_tracer: no trc- entity and no TracerName")]
    fm, fp = filler()
    fm = [mri(m.sub, m.ses, 0, ("T1w", "T2w")) for m in fm]
    inv = Inventory(tuple(mris + fm), tuple(pets + fp), tuple(skipped))
    cohort, excluded = build_cohort(inv, AppConfig(), ("T1w", "T2w"))
    reasons = dict(zip(excluded["participant_id"], excluded["reason"], strict=True))
    assert reasons == {
        "sub-01": "no_mri", "sub-02": "missing_contrast", "sub-03": "no_mri_within_window",
        "sub-04": "no_date", "sub-05": "dates_not_comparable", "sub-06": "centiloid_missing",
        "sub-07": "centiloid_nan", "sub-08": "centiloid_non_numeric",
        "sub-09": "centiloid_contradictory", "sub-10": "no_suvr_equation", "sub-11": "no_date",
        "sub-12": "not_amyloid_tracer", "sub-13": "unknown_tracer",
    }
    assert set(reasons.values()) == set(EXCLUSION_CODES)
    assert not set(cohort["participant_id"]) & set(reasons)
    assert (excluded["detail"].str.len() > 0).all()


def test_several_reasons_are_all_listed():
    _, excluded = cohort_of([], [pet("01", "p", 0, cl=None, note="centiloid_nan: x = 'nan'")])
    assert excluded["reason"].iloc[0] == "no_mri;centiloid_nan"


# ----------------------------------------------------------------- split


def _big_inventory(n: int = 24) -> Inventory:
    """Subjects with 1–3 MRI sessions and 1–3 PET scans of two tracers."""
    rng = np.random.default_rng(0)
    mris, pets = [], []
    for i in range(n):
        sub = f"{i:03d}"
        for k in range(1 + i % 3):
            mris.append(mri(sub, f"m{k}", 400 * k))
            tracer = "PIB" if (i + k) % 2 else "AV45"
            pets.append(pet(sub, f"p{k}", 400 * k + 30, cl=float(rng.uniform(-10, 90)),
                            tracer=tracer))
    return Inventory(tuple(mris), tuple(pets))


def test_no_subject_in_two_splits():
    cohort, _ = build_cohort(_big_inventory(), AppConfig())
    assert set(cohort["split"]) == {"train", "val", "test"}
    assert (cohort.groupby("participant_id")["split"].nunique() == 1).all()
    assert len(cohort) > cohort["participant_id"].nunique()  # several pairs per subject
    share = cohort.groupby("split")["participant_id"].nunique() / cohort["participant_id"].nunique()
    assert 0.1 <= share["val"] <= 0.3 and 0.1 <= share["test"] <= 0.3


def test_split_is_the_protocols_stratified_group_kfold():
    from sklearn.model_selection import StratifiedGroupKFold

    cohort, _ = build_cohort(_big_inventory(), AppConfig())
    folds = StratifiedGroupKFold(5, shuffle=True, random_state=42).split(
        np.zeros(len(cohort)), cohort["label"], groups=cohort["participant_id"])
    expected = np.empty(len(cohort), dtype=object)
    for k, (_, idx) in enumerate(folds):
        expected[idx] = "val" if k == 0 else "test" if k == 1 else "train"
    assert list(cohort["split"]) == list(expected)


def test_unstratifiable_cohort_falls_back_to_group_kfold(caplog):
    inv = Inventory(tuple(mri(f"{i}", "m", 0) for i in range(7)),
                    tuple(pet(f"{i}", "p", 0, cl=50.0 if i < 3 else 1.0) for i in range(7)))
    cohort, _ = build_cohort(inv, AppConfig())  # 3 positives, 4 negatives: < 5 folds each
    assert cohort.attrs["split_method"] == "GroupKFold"
    assert "NOT stratified" in caplog.text
    assert set(cohort["split"]) == {"train", "val", "test"}
    assert (cohort.groupby("participant_id")["split"].nunique() == 1).all()
    big, _ = build_cohort(_big_inventory(), AppConfig())
    assert big.attrs["split_method"] == "StratifiedGroupKFold"


def test_too_few_subjects_for_the_split():
    inv = Inventory(tuple(mri(s, "m", 0) for s in "123"), tuple(pet(s, "p", 0) for s in "123"))
    with pytest.raises(NothingSelectedError, match="3 subjects"):
        build_cohort(inv, AppConfig())


# ----------------------------------------------------------------- files and determinism


def _dataset(root: Path, order: list[int]) -> BidsBuilder:
    b = BidsBuilder(root)
    for i in order:
        sub = f"{i:02d}"
        b.anat(sub, "d0000", "T1w")
        b.pet(sub, "d0100", "PIB" if i % 2 else "AV45")
        b.pet(sub, "d0500", "AV45")
        b.sessions(sub, [{"session_id": "ses-d0100", "centiloid": 3.0 * i},
                         {"session_id": "ses-d0500", "centiloid": 4.5 * i}])
    return b


def _run(root: Path, out: Path, **kw) -> int:
    opts = RunOptions(bids_dir=root, output_dir=out, analysis_level="group", stage="cohort",
                      skip_bids_validation=True, **kw)
    return run_cohort_stage(opts, AppConfig())


def test_cohort_files_are_byte_identical(tmp_path, capsys):
    a = _dataset(tmp_path / "a", list(range(1, 9)))
    b = _dataset(tmp_path / "b", list(range(8, 0, -1)))  # same data, written in reverse order
    assert _run(a.root, tmp_path / "out1") == 0
    assert _run(a.root, tmp_path / "out2") == 0
    assert _run(b.root, tmp_path / "out3") == 0
    files = [tmp_path / f"out{i}/group/default/cohort.tsv" for i in (1, 2, 3)]
    assert files[0].read_bytes() == files[1].read_bytes() == files[2].read_bytes()
    excl = [tmp_path / f"out{i}/group/default/excluded.tsv" for i in (1, 3)]
    assert excl[0].read_bytes() == excl[1].read_bytes()
    text = files[0].read_text()
    assert text.splitlines()[0].split("\t") == list(COHORT_COLUMNS)
    assert "\r" not in text and not list(files[0].parent.glob(".tmp-*"))
    provenance = pd.read_csv(files[0].parent / "provenance.tsv", sep="\t")
    assert set(provenance["modality"]) == {"MRI", "PET"} and len(provenance) == 8 * 3
    assert set(provenance["date_source"].str.split(" ses-").str[0]) == {"day offset"}
    assert provenance["date"].iloc[0] == "day 0"
    printed = capsys.readouterr().out
    assert "train" in printed and "positive_pct" in printed and "no_mri_within_window" in printed


def test_load_cohort_round_trip_and_checks(tmp_path):
    cohort, _ = build_cohort(_big_inventory(), AppConfig())
    path = tmp_path / "cohort.tsv"
    path.write_text(to_tsv(cohort))
    loaded = load_cohort(path)
    pd.testing.assert_frame_equal(loaded, cohort)
    bad = cohort.copy()
    first = bad.index[bad["participant_id"] == "sub-002"][0]  # a subject with 3 pairs
    bad.loc[first, "split"] = "test" if bad.loc[first, "split"] != "test" else "val"
    path.write_text(to_tsv(bad))
    with pytest.raises(InputDataError, match="several splits"):
        load_cohort(path)
    path.write_text(to_tsv(cohort.drop(columns=["label"])))
    with pytest.raises(InputDataError, match="label"):
        load_cohort(path)


def test_nothing_paired_writes_reasons_and_fails(tmp_path):
    b = simple_dataset(tmp_path / "bids", n_subjects=2)
    for i in (1, 2):
        (b.root / f"sub-0{i}/sub-0{i}_sessions.tsv").unlink()  # no dates, no Centiloid
    with pytest.raises(NothingSelectedError, match=r"excluded\.tsv"):
        _run(b.root, tmp_path / "out")
    excluded = pd.read_csv(tmp_path / "out/group/default/excluded.tsv", sep="\t")
    assert set(excluded["reason"]) == {"no_date;centiloid_missing"}


def test_teacher_contrasts_make_a_modality_consistent_cohort(tmp_path, capsys):
    b = simple_dataset(tmp_path / "bids", n_subjects=11)
    (b.root / "sub-11/ses-01/anat/sub-11_ses-01_T2w.nii.gz").unlink()
    assert _run(b.root, tmp_path / "out", teacher_contrasts=("T1w", "T2w")) == 0
    cohort = load_cohort(tmp_path / "out/group/default/cohort.tsv")
    assert "sub-11" not in set(cohort["participant_id"]) and len(cohort) == 10
    assert _run(b.root, tmp_path / "out", run_name="t1only") == 0
    assert len(load_cohort(tmp_path / "out/group/t1only/cohort.tsv")) == 11


@pytest.mark.slow
def test_cohort_of_the_simulated_dataset(tmp_path, capsys):
    """End to end on bids_amyloid.simulate's OASIS-like layout, with BIDS validation."""
    simulate = pytest.importorskip("bids_amyloid.simulate")
    root = simulate.simulate_cohort(tmp_path / "sim", n_subjects=6, seed=3, size="small")
    from bids_amyloid.cli import main

    assert main([str(root), str(tmp_path / "out"), "group", "--stage", "cohort", "-q"]) == 0
    folder = tmp_path / "out/group/default"
    cohort = load_cohort(folder / "cohort.tsv")
    excluded = pd.read_csv(folder / "excluded.tsv", sep="\t")
    provenance = pd.read_csv(folder / "provenance.tsv", sep="\t")
    n_pet = int((provenance["modality"] == "PET").sum())
    assert len(cohort) + len(excluded) == n_pet > 0
    assert (cohort["days_apart"] <= 365).all()
    assert set(excluded["reason"]) <= {"no_mri_within_window", "missing_contrast"}
    assert (cohort["label"] == (cohort["centiloid"] > 20.6).astype(int)).all()
    assert set(cohort["tracer"]) <= {"PIB", "AV45"}
    assert (cohort.groupby("participant_id")["split"].nunique() == 1).all()
    # PET and MRI are never on the same day in the simulator: pairs are across sessions
    assert (cohort["mri_session"] != cohort["pet_session"]).all()


@pytest.mark.parametrize("bad", [{"pair_window_days": -1}, {"val_fold": 1, "test_fold": 1},
                                 {"test_fold": 7}, {"contrasts": ["T1"]},
                                 {"tracer_thresholds": {"FDG": 1.0}}])
def test_impossible_settings_fail_before_reading(tmp_path, bad):
    from bids_amyloid.cohort import check_cohort_config

    cfg = apply_overrides(AppConfig(), {"cohort": bad})
    with pytest.raises(UsageError):
        check_cohort_config(cfg.cohort)
    opts = RunOptions(bids_dir=tmp_path / "nowhere", output_dir=tmp_path / "out",
                      analysis_level="group")
    from bids_amyloid.cohort import make_cohort

    with pytest.raises(UsageError):  # not InputMissingError: checked before touching BIDS
        make_cohort(opts, cfg)
