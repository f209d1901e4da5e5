"""Reading real-world BIDS: layouts, dates, tracers, Centiloid columns, filters, validation."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest

from bids_amyloid.bids import (
    DAY_OFFSET_EPOCH,
    collect_inventory,
    day_offset,
    pair_pet_with_mri,
    pair_scans,
    parse_date,
    validate_bids,
)
from bids_amyloid.centiloid import EQUATIONS, get_equation, parse_equations
from bids_amyloid.config import AppConfig, apply_overrides
from bids_amyloid.errors import InvalidBIDSError, NothingSelectedError, UsageError
from bids_amyloid.options import RunOptions
from bids_amyloid.tracers import normalise_tracer
from tests.bids_builders import (
    BidsBuilder,
    clinica_adni_dataset,
    clinica_oasis3_dataset,
    simple_dataset,
)


def options(root: Path, tmp_path: Path, **kw) -> RunOptions:
    kw.setdefault("skip_bids_validation", True)
    return RunOptions(bids_dir=root, output_dir=tmp_path / "out", analysis_level="group", **kw)


def config(**cohort) -> AppConfig:
    return apply_overrides(AppConfig(), {"cohort": cohort}) if cohort else AppConfig()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


# ----------------------------------------------------------------- Clinica layouts


def test_clinica_adni_layout(tmp_path):
    root = tmp_path / "adni"
    clinica_adni_dataset(root)
    before = snapshot(root)
    cfg = config(suvr_equation="av45-adni-berkeley")
    inv = collect_inventory(options(root, tmp_path, skip_bids_validation=False), cfg)
    assert snapshot(root) == before, "BIDS_DIR must never be written"
    assert [(m.sub, m.ses) for m in inv.mri] == [
        ("ADNI011S0002", "M000"), ("ADNI011S0002", "M024"), ("ADNI022S0004", "M000")]
    first = inv.mri[0]
    assert first.date == datetime.date(2010, 6, 1)
    assert first.date_source == "sessions.tsv examination_date"
    # two T1w runs: the lowest run is used
    assert inv.mri[2].images["T1w"].name == "sub-ADNI022S0004_ses-M000_run-1_T1w.nii.gz"
    assert [(p.sub, p.tracer) for p in inv.pet] == [("ADNI011S0002", "AV45"),
                                                    ("ADNI022S0004", "AV45")]
    # adni_av45 SUVR 1.05 and 1.45 through 188.22·SUVR − 189.16
    assert inv.pet[0].centiloid == pytest.approx(8.47)
    assert inv.pet[1].centiloid == pytest.approx(83.76)
    assert "adni_av45" in inv.pet[0].centiloid_note
    assert "av45-adni-berkeley" in inv.pet[0].centiloid_note
    # FDG is not amyloid: skipped with a reason, not an error
    assert len(inv.skipped) == 1
    assert inv.skipped[0].reason.startswith("not_amyloid_tracer")
    pairs = pair_pet_with_mri(inv, ("T1w",), 365)
    assert [(m.ses if m else None) for _, m, _ in pairs] == ["M000", "M000"]


def test_clinica_adni_without_equation_has_no_centiloid(tmp_path):
    root = tmp_path / "adni"
    clinica_adni_dataset(root)
    inv = collect_inventory(options(root, tmp_path), config())
    assert all(p.centiloid is None for p in inv.pet)
    assert all(p.centiloid_note.startswith("centiloid_missing") for p in inv.pet)


def test_clinica_oasis3_layout(tmp_path):
    root = tmp_path / "oasis"
    clinica_oasis3_dataset(root)
    inv = collect_inventory(options(root, tmp_path, skip_bids_validation=False), config())
    by_ses = {(p.sub, p.ses): p for p in inv.pet}
    pib = by_ses[("OAS30001", "d0150")]
    assert pib.tracer == "PIB" and pib.centiloid == 2.5
    assert pib.date_source == "day offset ses-d0150"
    assert pib.date == DAY_OFFSET_EPOCH + datetime.timedelta(days=150)
    assert pib.centiloid_note == "sessions.tsv Centiloid_fSUVR_rsf_TOT_CORTMEAN"
    # no trc- entity: the tracer comes from the sidecar's TracerName
    assert by_ses[("OAS30002", "d0700")].tracer == "AV45"
    pairs = {(p.sub, p.ses): (m, r) for p, m, r in pair_pet_with_mri(inv, ("T1w",), 365)}
    assert pairs[("OAS30001", "d0150")][0].ses == "d0129"
    assert pairs[("OAS30001", "d1000")][0].ses == "d0757"
    assert pairs[("OAS30002", "d0700")][0] is None
    assert pairs[("OAS30002", "d0700")][1].startswith("no_mri_within_window")
    # T1w+T2w: only d0129 has both; the AV45 at d1000 is 871 days from it
    pairs = {(p.sub, p.ses): (m, r) for p, m, r in pair_pet_with_mri(inv, ("T1w", "T2w"), 365)}
    assert pairs[("OAS30001", "d0150")][0].ses == "d0129"
    assert pairs[("OAS30001", "d1000")][1].startswith("no_mri_within_window")
    assert pairs[("OAS30002", "d0700")][1].startswith("missing_contrast")


def _selected(inv):
    return ({(m.sub, m.ses) for m in inv.mri}, {(p.sub, p.ses) for p in inv.pet})


def test_session_label_keeps_pet_and_mri_of_other_sessions_together(tmp_path, caplog):
    """OASIS-3 layout: MR at ses-d0129, its PiB at ses-d0150 (21 days). Selecting either
    session selects both; a selected PET with no MRI in the window comes alone."""
    root = tmp_path / "oasis"
    clinica_oasis3_dataset(root)
    caplog.set_level("INFO", logger="bids_amyloid")
    mri_only = collect_inventory(options(root, tmp_path, session_labels=("d0129",)), config())
    assert _selected(mri_only) == ({("OAS30001", "d0129")}, {("OAS30001", "d0150")})
    assert "PIB PET added: paired with the selected MRI ses-d0129 (21 days apart)" in caplog.text
    caplog.clear()
    pet_only = collect_inventory(options(root, tmp_path, session_labels=("d1000",)), config())
    assert _selected(pet_only) == ({("OAS30001", "d0757")}, {("OAS30001", "d1000")})
    assert "MRI sub-OAS30001 ses-d0757 added: the selected sub-OAS30001 ses-d1000 AV45 PET is " \
           "paired with it (243 days apart)" in caplog.text
    caplog.clear()
    alone = collect_inventory(options(root, tmp_path, session_labels=("d0700",)), config())
    assert _selected(alone) == (set(), {("OAS30002", "d0700")})
    assert "pairs with no MRI session (no_mri_within_window" in caplog.text
    # the rule pairs with the run's contrasts: with T1w+T2w the AV45 at d1000 has no partner
    multi = collect_inventory(options(root, tmp_path, session_labels=("d1000",)),
                              config(contrasts=["T1w", "T2w"]))
    assert _selected(multi) == (set(), {("OAS30001", "d1000")})
    # MRI sessions of other labels are not pulled in by a selected MRI session
    both = collect_inventory(options(root, tmp_path, session_labels=("d0757", "d0000")), config())
    assert _selected(both) == ({("OAS30001", "d0757"), ("OAS30002", "d0000")},
                               {("OAS30001", "d1000")})
    # the selection pairs each PET with the session the whole dataset does (or with none)
    whole = {p.path: m and m.ses for p, m, _ in pair_scans(
        collect_inventory(options(root, tmp_path), config()), config().cohort)}
    for inv in (mri_only, pet_only, alone, both):
        for pet, m, _ in pair_scans(inv, config().cohort):
            assert whole[pet.path] == (m and m.ses)


def test_session_label_counts_centiloid_over_the_whole_subject(tmp_path):
    """participants.tsv holds one value per subject: it must not be given to one of a
    subject's two PET scans because --session-label selected only that one."""
    b = BidsBuilder(tmp_path / "bids")
    b.anat("01", "m", "T1w")
    b.pet("01", "p", "AV45")
    b.pet("01", "q", "AV45")
    b.sessions("01", [{"session_id": f"ses-{s}", "acq_time": f"2020-0{k}-01T10:00:00"}
                      for k, s in enumerate(("m", "p", "q"), 1)])
    b.participants([{"participant_id": "sub-01", "centiloid": 40.0}])
    inv = collect_inventory(options(b.root, tmp_path, session_labels=("p",)), config())
    (scan,) = inv.pet
    assert scan.ses == "p" and scan.centiloid is None
    assert scan.centiloid_note.startswith("centiloid_missing")


