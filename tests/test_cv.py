"""group --cv: outer folds over subjects, out-of-fold results, the ensemble file, resume."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from train_fixtures import Killed, copy_cohort, run_group, synthetic_run, write_small_config

from bids_amyloid import derivatives
from bids_amyloid.config import CohortConfig
from bids_amyloid.train import loop

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cv")]  # one module fixture

K = 3
MISSING = "sub-09"   # no slice cache: in no fold


def _group(bids: Path, out: Path, config: Path, run: str, *extra: str) -> int:
    return run_group(bids, out, config, "--cv", str(K), "--run-name", run, *extra)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cv")
    out = tmp / "out"
    bids, cohort = synthetic_run(out, n_subjects=10, n_kept=8, run_name="cv")
    cache = derivatives.mri_slice_cache(out, MISSING.removeprefix("sub-"), "01", "T1w")
    cache.unlink()                                  # a subject the participant level missed
    derivatives.sidecar_of(cache).unlink()
    config = write_small_config(tmp / "small.toml")
    assert _group(bids, out, config, "cv") == 0
    return bids, out, config, cohort


# -- fold assignment ----------------------------------------------------------------------------
def test_folds_keep_subjects_whole_and_test_each_once():
    from bids_amyloid.train.cv import fold_cohorts

    # 12 subjects, positives every third, three of them with a second PET (another row)
    rows = []
    for i in range(12):
        for pet in ("02", "03") if i in (1, 4, 7) else ("02",):
            rows.append({"participant_id": f"sub-{i:02d}", "pet_session": f"ses-{pet}",
                         "label": int(i % 3 == 0), "split": "train"})
    cohort = pd.DataFrame(rows)
    subjects = set(cohort["participant_id"])
    folds = fold_cohorts(cohort, 4, CohortConfig(split_seed=7))
    assert len(folds) == 4
    tested: list[str] = []
    for k, fold in enumerate(folds):
        assert len(fold) == len(cohort)
        assert (fold["participant_id"] == cohort["participant_id"]).all()   # rows unchanged
        per_subject = fold.groupby("participant_id")["split"].nunique()
        assert (per_subject == 1).all(), f"fold {k} splits a subject"
        assert set(fold["split"]) == {"train", "val", "test"}
        test = set(fold.loc[fold["split"] == "test", "participant_id"])
        val = set(fold.loc[fold["split"] == "val", "participant_id"])
        train = set(fold.loc[fold["split"] == "train", "participant_id"])
        assert test and val and train and not (test & val) and test | val | train == subjects
        tested.extend(sorted(test))
        nxt = folds[(k + 1) % 4]
        assert val == set(nxt.loc[nxt["split"] == "test", "participant_id"])
    assert sorted(tested) == sorted(subjects)        # every subject tested exactly once
    with pytest.raises(Exception, match="K ≥ 3"):
        fold_cohorts(cohort, 2, CohortConfig())


# -- the run --------------------------------------------------------------------------------------
def test_cv_writes_folds_oof_and_pooled_metrics(finished):
    _, out, _, cohort = finished
    run = out / "group" / "cv"
    oof = pd.read_csv(run / "oof_predictions.tsv", sep="\t")
    # every usable cohort row exactly once out of fold, predicted by the fold that held it out
    key = ["participant_id", "pet_session"]
    usable = cohort[cohort["participant_id"] != MISSING]
    assert sorted(map(tuple, oof[key].to_numpy())) == sorted(map(tuple, usable[key].to_numpy()))
    missing = pd.read_csv(run / "missing.tsv", sep="\t")
    assert set(missing["participant_id"]) == {MISSING}
    for k in range(K):
        fold = pd.read_csv(run / f"fold-{k}" / "cohort.tsv", sep="\t")
        held = set(fold.loc[fold["split"] == "test", "participant_id"])
        assert set(oof.loc[oof["fold"] == k, "participant_id"]) == held
        assert (run / f"fold-{k}" / "student_T1w.pt").is_file()
        assert (run / f"fold-{k}" / "report.html").is_file()
    table = pd.read_csv(run / "cv_metrics.tsv", sep="\t", dtype={"fold": str}).set_index("fold")
    assert list(table.index) == ["0", "1", "2", "mean", "sd", "pooled", "pooled_calibrated"]
    per_fold = table.loc[["0", "1", "2"], "auc"].astype(float)
    assert table.loc["mean", "auc"] == pytest.approx(per_fold.mean())
    assert table.loc["sd", "auc"] == pytest.approx(per_fold.std(ddof=1))
    from sklearn.metrics import roc_auc_score

    assert table.loc["pooled", "auc"] == pytest.approx(roc_auc_score(oof["label"],
                                                                     oof["probability"]))
    assert table.loc["pooled", "n"] == len(usable)
    # each fold's own calibration (fitted on its validation fold), then pooled
    assert table.loc["pooled_calibrated", "auc"] == pytest.approx(
        roc_auc_score(oof["label"], oof["probability_calibrated"]))
    assert table.loc["pooled", "auc_ci_low"] <= table.loc["pooled", "auc"] \
        <= table.loc["pooled", "auc_ci_high"]
    # the run-level page shows every fold and the pooled rows, with the pooled AUC as written
    page = (run / "report.html").read_text()
    assert all(f"<td>{k}</td>" in page for k in [*map(str, range(K)), "mean", "sd", "pooled"])
    assert f"{table.loc['pooled', 'auc']:.3f} [" in page
    assert (run / "reliability.png").is_file()


def test_cv_without_participant_outputs_says_so(finished, tmp_path, caplog):
    """--cv on an output folder that holds no slice caches: the input-missing exit code and
    a message pointing at the participant level (not a fold-count complaint)."""
    from bids_amyloid.errors import EXIT_INPUT_MISSING

    bids, out, config, _ = finished
    empty = tmp_path / "out"
    (empty / "group" / "cv").mkdir(parents=True)
    shutil.copy(out / "group" / "cv" / "cohort.tsv", empty / "group" / "cv" / "cohort.tsv")
    assert _group(bids, empty, config, "cv") == EXIT_INPUT_MISSING
    assert "none of the" in caplog.text and "run the participant level first" in caplog.text
    assert not (empty / "group" / "cv" / "fold-0").exists()


# -- the ensemble file ---------------------------------------------------------------------------
def test_ensemble_round_trip_records_members(finished):
    from bids_amyloid.models import load_any_model

    _, out, _, _ = finished
    run = out / "group" / "cv"
    net, cfg, meta = load_any_model(run / "student_T1w_ensemble.pt")
    assert net.role == "student" and net.contrasts == ("T1w",) and len(net.members) == K
    assert cfg.model.backbone == "test_vit"
    train_union, val_union = set(), set()
    for k, member in enumerate(meta["members"]):
        fold = pd.read_csv(run / f"fold-{k}" / "cohort.tsv", sep="\t")
        split = fold.groupby("participant_id")["split"].first()
        assert member["sha256"] == _sha(run / f"fold-{k}" / "student_T1w.pt")
        assert member["training_participants"] == sorted(split[split == "train"].index)
        assert member["validation_participants"] == sorted(split[split == "val"].index)
        assert member["test_participants"] == sorted(split[split == "test"].index)
        train_union |= set(member["training_participants"])
        val_union |= set(member["validation_participants"])
    # the leakage flag knows every member: union of their train (and val) subjects
    assert meta["training_participants"] == sorted(train_union)
    assert meta["validation_participants"] == sorted(val_union)
    assert 0 < meta["thresholds"]["tau"] < 1
    # calibration and operating points fitted on the pooled validation predictions (counted)
    val = pd.concat([pd.read_csv(run / f"fold-{k}" / "predictions.tsv", sep="\t")
                     for k in range(K)])
    val = val[(val["model"] == "student_T1w") & (val["split"] == "val")]
    assert meta["calibration"]["n"] == len(val) and meta["calibration"]["method"] == "platt"
    # every member calibrated: the ensemble averages calibrated probabilities, and its τ and
    # operating points are on that scale
    assert meta["member_calibration"] is True and val["probability_calibrated"].notna().all()
    positives = val.loc[val["label"] == 1, "probability_calibrated"]
    assert (positives > meta["operating_points"]["rule_out"]).sum() >= 0.9 * len(positives)
    assert len(meta["reliability"]["members"]) == K


def test_tampered_member_is_refused(finished, tmp_path):
    import torch

    from bids_amyloid.models import ModelFileError, load_any_model

    _, out, _, _ = finished
    copy = tmp_path / "cv"
    shutil.copytree(out / "group" / "cv", copy,
                    ignore=shutil.ignore_patterns("checkpoints", "*.png", "*.html"))
    member = copy / "fold-1" / "student_T1w.pt"
    payload = torch.load(member, weights_only=True)
    key = next(k for k in payload["state_dict"] if "classifier" in k)
    payload["state_dict"][key] = payload["state_dict"][key] + 1.0   # a changed weight
    torch.save(payload, member)
    with pytest.raises(ModelFileError, match=r"fold-1/student_T1w\.pt.*changed after"):
        load_any_model(copy / "student_T1w_ensemble.pt")
    with pytest.raises(ModelFileError, match="ensemble"):            # not a single model file
        from bids_amyloid.models import read_model_file

        read_model_file(copy / "student_T1w_ensemble.pt")


def test_predict_on_ensemble_is_mean_of_members(finished, tmp_path):
    from tests.test_predict import mri_only_dataset, predict

    _, out, _, _ = finished
    run = out / "group" / "cv"
    pout = tmp_path / "pout"
    bids = mri_only_dataset(tmp_path / "bids", pout, {"01": ("T1w",), "05": ("T1w",),
                                                      "77": ("T1w",)})
    from bids_amyloid.models import save_ensemble

    def table(name: str) -> pd.DataFrame:
        return pd.read_csv(pout / "predict" / name / "predictions.tsv", sep="\t",
                           dtype={"participant_id": str}).set_index("participant_id")

    members = [run / f"fold-{k}" / "student_T1w.pt" for k in range(K)]
    raw_ensemble = save_ensemble(run / "student_T1w_raw-ensemble.pt", members, {})  # no calib.
    assert predict(bids, pout, raw_ensemble) == 0
    assert predict(bids, pout, run / "student_T1w_ensemble.pt") == 0
    raw, ens = table("student_T1w_raw-ensemble"), table("student_T1w_ensemble")
    probs, calibrated = [], []
    for member in members:     # each member on its own, through the single-model path
        assert predict(bids, pout, member) == 0
        probs.append(table("student_T1w")["probability"])
        calibrated.append(table("student_T1w")["probability_calibrated"])
    mean = pd.concat(probs, axis=1).mean(axis=1)
    assert np.allclose(raw.loc[mean.index, "probability"], mean, atol=1e-6)
    assert len(set(np.round(mean, 6))) == 3
    mean_calibrated = pd.concat(calibrated, axis=1).mean(axis=1)   # the written ensemble
    assert np.allclose(ens.loc[mean.index, "probability"], mean_calibrated, atol=1e-6)
    # with K = 3 every cohort subject (00–08) trained one member; 77 is in no member's cohort
    assert ens.loc["sub-01", "cohort_split"] == "train"
    assert ens.loc["sub-05", "cohort_split"] == "train"
    assert ens.loc["sub-77", "cohort_split"] == "none"
    # the members' training-cohort references were checked (the verdict itself depends on
    # how unlike these hand-made slices are to the folds' synthetic caches)
    assert not ens["reliability"].str.contains("not checked").any()


# -- resume ---------------------------------------------------------------------------------------
def test_resume_skips_finished_fold_and_resumes_interrupted(finished, monkeypatch):
    bids, out, config, _ = finished
    copy_cohort(out, "cv", "cv-resumed")
    run = out / "group" / "cv-resumed"
    original_save = loop.Trainer._save_last

    def save_then_die(self, epoch):
        original_save(self, epoch)
        if "fold-1" in str(self.ckpt_dir) and self.task.name == "distill" and epoch == 0:
            raise Killed

    monkeypatch.setattr(loop.Trainer, "_save_last", save_then_die)
    with pytest.raises(Killed):
        _group(bids, out, config, "cv-resumed")
    monkeypatch.setattr(loop.Trainer, "_save_last", original_save)
    assert (run / "fold-0" / "fold.json").is_file() and not (run / "fold-1" / "fold.json").exists()
    fold0 = {p.name: _sha(p) for p in (run / "fold-0").glob("*.pt")}

    fitted, resumed = [], []
    original_fit, original_resume = loop.Trainer.fit, loop.Trainer.resume

    def fit(self):
        fitted.append((self.ckpt_dir.parent.parent.name, self.task.name))
        return original_fit(self)

    def resume(self):
        loaded = original_resume(self)
        resumed.append((self.ckpt_dir.parent.parent.name, self.task.name, loaded))
        return loaded

    monkeypatch.setattr(loop.Trainer, "fit", fit)
    monkeypatch.setattr(loop.Trainer, "resume", resume)
    assert _group(bids, out, config, "cv-resumed", "--resume") == 0
    assert not [f for f in fitted if f[0] == "fold-0"], "a finished fold was retrained"
    assert {p.name: _sha(p) for p in (run / "fold-0").glob("*.pt")} == fold0
    assert ("fold-1", "distill", True) in resumed            # continued from its last.pt
    assert ("fold-1", "pretrain") not in fitted              # finished phases are kept
    assert ("fold-2", "pretrain") in fitted
    a = pd.read_csv(out / "group" / "cv" / "cv_metrics.tsv", sep="\t")
    b = pd.read_csv(run / "cv_metrics.tsv", sep="\t")
    pd.testing.assert_frame_equal(a, b)                     # same as the uninterrupted run
