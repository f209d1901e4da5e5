"""Predict's reliability flag: sessions unlike the training cohort are flagged, still predicted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_amyloid import cli
from bids_amyloid import derivatives as drv
from bids_amyloid.config import AppConfig, ModelConfig
from bids_amyloid.io import write_json
from bids_amyloid.reliability import (
    fit_embedding_reference,
    qc_reference,
    reference_meta,
    session_reliability,
)
from tests.bids_builders import BidsBuilder

CFG = AppConfig(model=ModelConfig(backbone="test_vit"))
SIZE = 224
GOOD_QC = {"template_mask_dice": 0.87, "template_correlation": 0.90,
           "registration_correlation": 0.80}


def t1w_like(seed: int, n: int = 25) -> np.ndarray:
    """Sagittal T1w-like slices: bright white matter, grey rim, dark ventricle, cerebellum."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE - 0.5
    out = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        r, a = 0.3 + 0.1 * np.sin(i / n * np.pi), rng.uniform(0.9, 1.1)
        brain = (yy / (r * a)) ** 2 + (xx / r) ** 2 < 1
        white = (yy / (0.6 * r * a)) ** 2 + (xx / (0.6 * r)) ** 2 < 1
        cerebellum = ((yy - 0.25) / 0.08) ** 2 + ((xx + 0.15) / 0.12) ** 2 < 1
        ventricle = (yy / 0.05) ** 2 + (xx / (0.12 * rng.uniform(0.8, 1.3))) ** 2 < 1
        img = brain * (0.45 + 0.1 * rng.random()) + white * 0.3 + cerebellum * 0.5
        img = np.where(ventricle, 0.1, img) + 0.02 * rng.normal(size=img.shape)
        out[i] = np.clip(img, 0, 1) * (brain | cerebellum)
    return out


def t2w_like(seed: int) -> np.ndarray:
    """The same anatomy with T2w-like contrast: fluid bright, white matter dark."""
    t1 = t1w_like(seed)
    return np.where(t1 > 0, np.clip(1.05 - t1, 0, 1), 0).astype(np.float32)


def write_session(out: Path, bids: BidsBuilder, sub: str, slices: np.ndarray,
                  qc: dict[str, float], flags: list[str] | None = None) -> None:
    """What the participant level leaves for a T1w session: sidecars, cache, QC numbers."""
    from bids_amyloid.participant.outputs import parameter_hash, unit_parameters

    raw = bids.anat(sub, "01", "T1w")
    meta = {"ParameterHash": parameter_hash(CFG, "mri"), "Parameters": unit_parameters(CFG, "mri")}
    image = drv.mri_preproc_path(out, sub, "01", "T1w")
    write_json(drv.sidecar_of(image), {**meta, "Sources": [drv.source_uri(raw, bids.root)]})
    drv.write_slice_cache(drv.mri_slice_cache(out, sub, "01", "T1w"), slices,
                          list(range(79, 79 + len(slices))),
                          {**meta, "Sources": [f"bids::{image.relative_to(out)}"]})
    write_json(drv.qc_numbers_path(out, sub, "01"),
               {"Numbers": {"T1w": qc}, "Flags": {"T1w": flags or []}})


def embeddings_of(network: object, volumes: list[np.ndarray]) -> np.ndarray:
    import torch

    from bids_amyloid.models import prepare_slices

    m = CFG.model
    rows = []
    with torch.inference_mode():
        for slices in volumes:
            x = prepare_slices(slices[None], mean=m.clip_mean, std=m.clip_std,
                               size=m.image_size, device="cpu")
            mask = torch.ones(1, slices.shape[0], dtype=torch.bool)
            rows.append(network({"T1w": x}, {"T1w": mask}).embedding.float().numpy()[0])
    return np.stack(rows)


