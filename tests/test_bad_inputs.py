"""Bad input files fail their own session with a clear message naming the file."""
# ruff: noqa: F811  (pytest fixtures shared with test_participant are imported by name)

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_amyloid.errors import InputDataError
from bids_amyloid.preproc.checks import check_image, check_session_inputs
from tests.test_participant import (  # noqa: F401
    MRI_SESSIONS,
    assert_clean,
    bids,
    fakes,
    mri_files,
    pet_files,
    run,
    sim_bids,
)


def _save(path: Path, data: np.ndarray, zooms: tuple[float, ...] = (1.0, 1.0, 1.0)) -> Path:
    affine = np.diag([*zooms[:3], 1.0])
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _head(shape: tuple[int, ...] = (12, 12, 12)) -> np.ndarray:
    return np.random.default_rng(0).random(shape).astype(np.float32)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return _save(tmp_path / "sub-01_T1w.nii.gz", _head())


def test_good_images_pass(tmp_path: Path, good: Path) -> None:
    pet = _save(tmp_path / "sub-01_pet.nii.gz", _head((12, 12, 12, 3)))
    plain = _save(tmp_path / "sub-01_T2w.nii", _head())
    squeezable = _save(tmp_path / "sub-01_FLAIR.nii.gz", _head((12, 12, 12, 1)))
    check_session_inputs({"T1w": good, "T2w": plain, "FLAIR": squeezable}, [pet])


def _expect(path: Path, kind: str, words: str) -> None:
    with pytest.raises(InputDataError, match=words) as info:
        check_image(path, kind)
    assert str(info.value).startswith(str(path)), "the message must name the file"


def test_missing_and_zero_byte(tmp_path: Path) -> None:
    _expect(tmp_path / "nope_T1w.nii.gz", "T1w", "does not exist")
    empty = tmp_path / "empty_T1w.nii.gz"
    empty.write_bytes(b"")
    _expect(empty, "T1w", "empty")


def test_truncated_gzip(tmp_path: Path, good: Path) -> None:
    data = good.read_bytes()
    for keep in (len(data) // 2, len(data) - 4):  # cut in the data, cut in the trailer
        cut = tmp_path / f"cut{keep}_T1w.nii.gz"
        cut.write_bytes(data[:keep])
        _expect(cut, "T1w", "truncated|corrupt")


def test_html_saved_as_nifti(tmp_path: Path) -> None:
    page = b"<!DOCTYPE html>\n<html><body>Access denied</body></html>\n"
    raw = tmp_path / "page_T1w.nii.gz"
    raw.write_bytes(page)
    _expect(raw, "T1w", "HTML")
    zipped = tmp_path / "zipped_T1w.nii.gz"
    zipped.write_bytes(gzip.compress(page))
    _expect(zipped, "T1w", "HTML")
    plain = tmp_path / "plain_T1w.nii"
    plain.write_bytes(page)
    _expect(plain, "T1w", "HTML")


def test_not_nifti(tmp_path: Path) -> None:
    junk = tmp_path / "junk_T1w.nii.gz"
    junk.write_bytes(gzip.compress(b"\x00" * 1000))
    _expect(junk, "T1w", "not a NIfTI")
    named_gz = tmp_path / "plain_T1w.nii.gz"
    named_gz.write_bytes(b"\x5c\x01" + b"\x00" * 400)
    _expect(named_gz, "T1w", "not gzip")


def test_all_zero_all_nan_constant(tmp_path: Path) -> None:
    _expect(_save(tmp_path / "zero_T1w.nii.gz", np.zeros((12, 12, 12), np.float32)), "T1w", "zero")
    _expect(_save(tmp_path / "nan_T1w.nii.gz", np.full((12, 12, 12), np.nan, np.float32)),
            "T1w", "NaN")
    _expect(_save(tmp_path / "const_pet.nii.gz", np.full((12, 12, 12, 2), 3.0, np.float32)),
            "pet", "same value")


def test_dimensionality(tmp_path: Path) -> None:
    four_d = _save(tmp_path / "sub-01_T1w.nii.gz", _head((12, 12, 12, 2)))
    _expect(four_d, "T1w", "4D")
    check_image(_save(tmp_path / "sub-01_pet.nii.gz", _head((12, 12, 12, 2))), "pet")
    _expect(_save(tmp_path / "five_pet.nii.gz", _head((12, 12, 12, 2, 2))), "pet", "5 dimensions")
    _expect(_save(tmp_path / "flat_T1w.nii.gz", _head((12, 12))), "T1w", "expected a 3D")


def test_absurd_geometry(tmp_path: Path) -> None:
    _expect(_save(tmp_path / "tiny_T1w.nii.gz", _head(), (0.01, 0.01, 0.01)), "T1w", "voxel size")
    _expect(_save(tmp_path / "huge_T1w.nii.gz", _head(), (1.0, 1.0, 25.0)), "T1w", "voxel size")
    _expect(_save(tmp_path / "thin_T1w.nii.gz", _head((12, 12, 3))), "T1w", "dimensions")


# --------------------------------------------------------------------------- whole runs
# (fast image-function fakes; the checks, inventory, pairing, commit and logs are real)

MRI_T1W = "sub-002/ses-d0000/anat/sub-002_ses-d0000_T1w.nii.gz"
PET_PIB = "sub-001/ses-d0101/pet/sub-001_ses-d0101_trc-PIB_pet.nii.gz"


def _html(path: Path) -> None:
    path.write_bytes(b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>")


def _four_d(path: Path) -> None:
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), img.affine), path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _all_zero(path: Path) -> None:
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), path)