def test_simulator_layout_is_read(tmp_path):
    """The OASIS-like layout of bids_amyloid.simulate (ses-dNNNN + acq_time + centiloid)."""
    pytest.importorskip("bids_amyloid.simulate")
    b = BidsBuilder(tmp_path / "sim")
    b.anat("001", "d0000", "T1w")
    b.pet("001", "d0101", "PIB")
    b.sessions("001", [
        {"session_id": "ses-d0000", "acq_time": "2005-03-10T16:53:00", "centiloid": None,
         "tracer": None},
        {"session_id": "ses-d0101", "acq_time": "2005-06-19T15:25:00", "centiloid": 37.8,
         "tracer": "PIB"},
    ])
    inv = collect_inventory(options(b.root, tmp_path), config())
    # acq_time wins over the day-offset label
    assert inv.mri[0].date_source == "sessions.tsv acq_time"
    assert inv.pet[0].centiloid == 37.8
    (pet, mri, _), = pair_pet_with_mri(inv, ("T1w",), 365)
    assert mri is not None and (pet.date - mri.date).days == 101


# ----------------------------------------------------------------- dates


def test_date_parsing():
    assert parse_date("2012-05-04T10:11:12") == datetime.date(2012, 5, 4)
    assert parse_date("2012-05-04") == datetime.date(2012, 5, 4)
    assert parse_date("1867-06-15T13:45:30") == datetime.date(1867, 6, 15)  # shifted (BIDS)
    assert parse_date("05/04/2012") == datetime.date(2012, 5, 4)
    for missing in ("n/a", "", None, "2012-13-45", "yesterday"):
        assert parse_date(missing) is None
    assert day_offset("d0129") == 129
    assert day_offset("OAS30001_MR_d0129") == 129
    assert day_offset("M000") is None and day_offset("n/a") is None


