"""Predict level: MRI-only inference, refusals, cohort-split flag, saliency, determinism."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_amyloid import cli
from bids_amyloid import derivatives as drv
from bids_amyloid.config import AppConfig, CohortConfig, ModelConfig
from bids_amyloid.errors import EXIT_INPUT_MISSING, EXIT_NOTHING_SELECTED
from bids_amyloid.predict.plan import plan_sessions
from bids_amyloid.predict.tables import PREDICTION_COLUMNS
from bids_amyloid.slice_selection import load_slices
from tests.bids_builders import BidsBuilder

CFG = AppConfig(model=ModelConfig(backbone="test_vit"))
SLICE_INDICES = list(range(79, 119))  # 40 sagittal positions, as on the template grid


def fake_brain_slices(seed: int, n: int = 30, size: int = 224) -> np.ndarray:
    """Smooth, subject-specific slices in [0, 1] (an ellipse of varying brightness)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    out = np.zeros((n, size, size), np.float32)
    for i in range(n):
        radius = 0.3 + 0.1 * np.sin(i / n * np.pi)
        inside = (yy / (radius * rng.uniform(0.9, 1.1))) ** 2 + (xx / radius) ** 2 < 1
        out[i] = inside * (0.4 + 0.4 * rng.random() + 0.1 * np.cos(8 * yy + rng.random()))
    return np.clip(out, 0, 1)


def write_participant_outputs(out: Path, bids: Path, raw: Path, sub: str, ses: str,
                              contrast: str, cfg: AppConfig, seed: int) -> Path:
    """What the participant level leaves for one contrast: preproc sidecar + slice cache."""
    from bids_amyloid.derivatives import source_uri
    from bids_amyloid.participant.outputs import parameter_hash, unit_parameters

    meta = {"ParameterHash": parameter_hash(cfg, "mri"), "Parameters": unit_parameters(cfg, "mri")}
    image = drv.derivative_path(out, sub, ses, "anat", suffix=contrast, ext=".nii.gz",
                                space="MNI152NLin2009aSym", desc="preproc")
    drv.write_json(drv.sidecar_of(image), {**meta, "Sources": [source_uri(raw, bids)]})
    slices = fake_brain_slices(seed)
    cache = drv.mri_slice_cache(out, sub, ses, contrast)
    drv.write_slice_cache(cache, slices, SLICE_INDICES[: len(slices)],
                          {**meta, "Sources": [f"bids::{image.relative_to(out)}"]})
    return cache


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bids_amyloid.models import build_student, save_model

    path = tmp_path_factory.mktemp("model") / "student_T1w.pt"
    save_model(path, build_student(CFG, ("T1w",)), CFG,
               {"thresholds": {"fixed": 0.5, "tau": 0.42}, "training_participants": ["sub-01"],
                "validation_participants": ["sub-02"], "test_participants": ["sub-03"]})
    return path


@pytest.fixture(scope="module")
def two_contrast_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bids_amyloid.models import build_student, save_model

    cfg = AppConfig(model=ModelConfig(backbone="test_vit"))
    path = tmp_path_factory.mktemp("model2") / "student_T1w-T2w.pt"
    save_model(path, build_student(cfg, ("T1w", "T2w")), cfg, {"thresholds": {"tau": 0.5}})
    return path


def mri_only_dataset(root: Path, out: Path, contrasts_of: dict[str, tuple[str, ...]]) -> Path:
    """BIDS without PET or Centiloid; participant-level caches in ``out`` for every image."""
    b = BidsBuilder(root)
    for k, (sub, contrasts) in enumerate(sorted(contrasts_of.items())):
        for contrast in contrasts:
            raw = b.anat(sub, "01", contrast)
            write_participant_outputs(out, root, raw, sub, "01", contrast, CFG, seed=10 * k)
    drv.init_output(out, root)
    return root