@pytest.fixture(scope="module")
def model_with_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A student whose model file holds the reference of 16 train and 6 val T1w sessions."""
    import torch

    from bids_amyloid.models import build_student, save_model

    torch.manual_seed(0)
    network = build_student(CFG, ("T1w",)).eval()
    n_slices = CFG.train.n_train_slices
    train = embeddings_of(network, [t1w_like(s, n_slices) for s in range(16)])
    val = embeddings_of(network, [t1w_like(s, n_slices) for s in range(100, 106)])
    records = [{"Numbers": {"T1w": {k: v + 0.01 * (s % 5 - 2) for k, v in GOOD_QC.items()}}}
               for s in range(16)]
    path = tmp_path_factory.mktemp("model") / "student_T1w.pt"
    save_model(path, network, CFG, {"thresholds": {"tau": 0.5},
                                    "reliability": reference_meta(train, val, records, ("T1w",))})
    return path


def test_out_of_distribution_sessions_are_flagged_and_still_predicted(
        tmp_path: Path, model_with_reference: Path) -> None:
    out, b = tmp_path / "out", BidsBuilder(tmp_path / "bids")
    for k, sub in enumerate(("01", "02", "03")):           # new T1w sessions, same anatomy
        write_session(out, b, sub, t1w_like(200 + k), GOOD_QC)
    write_session(out, b, "04", t2w_like(300), GOOD_QC)     # a T2w fed as T1w
    write_session(out, b, "05", t1w_like(301), {**GOOD_QC, "template_mask_dice": 0.55},
                  ["brain mask overlaps the template's brain poorly (Dice 0.55 < 0.75)"])
    drv.init_output(out, b.root)
    assert cli.main([str(b.root), str(out), "predict", "--model", str(model_with_reference),
                     "--skip-bids-validation", "-q"]) == 0
    folder = out / "predict" / "student_T1w"
    table = pd.read_csv(folder / "predictions.tsv", sep="\t", keep_default_na=False)
    reliability = table.set_index("participant_id")["reliability"].to_dict()
    assert len(table) == 5 and table["probability"].astype(float).between(0, 1).all()
    for sub in ("sub-01", "sub-02", "sub-03"):
        assert reliability[sub] == "ok", reliability[sub]
    assert reliability["sub-04"].startswith("flagged: student embedding distance")
    assert reliability["sub-05"].startswith("flagged: T1w template_mask_dice 0.550 below")
    assert "QC: brain mask overlaps" in reliability["sub-05"]
    # the page of each subject says why
    page = (folder / "sub-04.html").read_text()
    assert "unreliable" in page and "student embedding distance" in page
    assert "unreliable" not in (folder / "sub-01.html").read_text()


def test_qc_below_the_training_range_is_flagged_with_the_reason() -> None:
    records = [{"Numbers": {"T1w": {"template_mask_dice": 0.80 + 0.01 * k}}} for k in range(10)]
    low = qc_reference(records, ("T1w",))
    # 1st percentile of 0.80 … 0.89 (numpy's linear interpolation): 0.80 + 0.09·0.01
    assert low["T1w"]["template_mask_dice"] == pytest.approx(0.8009)
    ref = fit_embedding_reference(np.random.default_rng(0).normal(size=(50, 4)))
    meta = {"reliability": {"embedding": ref.to_meta(), "qc_low": low}}
    inside = np.zeros((1, 4))
    good = {"Numbers": {"T1w": {"template_mask_dice": 0.85}}, "Flags": {"T1w": []}}
    bad = {"Numbers": {"T1w": {"template_mask_dice": 0.70}}, "Flags": {"T1w": []}}
    assert session_reliability(meta, inside, good, ("T1w",)) == "ok"
    assert session_reliability(meta, inside, bad, ("T1w",)) == (
        "flagged: T1w template_mask_dice 0.700 below the training cohort's 1st percentile 0.801")
    # far from every training embedding: 10 sd on each axis
    assert "embedding distance" in session_reliability(meta, np.full((1, 4), 10.0), good,
                                                       ("T1w",))
    assert session_reliability(meta, inside, None, ("T1w",)) == (
        "ok (not checked: no preprocessing QC numbers)")
    assert session_reliability({}, inside, good, ("T1w",)).startswith("ok (not checked")


def test_ensemble_flags_when_most_members_place_the_embedding_outside() -> None:
    from bids_amyloid.reliability import ensemble_entry

    rng = np.random.default_rng(1)
    members = [{"embedding": fit_embedding_reference(rng.normal(size=(40, 3))).to_meta(),
                "qc_low": {"T1w": {"template_mask_dice": floor}}} for floor in (0.7, 0.8, 0.9)]
    entry = ensemble_entry(members)
    assert entry["qc_low"]["T1w"]["template_mask_dice"] == pytest.approx(0.8)  # the median
    meta = {"reliability": entry}
    qc = {"Numbers": {"T1w": {"template_mask_dice": 0.85}}, "Flags": {}}
    far, near = np.full((1, 3), 25.0), np.zeros((1, 3))
    # the ensemble's embedding: its three members' side by side
    assert session_reliability(meta, np.hstack([near, near, near]), qc, ("T1w",)) == "ok"
    assert session_reliability(meta, np.hstack([far, near, near]), qc, ("T1w",)) == "ok"
    assert "for 2 of 3 ensemble members" in session_reliability(
        meta, np.hstack([far, far, near]), qc, ("T1w",))