def test_each_date_source_in_order_of_preference(tmp_path):
    b = BidsBuilder(tmp_path / "bids")
    # 01: scans.tsv acq_time beats sessions.tsv acq_time
    b.anat("01", "a", "T1w")
    b.scans("01", "a", [{"filename": "anat/sub-01_ses-a_T1w.nii.gz",
                         "acq_time": "2020-02-02T08:00:00"}])
    b.sessions("01", [{"session_id": "ses-a", "acq_time": "2019-01-01T00:00:00"}])
    # 02: sessions.tsv acq_time beats examination_date
    b.anat("02", "a", "T1w")
    b.sessions("02", [{"session_id": "ses-a", "acq_time": "2019-03-03T00:00:00",
                       "examination_date": "2000-01-01"}])
    # 03: examination_date (Clinica ADNI)
    b.anat("03", "M000", "T1w")
    b.sessions("03", [{"session_id": "ses-M000", "examination_date": "2011-04-04"}])
    # 04: day offset in the session label
    b.anat("04", "d0042", "T1w")
    # 05: day offset from source_session_id
    b.anat("05", "first", "T1w")
    b.sessions("05", [{"session_id": "ses-first", "source_session_id": "OAS30005_MR_d0077"}])
    # 06: nothing
    b.anat("06", "x", "T1w")
    # 07: an unreadable scans.tsv acq_time falls through to sessions.tsv (with a warning)
    b.anat("07", "a", "T1w")
    b.scans("07", "a", [{"filename": "anat/sub-07_ses-a_T1w.nii.gz", "acq_time": "soon"}])
    b.sessions("07", [{"session_id": "ses-a", "acq_time": "2018-08-08T08:08:08"}])
    inv = collect_inventory(options(b.root, tmp_path), config())
    got = {m.sub: (m.date, m.date_source) for m in inv.mri}
    epoch = DAY_OFFSET_EPOCH
    assert got["01"] == (datetime.date(2020, 2, 2), "scans.tsv acq_time")
    assert got["02"] == (datetime.date(2019, 3, 3), "sessions.tsv acq_time")
    assert got["03"] == (datetime.date(2011, 4, 4), "sessions.tsv examination_date")
    assert got["04"] == (epoch + datetime.timedelta(days=42), "day offset ses-d0042")
    assert got["05"] == (epoch + datetime.timedelta(days=77),
                         "day offset source_session_id OAS30005_MR_d0077")
    assert got["06"][0] is None and got["06"][1].startswith("no date")
    assert got["07"] == (datetime.date(2018, 8, 8), "sessions.tsv acq_time")


