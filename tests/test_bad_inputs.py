"""Bad input files fail their own session with a clear message naming the file."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_amyloid.errors import InputDataError
from bids_amyloid.preproc.checks import check_image, check_session_inputs


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