@pytest.mark.parametrize(("target", "damage", "words"), [
    (MRI_T1W, _html, "HTML page"),
    (MRI_T1W, _four_d, "4D"),
    (PET_PIB, _truncate, "truncated"),
    (PET_PIB, _all_zero, "every voxel is zero"),
])
def test_bad_file_fails_its_session_only(fakes: None, bids: Path, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture, target: str,
                                         damage: Callable[[Path], None], words: str) -> None:
    damage(bids / target)
    out = tmp_path / "out"
    assert run(bids, out) == 1
    summary = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("FAILED" in line for line in summary)
    if target == MRI_T1W:
        log = out / "sub-002" / "log" / "ses-d0000.log"
        failed = [out / "sub-002" / "ses-d0000", out / "sub-002" / "ses-d0143"]  # + its PET
        pet_log = (out / "sub-002" / "log" / "ses-d0143_trc-AV45.log").read_text()
        assert "its MRI session ses-d0000 failed" in pet_log
        fine = [("001", "d0000"), ("002", "d0502")]
    else:
        log = out / "sub-001" / "log" / "ses-d0101_trc-PIB.log"
        failed = [out / "sub-001" / "ses-d0101"]
        fine = MRI_SESSIONS
    text = log.read_text()
    assert str(bids / target) in text and words in text
    for folder in failed:
        assert not folder.exists(), f"partial outputs in {folder}"
    for sub, ses in fine:
        assert all(p.is_file() for p in mri_files(out, sub, ses))
    assert_clean(out, failed_jobs=True)
    sub = target.split("/")[0]
    assert "FAILED" in (out / f"{sub}.html").read_text()
    # a re-run fails the same way without redoing the good MRI sessions
    before = {p: p.stat().st_mtime_ns for s, e in fine for p in mri_files(out, s, e)}
    assert run(bids, out) == 1
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_pet_without_mri_and_mri_without_pet(fakes: None, bids: Path, tmp_path: Path) -> None:
    shutil.rmtree(bids / "sub-001" / "ses-d0000")  # sub-001 keeps only its PET
    out = tmp_path / "out"
    assert run(bids, out) == 1
    text = (out / "sub-001" / "log" / "ses-d0101_trc-PIB.log").read_text()
    assert str(bids / PET_PIB) in text and "no usable MRI" in text
    assert not (out / "sub-001" / "ses-d0101").exists()
    # sub-002's second MRI session has no PET: preprocessed all the same
    assert all(p.is_file() for p in mri_files(out, "002", "d0502"))
    assert all(p.is_file() for p in pet_files(out, "002", "d0143", "AV45"))
    assert "no usable MRI" in (out / "sub-001.html").read_text()


def test_pet_outside_the_pairing_window_is_skipped_not_failed(fakes: None, bids: Path,
                                                              tmp_path: Path) -> None:
    """Longitudinal cohorts have PET far from any MRI: the cohort excludes them, no failure."""
    out = tmp_path / "out"
    cfg = tmp_path / "narrow.toml"
    cfg.write_text("[cohort]\npair_window_days = 1\n")  # simulated MRI and PET are days apart
    assert run(bids, out, "--config", str(cfg)) == 0
    assert not list(out.glob("sub-*/ses-*/pet/*_pet.nii.gz"))
    assert not list(out.glob("sub-*/log/*trc-*.log"))
    assert list(out.glob("sub-*/ses-*/anat/*_desc-preproc_T1w.nii.gz"))