# ----------------------------------------------------------------- tracers


@pytest.mark.parametrize("alias,code", [
    ("18FAV45", "AV45"), ("AV45", "AV45"), ("florbetapir", "AV45"), ("FBP", "AV45"),
    ("[18F]florbetapir", "AV45"), ("11CPIB", "PIB"), ("PiB", "PIB"), ("[11C]PiB", "PIB"),
    ("18FFBB", "FBB"), ("florbetaben", "FBB"), ("18FFMM", "FMM"), ("flutemetamol", "FMM"),
    ("NAV4694", "NAV4694"), ("AZD4694", "NAV4694"), ("florbetapir F 18", "AV45"),
    ("F18-florbetapir", "AV45"), ("Flutemetamol (18F)", "FMM"), ("18F-AV-45", "AV45"),
    ("Pittsburgh compound B", "PIB"), ("Amyvid", "AV45"), ("Vizamyl", "FMM"),
])
def test_tracer_aliases(alias, code):
    assert normalise_tracer(alias) == code


@pytest.mark.parametrize("name", ["18FFDG", "FDG", "AV1451", "flortaucipir", "18F", ""])
def test_unknown_tracer_raises(name):
    with pytest.raises(ValueError, match="unknown amyloid tracer"):
        normalise_tracer(name)


def test_tracer_sources_and_skips(tmp_path):
    b = BidsBuilder(tmp_path / "bids")
    b.anat("01", "1", "T1w")
    b.pet("01", "1", None, tracer_name="[11C]Pittsburgh compound B", run=1)  # sidecar only
    b.pet("01", "1", None, acq="florbetaben", tracer_name="", run=2)  # OASIS-style acq- label
    b.pet("01", "1", "AV1451", tracer_name="flortaucipir", run=3)  # tau: not amyloid
    b.pet("01", "1", None, tracer_name="", run=4)  # nothing at all
    b.pet("01", "1", None, acq="dynamic", tracer_name="", run=5)  # acq- names no tracer
    inv = collect_inventory(options(b.root, tmp_path), config())
    assert sorted(p.tracer for p in inv.pet) == ["FBB", "PIB"]
    reasons = sorted(s.reason.split(":")[0] for s in inv.skipped)
    assert reasons == ["not_amyloid_tracer", "unknown_tracer", "unknown_tracer"]


# ----------------------------------------------------------------- Centiloid


def _one_pet(tmp_path: Path, sessions_cl=None, participants_cl=None, scans_cl=None,
             column: str = "centiloid") -> BidsBuilder:
    b = BidsBuilder(tmp_path / "bids")
    b.anat("01", "1", "T1w")
    b.pet("01", "1", "AV45")
    b.sessions("01", [{"session_id": "ses-1", "acq_time": "2020-01-01T00:00:00",
                       column: sessions_cl}])
    if participants_cl is not None:
        b.participants([{"participant_id": "sub-01", column: participants_cl}])
    if scans_cl is not None:
        b.scans("01", "1", [{"filename": "pet/sub-01_ses-1_trc-AV45_pet.nii.gz",
                             column: scans_cl}])
    return b


