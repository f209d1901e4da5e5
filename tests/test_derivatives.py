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


def test_participant_names() -> None:
    """Names as the BIDS-Derivatives conventions spell them (written out by hand)."""
    from bids_amyloid import derivatives as drv

    out = Path("/out")
    anat = out / "sub-01" / "ses-02" / "anat"
    space = "space-MNI152NLin2009aSym"
    assert drv.mri_preproc_path(out, "01", "02", "T2w") == \
        anat / f"sub-01_ses-02_{space}_desc-preproc_T2w.nii.gz"
    assert drv.brain_mask_path(out, "01", "02") == anat / f"sub-01_ses-02_{space}_desc-brain_mask.nii.gz"
    assert drv.mri_xfm_path(out, "01", "02", "FLAIR") == \
        anat / "sub-01_ses-02_from-FLAIR_to-MNI152NLin2009aSym_mode-image_xfm.mat"
    assert drv.native_brain_path(out, "01", "02") == anat / "sub-01_ses-02_desc-brain_T1w.nii.gz"
    assert drv.native_mask_path(out, "01", "02") == anat / "sub-01_ses-02_desc-brain_mask.nii.gz"
    assert drv.pet_suvr_path(out, "01", "03", "PIB") == \
        out / "sub-01" / "ses-03" / "pet" / f"sub-01_ses-03_trc-PIB_{space}_desc-suvr_pet.nii.gz"
    figures = out / "sub-01" / "figures"
    assert drv.qc_numbers_path(out, "01", "02") == figures / "sub-01_ses-02_desc-anat_qc.json"
    assert drv.qc_numbers_path(out, "01", "03", "AV45") == \
        figures / "sub-01_ses-03_trc-AV45_desc-pet_qc.json"
    assert drv.mri_figure_path(out, "01", "02", "skullstrip", "T1w") == \
        figures / "sub-01_ses-02_desc-skullstrip_T1w.png"
    assert drv.pet_figure_path(out, "01", "03", "AV45") == \
        figures / "sub-01_ses-03_trc-AV45_desc-suvr_pet.png"
    # no session: no ses- entity and no ses- folder
    assert drv.mri_preproc_path(out, "01", "", "T1w") == \
        out / "sub-01" / "anat" / f"sub-01_{space}_desc-preproc_T1w.nii.gz"


def test_source_and_output_uris(tmp_path: Path) -> None:
    from bids_amyloid.derivatives import output_uri, source_uri

    bids = tmp_path / "bids"
    raw = bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    assert source_uri(raw, bids) == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    elsewhere = tmp_path / "other" / "x.nii.gz"
    assert source_uri(elsewhere, bids) == str(elsewhere.resolve())
    assert source_uri(raw, None) == str(raw.resolve())
    out = tmp_path / "out"
    assert output_uri(out / "sub-01" / "anat" / "a.nii.gz", out) == "bids::sub-01/anat/a.nii.gz"
