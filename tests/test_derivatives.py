"""Derivative names follow BIDS entity order; slice caches round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bids_amyloid.derivatives import (
    bids_name,
    derivative_path,
    init_output,
    mri_slice_cache,
    pet_slice_cache,
    read_slice_cache,
    sidecar_of,
    write_slice_cache,
)


def test_transform_name() -> None:
    path = derivative_path(Path("/o"), "01", "a", "anat", suffix="xfm", ext=".mat",
                           from_="T1w", to="MNI152NLin2009aSym", mode="image")
    assert str(path) == "/o/sub-01/ses-a/anat/sub-01_ses-a_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.mat"


def test_entity_order_and_unknown() -> None:
    assert bids_name({"desc": "x", "sub": "1", "trc": "PIB"}, "pet", ".nii.gz") == \
        "sub-1_trc-PIB_desc-x_pet.nii.gz"
    with pytest.raises(ValueError, match="unknown"):
        bids_name({"sub": "1", "bogus": "2"}, "T1w", ".nii.gz")


def test_cache_names() -> None:
    assert mri_slice_cache(Path("o"), "1", "2", "T2w").name == \
        "sub-1_ses-2_space-MNI152NLin2009aSym_desc-slices_T2w.npy"
    pet = pet_slice_cache(Path("o"), "1", "3", "AV45")
    assert pet.parent.name == "pet" and "trc-AV45" in pet.name
    assert sidecar_of(pet).suffix == ".json"


def test_slice_cache_round_trip(tmp_path: Path) -> None:
    path = mri_slice_cache(tmp_path, "1", "2", "T1w")
    data = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    write_slice_cache(path, data, [80, 82, 79 + 5], {"Contrast": "T1w"})
    array, indices, meta = read_slice_cache(path)
    assert isinstance(array, np.memmap) and array.dtype == np.float16
    np.testing.assert_allclose(array, data, atol=1e-3)
    assert indices == [80, 82, 84] and meta["Contrast"] == "T1w"
    with pytest.raises(ValueError, match="indices"):
        write_slice_cache(path, data, [1, 2], {})


def test_init_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIDS_AMYLOID_CONTAINER", "bids-amyloid:0.1.0")
    init_output(tmp_path / "out", source=tmp_path)
    desc = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Container"]["Tag"] == "bids-amyloid:0.1.0"
    assert "*_desc-slices_*" in (tmp_path / "out" / ".bidsignore").read_text()