@pytest.mark.parametrize("column", ["centiloid", "Centiloid", "CENTILOIDS",
                                    "Centiloid_fSUVR_rsf_TOT_CORTMEAN"])
def test_centiloid_column_autodetect(tmp_path, column):
    b = _one_pet(tmp_path, sessions_cl=33.3, column=column)
    (pet,) = collect_inventory(options(b.root, tmp_path), config()).pet
    assert pet.centiloid == 33.3 and pet.centiloid_note == f"sessions.tsv {column}"


def test_centiloid_column_option(tmp_path):
    b = _one_pet(tmp_path, sessions_cl=12.0, column="amyloid_cl")
    cfg = config(centiloid_column="amyloid_cl")
    (pet,) = collect_inventory(options(b.root, tmp_path), cfg).pet
    assert pet.centiloid == 12.0
    with pytest.raises(UsageError, match="no_such_column"):
        collect_inventory(options(b.root, tmp_path), config(centiloid_column="no_such_column"))


@pytest.mark.parametrize("kw,value,code", [
    ({"participants_cl": 44.0}, 44.0, None),
    ({"sessions_cl": 10.0, "participants_cl": 10.0}, 10.0, None),
    ({"scans_cl": 5.0}, 5.0, None),
    ({}, None, "centiloid_missing"),
    ({"sessions_cl": "nan"}, None, "centiloid_nan"),
    ({"sessions_cl": "NaN"}, None, "centiloid_nan"),
    ({"sessions_cl": "high"}, None, "centiloid_non_numeric"),
    ({"sessions_cl": 10.0, "participants_cl": 50.0}, None, "centiloid_contradictory"),
    ({"sessions_cl": 10.0, "scans_cl": 11.0}, None, "centiloid_contradictory"),
])
def test_centiloid_sources_and_problems(tmp_path, kw, value, code):
    b = _one_pet(tmp_path, **kw)
    (pet,) = collect_inventory(options(b.root, tmp_path), config()).pet
    assert pet.centiloid == value
    if code:
        assert pet.centiloid_note.startswith(code + ":")


def test_participants_centiloid_not_used_for_several_scans(tmp_path):
    b = BidsBuilder(tmp_path / "bids")
    b.anat("01", "1", "T1w")
    b.pet("01", "1", "AV45")
    b.pet("01", "2", "AV45")
    b.participants([{"participant_id": "sub-01", "centiloid": 30.0}])
    inv = collect_inventory(options(b.root, tmp_path), config())
    assert all(p.centiloid is None for p in inv.pet)
    assert "several amyloid PET" in inv.pet[0].centiloid_note


def test_suvr_equation_refuses_other_tracers(tmp_path):
    b = BidsBuilder(tmp_path / "bids")
    b.anat("01", "1", "T1w")
    b.pet("01", "1", "PIB")
    b.sessions("01", [{"session_id": "ses-1", "adni_av45": 1.2}])
    cfg = config(suvr_equation="av45-adni-berkeley")
    (pet,) = collect_inventory(options(b.root, tmp_path), cfg).pet
    assert pet.centiloid is None and pet.centiloid_note.startswith("no_suvr_equation")
    with pytest.raises(UsageError, match="unknown SUVR equation"):
        collect_inventory(options(b.root, tmp_path), config(suvr_equation="av45-made-up"))


def test_equation_table():
    for eq in EQUATIONS.values():
        assert eq.citation and eq.reference and eq.tracer == normalise_tracer(eq.tracer)
    # Klunk 2015 anchors: YC-0 SUVR 1.009 → 0 CL, AD-100 SUVR 2.076 → 100 CL
    pib = get_equation("pib-klunk2015")
    assert pib.to_centiloid(1.009) == pytest.approx(0.0, abs=1e-9)
    assert pib.to_centiloid(2.076) == pytest.approx(100.0)
    assert get_equation("av45-navitsky2018").to_centiloid(1.0) == pytest.approx(-6.9)
    with pytest.raises(ValueError, match="both"):
        parse_equations("av45-navitsky2018,av45-adni-berkeley")
    assert set(parse_equations("pib-klunk2015, fbb-rowe2017")) == {"PIB", "FBB"}