def paired_dataset(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """``n`` subjects with a T1w session (preprocessed) and, 60 days later, an AV45 PET
    session whose Centiloid is 50 (odd subjects, positive) or 3; returns (out, bids)."""
    out, b = tmp_path / "out", BidsBuilder(tmp_path / "bids")
    for i in range(1, n + 1):
        sub = f"{i:02d}"
        raw = b.anat(sub, "01", "T1w")
        b.pet(sub, "02", "AV45")
        b.sessions(sub, [{"session_id": "ses-01", "acq_time": "2020-01-01T10:00:00"},
                         {"session_id": "ses-02", "acq_time": "2020-03-01T10:00:00",
                          "centiloid": 50.0 if i % 2 else 3.0}])
        write_participant_outputs(out, b.root, raw, sub, "01", "T1w", CFG, seed=i)
    drv.init_output(out, b.root)
    return out, b.root


def predict(bids: Path, out: Path, model: Path, *extra: str) -> int:
    return cli.main([str(bids), str(out), "predict", "--model", str(model),
                     "--skip-bids-validation", "-q", *extra])


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def test_predict_without_pet_or_centiloid(tmp_path: Path, model_file: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    bids = mri_only_dataset(tmp_path / "bids", out, {"01": ("T1w",), "02": ("T1w",),
                                                     "03": ("T1w", "T2w"), "04": ("T2w",)})
    with caplog.at_level(logging.WARNING):
        assert predict(bids, out, model_file) == 0
    folder = out / "predict" / "student_T1w"
    table = read_tsv(folder / "predictions.tsv")
    assert tuple(table.columns) == PREDICTION_COLUMNS
    assert table["participant_id"].tolist() == ["sub-01", "sub-02", "sub-03"]
    probs = table["probability"].astype(float)
    assert ((probs > 0) & (probs < 1)).all()
    assert probs.nunique() == 3, "different subjects' slices must give different outputs"
    assert (table["tau"].astype(float) == 0.42).all()
    assert (table["positive_at_tau"].astype(int) == (probs > 0.42).astype(int)).all()
    assert (table["positive_at_0.5"].astype(int) == (probs > 0.5).astype(int)).all()
    assert (table["contrasts_used"] == "T1w").all()
    assert table["model_sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    # each subject's split in the model's cohort; train AND val subjects shaped the model:
    # both are warned about, the test subject is not
    assert table.set_index("participant_id")["cohort_split"].to_dict() == {
        "sub-01": "train", "sub-02": "val", "sub-03": "test"}
    warned = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and "training cohort" in r.getMessage()]
    assert len(warned) == 1 and "sub-01" in warned[0] and "sub-02" in warned[0]
    assert "sub-03" not in warned[0]
    # the session without the model's contrast is listed with its reason
    excluded = read_tsv(folder / "excluded.tsv")
    assert excluded["participant_id"].tolist() == ["sub-04"]
    assert "needs T1w" in excluded["reason"].iloc[0] and "has T2w" in excluded["reason"].iloc[0]
    assert not (folder / "metrics.tsv").exists(), "no Centiloid: no metrics"
    provenance = json.loads((folder / "predict.json").read_text())
    assert provenance["Sessions"] == {"predicted": 3, "excluded": 1, "failed": 0}
    assert not list(out.rglob(".tmp-*")), "no temporaries left"
    assert not (out / "predict" / "student_T1w" / "derivatives").exists(), "caches were reused"


def test_predictions_identical_between_runs(tmp_path: Path, model_file: Path) -> None:
    out = tmp_path / "out"
    bids = mri_only_dataset(tmp_path / "bids", out, {"01": ("T1w",), "02": ("T1w",)})
    assert predict(bids, out, model_file) == 0
    first = (out / "predict" / "student_T1w" / "predictions.tsv").read_bytes()
    assert predict(bids, out, model_file) == 0
    assert (out / "predict" / "student_T1w" / "predictions.tsv").read_bytes() == first


def test_allow_training_subjects_silences_warning(tmp_path: Path, model_file: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    bids = mri_only_dataset(tmp_path / "bids", out, {"01": ("T1w",)})
    with caplog.at_level(logging.WARNING):
        assert predict(bids, out, model_file, "--allow-training-subjects") == 0
    assert not any("training cohort" in r.getMessage() for r in caplog.records)
    table = read_tsv(out / "predict" / "student_T1w" / "predictions.tsv")
    assert table["cohort_split"].tolist() == ["train"], "still flagged in the table"


def test_multi_contrast_model_uses_the_subset_present(tmp_path: Path,
                                                      two_contrast_model: Path) -> None:
    out = tmp_path / "out"
    bids = mri_only_dataset(tmp_path / "bids", out, {"01": ("T1w", "T2w"), "02": ("T1w",),
                                                     "03": ("FLAIR",)})
    assert predict(bids, out, two_contrast_model) == 0
    table = read_tsv(out / "predict" / "student_T1w-T2w" / "predictions.tsv").set_index(
        "participant_id")
    assert table.loc["sub-01", "contrasts_used"] == "T1w+T2w"
    assert table.loc["sub-01", "note"] == "n/a"
    assert table.loc["sub-02", "contrasts_used"] == "T1w"
    assert "T2w missing" in table.loc["sub-02", "note"]
    assert table.loc["sub-01", "cohort_split"] == "n/a", "model records no cohort"
    excluded = read_tsv(out / "predict" / "student_T1w-T2w" / "excluded.tsv")
    assert excluded["participant_id"].tolist() == ["sub-03"]
    assert "T1w or T2w" in excluded["reason"].iloc[0]


def test_refuses_when_no_session_has_the_contrast(tmp_path: Path, two_contrast_model: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    bids = mri_only_dataset(tmp_path / "bids", out, {"01": ("FLAIR",)})
    assert predict(bids, out, two_contrast_model) == EXIT_NOTHING_SELECTED
    assert any("needs" in r.getMessage() and "T1w or T2w" in r.getMessage()
               for r in caplog.records)
    excluded = read_tsv(out / "predict" / "student_T1w-T2w" / "excluded.tsv")
    assert excluded["participant_id"].tolist() == ["sub-01"]


def fake_open_clip_folder(folder: Path) -> Path:
    """A tiny 'BiomedCLIP' in open_clip's on-disk format (a test_vit trunk, random weights)."""
    import timm
    import torch

    folder.mkdir(parents=True)
    trunk = timm.create_model("test_vit", pretrained=False, num_classes=0)  # 160 px
    state = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"embed_dim": 64, "vision_cfg": {"timm_model_name": "test_vit",
                                                       "image_size": 160}}}))
    return folder