# ----------------------------------------------------------------- selection


def test_labels_and_filters(tmp_path):
    b = simple_dataset(tmp_path / "bids", n_subjects=3)
    b.anat("01", "01", "T1w", acq="fast")
    inv = collect_inventory(options(b.root, tmp_path, participant_labels=("01", "03")), config())
    assert sorted({m.sub for m in inv.mri}) == ["01", "03"]
    # two candidates, no run entity: the file name decides ("T" sorts before "a")
    assert inv.mri[0].images["T1w"].name == "sub-01_ses-01_T1w.nii.gz"
    filtered = collect_inventory(options(b.root, tmp_path, participant_labels=("01",),
                                         bids_filters={"t1w": {"acquisition": "fast"}}), config())
    assert filtered.mri[0].images["T1w"].name == "sub-01_ses-01_acq-fast_T1w.nii.gz"
    no_acq = collect_inventory(options(b.root, tmp_path, participant_labels=("01",),
                                       bids_filters={"t1w": {"acquisition": None}}), config())
    assert no_acq.mri[0].images["T1w"].name == "sub-01_ses-01_T1w.nii.gz"
    with pytest.raises(UsageError, match="unknown keys"):
        collect_inventory(options(b.root, tmp_path, bids_filters={"bold": {}}), config())
    with pytest.raises(NothingSelectedError, match="99"):
        collect_inventory(options(b.root, tmp_path, participant_labels=("01", "99")), config())
    with pytest.raises(NothingSelectedError):
        collect_inventory(options(b.root, tmp_path, session_labels=("zz",)), config())


def test_layout_cache_in_work_dir(tmp_path):
    b = simple_dataset(tmp_path / "bids", n_subjects=2)
    work = tmp_path / "work"
    first = collect_inventory(options(b.root, tmp_path, work_dir=work), config())
    caches = list((work / "pybids").iterdir())
    assert len(caches) == 1 and (caches[0] / "layout_index.sqlite").is_file()
    second = collect_inventory(options(b.root, tmp_path, work_dir=work), config())
    assert first == second
    b.anat("03", "01", "T1w")  # the dataset changed: a new index, never a stale one
    third = collect_inventory(options(b.root, tmp_path, work_dir=work), config())
    assert len(third.mri) == 3 and len(list((work / "pybids").iterdir())) == 2
    assert not any(p.name.startswith(".tmp-") for p in (work / "pybids").iterdir())


# ----------------------------------------------------------------- validation


def test_validation_rejects_invalid_dataset(tmp_path):
    b = simple_dataset(tmp_path / "bids", n_subjects=1)
    sidecar = b.root / "sub-01/ses-01/pet/sub-01_ses-01_trc-AV45_pet.json"
    data = json.loads(sidecar.read_text())
    del data["TracerName"], data["InjectedRadioactivity"]
    sidecar.write_text(json.dumps(data))
    with pytest.raises(InvalidBIDSError, match="SIDECAR_KEY_REQUIRED"):
        validate_bids(b.root)
    with pytest.raises(InvalidBIDSError):
        collect_inventory(options(b.root, tmp_path, skip_bids_validation=False), config())
    # skipping validation reads it anyway (the tracer is in the file name)
    inv = collect_inventory(options(b.root, tmp_path), config())
    assert inv.pet[0].tracer == "AV45"


def test_validation_of_selected_subjects_only(tmp_path):
    b = simple_dataset(tmp_path / "bids", n_subjects=2)
    (b.root / "sub-02/ses-01/anat/sub-02_ses-01_T1w.json").write_text("{broken")
    work = tmp_path / "work"
    assert validate_bids(b.root, subjects=("01",), scratch=work) is not None
    with pytest.raises(InvalidBIDSError):
        validate_bids(b.root, subjects=("02",), scratch=work)
    assert list(work.iterdir()) == []  # the symlink view is removed
    inv = collect_inventory(options(b.root, tmp_path, skip_bids_validation=False,
                                    participant_labels=("01",), work_dir=work), config())
    assert [m.sub for m in inv.mri] == ["01"]
    with pytest.raises(InvalidBIDSError):
        collect_inventory(options(b.root, tmp_path, skip_bids_validation=False), config())


def test_validator_leaves_home_alone(tmp_path, monkeypatch):
    b = simple_dataset(tmp_path / "bids", n_subjects=1)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("DENO_DIR", raising=False)
    validate_bids(b.root)
    assert list(home.iterdir()) == []


def test_validator_found_next_to_python():
    from bids_amyloid.bids import validator_executable

    assert os.access(validator_executable(), os.X_OK)


def test_dataset_without_sessions(tmp_path):
    b = BidsBuilder(tmp_path / "bids")
    for sub in ("01", "010"):  # "01" must not select "010"
        b.anat(sub, None, "T1w")
        b.pet(sub, None, "AV45")
        b.scans(sub, None, [
            {"filename": f"anat/sub-{sub}_T1w.nii.gz", "acq_time": "2019-05-01T09:00:00"},
            {"filename": f"pet/sub-{sub}_trc-AV45_pet.nii.gz",
             "acq_time": "2019-07-01T09:00:00", "centiloid": 25.0}])
    inv = collect_inventory(options(b.root, tmp_path, participant_labels=("01",)), config())
    assert [(m.sub, m.ses) for m in inv.mri] == [("01", "")]
    (pet,) = inv.pet
    assert pet.centiloid == 25.0 and pet.date_source == "scans.tsv acq_time"
    ((_, m, reason),) = pair_pet_with_mri(inv, ("T1w",), 365)
    assert m is not None and "61 days" in reason


def test_sessionless_cohort_round_trip(tmp_path):
    from bids_amyloid.cohort import build_cohort, load_cohort
    from bids_amyloid.io import to_tsv

    b = BidsBuilder(tmp_path / "bids")
    for i in range(1, 11):
        sub = f"{i:02d}"
        b.anat(sub, None, "T1w")
        b.pet(sub, None, "PIB")
        b.scans(sub, None, [{"filename": f"anat/sub-{sub}_T1w.nii.gz", "acq_time": "2019-05-01"},
                            {"filename": f"pet/sub-{sub}_trc-PIB_pet.nii.gz",
                             "acq_time": "2019-05-02", "centiloid": 10.0 * i}])
    cohort, _ = build_cohort(collect_inventory(options(b.root, tmp_path), config()), config())
    assert set(cohort["mri_session"]) == {"n/a"}  # BIDS TSV convention in the file
    (tmp_path / "cohort.tsv").write_text(to_tsv(cohort))
    loaded = load_cohort(tmp_path / "cohort.tsv")
    assert set(loaded["mri_session"]) == set(loaded["pet_session"]) == {""}


def test_tracer_from_inherited_sidecar(tmp_path):
    from bids_amyloid.bids import sidecar_metadata

    b = BidsBuilder(tmp_path / "bids")
    b.anat("01", "1", "T1w")
    own = b.pet("01", "1", None)
    own_json = own.with_name(own.name.replace(".nii.gz", ".json"))
    data = json.loads(own_json.read_text())
    del data["TracerName"]  # its own sidecar names no tracer
    own_json.write_text(json.dumps(data))
    other = b.pet("02", "1", None, tracer_name="florbetaben")
    (b.root / "pet.json").write_text(json.dumps({"TracerName": "PiB", "Units": "kBq/mL"}))
    (b.root / "sub-01" / "sub-01_pet.json").write_text(json.dumps({"Units": "Bq/mL"}))
    meta = sidecar_metadata(own, b.root)
    assert meta["TracerName"] == "PiB" and meta["Units"] == "Bq/mL"  # nearest wins
    assert sidecar_metadata(other, b.root)["TracerName"] == "florbetaben"
    inv = collect_inventory(options(b.root, tmp_path), config())
    assert {(p.sub, p.tracer) for p in inv.pet} == {("01", "PIB"), ("02", "FBB")}