def test_missing_backbone_weights_say_how_to_provide_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A pretrained-backbone model: weights via the fetch command's folder, or a clear refusal."""
    from bids_amyloid import weights
    from bids_amyloid.models import build_student, save_model

    monkeypatch.delenv("BIDS_AMYLOID_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    download = fake_open_clip_folder(tmp_path / "download")
    store = tmp_path / "weights"
    assert weights.main([str(store), "--source", str(download), "--skip-hdbet"]) == 0
    cfg = AppConfig(model=ModelConfig(backbone="biomedclip", backbone_weights=str(store),
                                      image_size=160))
    model = tmp_path / "student_T1w.pt"
    save_model(model, build_student(cfg, ("T1w",)), cfg, {"thresholds": {"tau": 0.5}})
    out = tmp_path / "out"
    bids = mri_only_dataset(tmp_path / "bids", out, {"01": ("T1w",)})
    # the recorded folder moved away: clear error, exit 66, nothing predicted
    store.rename(tmp_path / "elsewhere")
    assert predict(bids, out, model) == EXIT_INPUT_MISSING
    message = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert "bids-amyloid-fetch-weights" in message and "BIDS_AMYLOID_WEIGHTS" in message
    assert not (out / "predict" / "student_T1w" / "predictions.tsv").exists()
    # pointing at the folder (flag or environment) works
    assert predict(bids, out, model, "--backbone-weights", str(tmp_path / "elsewhere")) == 0
    monkeypatch.setenv("BIDS_AMYLOID_WEIGHTS", str(tmp_path / "elsewhere"))
    assert predict(bids, out, model) == 0


def test_metrics_when_centiloid_is_available(tmp_path: Path, model_file: Path) -> None:
    out, bids = paired_dataset(tmp_path, 6)
    assert predict(bids, out, model_file) == 0
    folder = out / "predict" / "student_T1w"
    evaluation = read_tsv(folder / "evaluation.tsv")
    assert len(evaluation) == 6
    assert evaluation["label"].astype(int).tolist() == [1, 0, 1, 0, 1, 0]
    assert set(evaluation["days_apart"]) == {"60"}
    assert evaluation["cohort_split"].tolist()[:3] == ["train", "val", "test"]
    metrics = read_tsv(folder / "metrics.tsv").set_index("set")
    assert list(metrics.index) == ["all", "not_train_or_val"]  # sub-01 train, sub-02 val
    assert metrics.loc["all", ["n", "n_subjects", "n_positive"]].tolist() == ["6", "6", "3"]
    assert int(metrics.loc["not_train_or_val", "n"]) == 4
    assert float(metrics.loc["all", "threshold"]) == 0.42
    # the group level's metrics columns, in its order (one row function for both levels)
    from bids_amyloid.evaluation import metrics_row

    assert list(metrics.columns) == list(metrics_row([0, 1], [0.2, 0.8], ["a", "b"], 0.5))


def test_per_tracer_threshold_applies_as_at_the_cohort_stage(tmp_path: Path) -> None:
    """``PiB = 16.4`` (any spelling of the tracer) labels a PiB scan of Centiloid 18 positive,
    as the cohort stage does; AV45 keeps the default 20.6."""
    from bids_amyloid.models import build_student, save_model

    cfg = AppConfig(model=CFG.model, cohort=CohortConfig(tracer_thresholds={"PiB": 16.4}))
    model = save_model(tmp_path / "student_T1w.pt", build_student(cfg, ("T1w",)), cfg,
                       {"thresholds": {"tau": 0.5}})
    out = tmp_path / "out"
    b = BidsBuilder(tmp_path / "bids")
    for sub, tracer in (("01", "PiB"), ("02", "AV45")):
        raw = b.anat(sub, "01", "T1w")
        b.pet(sub, "02", tracer)
        b.sessions(sub, [{"session_id": "ses-01", "acq_time": "2020-01-01T10:00:00"},
                         {"session_id": "ses-02", "acq_time": "2020-03-01T10:00:00",
                          "centiloid": 18.0}])
        write_participant_outputs(out, b.root, raw, sub, "01", "T1w", CFG, seed=1)
    drv.init_output(out, b.root)
    assert predict(b.root, out, model) == 0
    evaluation = read_tsv(out / "predict" / "student_T1w" / "evaluation.tsv").set_index("tracer")
    assert evaluation.loc["PIB", ["threshold", "label"]].tolist() == ["16.4", "1"]
    assert evaluation.loc["AV45", ["threshold", "label"]].tolist() == ["20.6", "0"]


def test_a_model_file_naming_only_training_subjects(caplog: pytest.LogCaptureFixture) -> None:
    """Files written before validation subjects were recorded: train known, the rest unknown."""
    from bids_amyloid.predict.model import cohort_splits

    assert cohort_splits({}) is None
    with caplog.at_level(logging.WARNING):
        assert cohort_splits({"training_participants": ["sub-01", "02"]}) == {
            "01": "train", "02": "train"}
    assert any("validation subjects" in r.getMessage() for r in caplog.records)


def test_group_run_records_every_split_in_the_model_file() -> None:
    """train/stages.py's model metadata names the train, val and test subjects."""
    from types import SimpleNamespace

    from bids_amyloid.predict.model import cohort_splits
    from bids_amyloid.train.stages import model_meta

    data = {split: SimpleNamespace(subjects=subjects) for split, subjects in
            (("train", ["sub-01", "sub-02", "sub-01"]), ("val", ["sub-03"]), ("test", ["sub-04"]))}
    run = SimpleNamespace(data=data, opts=SimpleNamespace(run_name="r"))
    meta = model_meta(run, "student", ("T1w",), 0.4)  # type: ignore[arg-type]
    assert meta["training_participants"] == ["sub-01", "sub-02"]
    assert meta["validation_participants"] == ["sub-03"]
    assert meta["test_participants"] == ["sub-04"]
    assert cohort_splits(meta) == {"01": "train", "02": "train", "03": "val", "04": "test"}


def test_parameters_mismatch_is_not_reused(tmp_path: Path, model_file: Path) -> None:
    """Caches made with other preprocessing parameters are neither reused nor overwritten."""
    from bids_amyloid.bids import MRISession
    from bids_amyloid.options import RunOptions
    from bids_amyloid.predict.model import PredictModel
    from bids_amyloid.predict.plan import cache_is_reusable, locate_caches

    out = tmp_path / "out"
    b = BidsBuilder(tmp_path / "bids")
    raw = b.anat("01", "01", "T1w")
    other = AppConfig(preproc=CFG.preproc.__class__(gamma=1.0))
    write_participant_outputs(out, b.root, raw, "01", "01", "T1w", other, seed=1)
    drv.init_output(out, b.root)
    session = MRISession("01", "01", None, "none", {"T1w": raw})
    ok, why = cache_is_reusable(out, session, "T1w", CFG.preproc, b.root)
    assert not ok and "parameters" in why
    assert cache_is_reusable(out, session, "T1w", other.preproc, b.root)[0]
    # a PET-only setting does not invalidate an MRI cache
    pet_only = AppConfig(preproc=other.preproc.__class__(gamma=1.0, pet_fwhm_mm=6.0))
    assert cache_is_reusable(out, session, "T1w", pet_only.preproc, b.root)[0]
    # another raw file: not reusable
    moved = MRISession("01", "01", None, "none", {"T1w": raw.with_name("x_T1w.nii.gz")})
    assert not cache_is_reusable(out, moved, "T1w", other.preproc,
                                 b.root)[0]
    plans, _ = plan_sessions([session], ("T1w",))
    model = PredictModel(network=None, cfg=CFG, meta={}, path=model_file, sha256="0", device="cpu")
    opts = RunOptions(bids_dir=b.root, output_dir=out, analysis_level="predict")
    todo = locate_caches(plans, model, opts, tmp_path / "private")
    assert list(todo) == [tmp_path / "private"], "never preprocess over another config's outputs"


def test_load_slices_picks_training_selection(tmp_path: Path) -> None:
    cache = tmp_path / "c.npy"
    slices = np.stack([np.full((8, 8), i / 40, np.float32) for i in range(40)])
    order = np.random.default_rng(0).permutation(40)  # rows stored out of order
    drv.write_slice_cache(cache, slices[order], [int(100 + i) for i in order], {})
    item = load_slices(cache, 25)
    assert item.mask.sum() == 25 and len(item.indices) == 25
    assert list(item.indices) == sorted(item.indices), "numeric order of sagittal index"
    assert item.indices[0] == 100 and item.indices[-1] == 139
    np.testing.assert_allclose(item.slices[:, 0, 0], (np.array(item.indices) - 100) / 40,
                               atol=1e-3)
    short = load_slices(cache, 50)
    assert short.mask.sum() == 40 and not short.slices[40:].any(), "padding is zero and masked"


def test_saliency_maps_on_the_template_grid(tmp_path: Path, model_file: Path) -> None:
    import nibabel as nib

    from bids_amyloid.preproc.template import load_template

    out = tmp_path / "out"
    bids = mri_only_dataset(tmp_path / "bids", out, {"02": ("T1w",)})
    assert predict(bids, out, model_file, "--saliency") == 0
    folder = out / "predict" / "student_T1w"
    template = load_template(CFG.preproc)
    used = load_slices(drv.mri_slice_cache(out, "02", "01", "T1w"), CFG.train.n_train_slices)
    for method in ("gradient", "hirescam"):
        path = folder / "sub-02" / "ses-01" / "anat" / (
            f"sub-02_ses-01_space-MNI152NLin2009aSym_desc-{method}T1w_saliency.nii.gz")
        img = nib.load(path)
        assert img.shape == template.shape
        np.testing.assert_allclose(img.affine, template.affine)
        data = np.asarray(img.dataobj)
        assert np.isfinite(data).all()
        assert data.min() >= 0.0 and data.max() <= 1.0
        planes = sorted(set(np.nonzero(data)[0].tolist()))
        assert planes and set(planes) <= set(used.indices), "only the model's sagittal planes"
        assert len(planes) > len(used.indices) // 2
        assert data[planes].std() > 1e-3, f"{method} map is constant"
    page = (folder / "sub-02.html").read_text()
    assert "data:image/png;base64," in page and "sub-02" in page
    assert "hirescamT1w_saliency.nii.gz" in page


def test_slice_geometry_inverts_the_slice_extraction() -> None:
    """A template plane → participant-level slice → back: the same image (interpolation aside)."""
    from bids_amyloid.predict.saliency import to_template
    from bids_amyloid.preproc.slices import extract_mri_slices
    from bids_amyloid.preproc.template import load_template

    template = load_template(CFG.preproc)
    slices, indices = extract_mri_slices(template, CFG.preproc)
    back = to_template(slices[::8], tuple(indices[::8]), CFG.preproc).get_fdata()
    original = np.asarray(template.dataobj, np.float32)
    for i in indices[::8]:
        brain = original[i] > 0.05
        assert np.corrcoef(back[i][brain], original[i][brain])[0, 1] > 0.98
        assert np.abs(back[i] - original[i])[brain].mean() < 0.02


def strip_pet_and_centiloid(bids: Path) -> None:
    """Turn a simulated dataset into an MRI-only one: no PET files, no Centiloid/tracer columns."""
    import shutil

    for pet in bids.glob("sub-*/ses-*/pet"):
        shutil.rmtree(pet)
    for ses in bids.glob("sub-*/ses-*"):
        if not any(ses.iterdir()):
            ses.rmdir()
    for table in bids.glob("sub-*/sub-*_sessions.tsv"):
        rows = pd.read_csv(table, sep="\t", dtype=str)
        rows = rows[[(table.parent / s).is_dir() for s in rows["session_id"]]]
        rows[["session_id", "acq_time"]].to_csv(table, sep="\t", index=False)
    described = bids / "sessions.json"
    if described.exists():
        data = json.loads(described.read_text())
        described.write_text(json.dumps({k: v for k, v in data.items()
                                         if k in ("session_id", "acq_time")}, indent=1))


@pytest.mark.slow
def test_predict_runs_mri_preprocessing_on_a_simulated_mri_only_dataset(tmp_path: Path) -> None:
    """Raw simulated T1w, no PET and no Centiloid anywhere → predictions (real preprocessing).

    The model was trained on deepbet-stripped MRI: predict must preprocess with
    the model file's parameters, not the run's defaults (HD-BET).
    """
    from bids_amyloid.config import PreprocConfig
    from bids_amyloid.models import build_student, save_model
    from bids_amyloid.simulate import simulate_cohort

    cfg = AppConfig(preproc=PreprocConfig(skull_strip="deepbet"), model=CFG.model)
    model_file = save_model(tmp_path / "student_T1w.pt", build_student(cfg, ("T1w",)), cfg,
                            {"thresholds": {"tau": 0.5}, "training_participants": ["sub-999"]})
    bids = simulate_cohort(tmp_path / "bids", 1, seed=1, size="small")
    strip_pet_and_centiloid(bids)
    assert not list(bids.rglob("*_pet.nii.gz"))
    assert "centiloid" not in "".join(p.read_text() for p in bids.rglob("*sessions.tsv"))
    sessions = sorted(p.name for p in bids.glob("sub-001/ses-*") if (p / "anat").is_dir())
    out = tmp_path / "out"
    assert cli.main([str(bids), str(out), "predict", "--model", str(model_file), "-q"]) == 0
    folder = out / "predict" / "student_T1w"
    table = read_tsv(folder / "predictions.tsv")
    assert table["session_id"].tolist() == sessions
    assert table["probability"].astype(float).between(0, 1).all()
    assert table["cohort_split"].tolist() == ["none"] * len(sessions)
    # predict preprocessed the MRI into OUT, the participant level's place, and nothing of PET
    for ses in sessions:
        cache = drv.mri_slice_cache(out, "001", ses.removeprefix("ses-"), "T1w")
        assert cache.is_file() and drv.sidecar_of(cache).is_file()
        assert drv.read_slice_cache(cache)[2]["Parameters"]["skull_strip"] == "deepbet"
    assert not list(out.rglob("*_pet*"))
    assert not (folder / "metrics.tsv").exists()
    # a second run reuses those caches and gives byte-identical predictions
    first = (folder / "predictions.tsv").read_bytes()
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*desc-slices_T1w.npy")}
    assert cli.main([str(bids), str(out), "predict", "--model", str(model_file), "-q"]) == 0
    assert (folder / "predictions.tsv").read_bytes() == first
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp, "caches were not rewritten"


def test_failed_preprocessing_is_reported_and_the_rest_predicted(tmp_path: Path,
                                                                  model_file: Path) -> None:
    out = tmp_path / "out"
    bids = mri_only_dataset(tmp_path / "bids", out, {"01": ("T1w",)})
    broken = BidsBuilder(bids).anat("02", "01", "T1w")  # no caches: predict must preprocess it
    broken.write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    assert predict(bids, out, model_file, "--allow-training-subjects") == 1
    folder = out / "predict" / "student_T1w"
    assert read_tsv(folder / "predictions.tsv")["participant_id"].tolist() == ["sub-01"]
    excluded = read_tsv(folder / "excluded.tsv")
    assert excluded["participant_id"].tolist() == ["sub-02"]
    reason = excluded["reason"].iloc[0]
    assert reason.startswith("preprocessing_failed:") and "T1w" in reason, reason
    assert json.loads((folder / "predict.json").read_text())["Sessions"]["failed"] == 1


def test_teacher_model_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from bids_amyloid.models import build_teacher, save_model

    teacher = save_model(tmp_path / "teacher.pt", build_teacher(CFG, ("T1w",)), CFG, {})
    out = tmp_path / "out"
    bids = mri_only_dataset(tmp_path / "bids", out, {"01": ("T1w",)})
    assert predict(bids, out, teacher) == 64
    assert any("needs PET" in r.getMessage() for r in caplog.records)


def test_calibration_and_operating_points_at_predict(tmp_path: Path) -> None:
    """A model file's calibration and operating points reach predictions.tsv, metrics.tsv and
    the run's report; decisions and calibrated values checked against the recorded numbers."""
    from bids_amyloid.models import build_student, save_model

    model = tmp_path / "student_T1w.pt"
    meta = {"thresholds": {"tau": 0.45},
            "calibration": {"method": "platt", "slope": 0.5, "intercept": -0.3, "n": 40,
                            "fitted_on": "validation"},
            "operating_points": {"0.5": 0.5, "tau": 0.45, "rule_out": 0.3, "rule_in": 0.7},
            "operating_point_rates": {"fitted_on": "validation", "n": 40,
                                      "rule_out": {"sensitivity": 0.92, "npv": 0.9}}}
    save_model(model, build_student(CFG, ("T1w",)), CFG, meta)
    out, bids = paired_dataset(tmp_path, 8)
    assert predict(bids, out, model) == 0
    folder = out / "predict" / "student_T1w"
    table = pd.read_csv(folder / "predictions.tsv", sep="\t")
    p = table["probability"].to_numpy(float)
    logit = np.log(p / (1 - p))
    assert np.allclose(table["probability_calibrated"], 1 / (1 + np.exp(-(0.5 * logit - 0.3))))
    for column, threshold in (("positive_at_0.5", 0.5), ("positive_at_tau", 0.45),
                              ("positive_at_rule_out", 0.3), ("positive_at_rule_in", 0.7)):
        assert (table[column] == (p > threshold).astype(int)).all(), column
    assert (table["rule_out_threshold"] == 0.3).all() and (table["rule_in_threshold"] == 0.7).all()
    # no training-cohort reference in this file: said, not flagged
    assert table["reliability"].str.startswith("ok (not checked").all()
    metrics = pd.read_csv(folder / "metrics.tsv", sep="\t").set_index("set")
    labels = np.array([1, 0] * 4)
    assert metrics.loc["all", "brier_raw"] == pytest.approx(np.mean((p - labels) ** 2))
    assert metrics.loc["all", "pet_avoided@rule_out"] == pytest.approx(np.mean(p <= 0.3))
    assert metrics.loc["all", "threshold@rule_in"] == 0.7
    report = (folder / "report.html").read_text()
    assert "rule-out" in report and "data:image/png;base64," in report
    assert (folder / "reliability.png").stat().st_size > 0
    assert "Operating points of the model" in (folder / "sub-01.html").read_text()
