"""End-to-end group level on synthetic slice caches: outputs, resume, ablations, DDP."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from train_fixtures import Killed, copy_cohort, run_group, synthetic_run, write_small_config

from bids_amyloid import cli
from bids_amyloid.train import loop

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train_e2e")]  # one module fixture

OUTPUTS = ("cohort.tsv", "config.toml", "teacher.pt", "student_T1w.pt",
           "student_T1w_best-cosine.pt", "training.tsv", "metrics.tsv", "predictions.tsv",
           "roc_epochs.png", "roc_test.png", "training_curves.png", "report.html")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("group")
    out = tmp / "out"
    bids, cohort = synthetic_run(out)
    config = write_small_config(tmp / "small.toml")
    assert run_group(bids, out, config) == 0
    return bids, out, config, cohort


def test_group_all_writes_every_output(finished):
    _, out, _, cohort = finished
    run = out / "group" / "default"
    for name in OUTPUTS:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    metrics = pd.read_csv(run / "metrics.tsv", sep="\t")
    assert set(metrics["model"]) == {"teacher", "student_T1w", "student_T1w_best-cosine"}
    assert set(metrics["split"]) == {"val", "test"}
    for col in ("auc", "auc_ci_low", "auc_ci_high", "f1@0.5", "f1@tau", "accuracy@tau",
                "precision@0.5", "recall@tau", "npv@tau", "sensitivity@tau", "specificity@tau"):
        assert col in metrics.columns
    preds = pd.read_csv(run / "predictions.tsv", sep="\t")
    n_eval = int((cohort["split"] != "train").sum())
    assert len(preds) == 3 * n_eval and preds["probability"].between(0, 1).all()
    log = pd.read_csv(run / "training.tsv", sep="\t")
    assert list(log.columns[:2]) == ["phase", "epoch"]
    assert log.groupby("phase").size().to_dict() == {"pretrain": 2, "contrastive": 2, "distill": 2}
    for col in ("train_loss", "lr_lora", "clip", "s", "margin", "temperature", "weight_focal",
                "val_auc", "val_f1@tau", "val_cosine", "val_score", "train_triplet"):
        assert col in log.columns, col
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and "student_T1w_best-cosine" in html
    assert "[model]" in (run / "config.toml").read_text()
    from bids_amyloid.models import load_model

    student, _, meta = load_model(run / "student_T1w.pt")
    assert meta["thresholds"]["0.5"] == 0.5 and 0 < meta["thresholds"]["tau"] < 1
    train_subjects = sorted(set(cohort.loc[cohort["split"] == "train", "participant_id"]))
    assert meta["training_participants"] == train_subjects
    assert student.role == "student" and meta["selection"] == "best val f1@tau"


def test_killed_then_resumed_equals_uninterrupted(finished, monkeypatch):
    bids, out, config, _ = finished
    copy_cohort(out, "default", "resumed")
    original = loop.Trainer._save_last

    def save_then_die(self, epoch):
        original(self, epoch)
        if self.task.name == "contrastive" and epoch == 0:
            raise Killed

    monkeypatch.setattr(loop.Trainer, "_save_last", save_then_die)
    with pytest.raises(Killed):
        run_group(bids, out, config, "--run-name", "resumed")
    monkeypatch.setattr(loop.Trainer, "_save_last", original)
    assert not (out / "group" / "resumed" / "metrics.tsv").exists()
    assert run_group(bids, out, config, "--run-name", "resumed", "--resume") == 0
    a = pd.read_csv(out / "group" / "default" / "metrics.tsv", sep="\t")
    b = pd.read_csv(out / "group" / "resumed" / "metrics.tsv", sep="\t")
    pd.testing.assert_frame_equal(a, b)
    la = pd.read_csv(out / "group" / "default" / "training.tsv", sep="\t")
    lb = pd.read_csv(out / "group" / "resumed" / "training.tsv", sep="\t")
    cols = [c for c in la.columns if c not in ("seconds", "samples_per_s")]
    pd.testing.assert_frame_equal(la[cols], lb[cols])
    assert not torch.are_deterministic_algorithms_enabled()


def test_ablation_and_cross_dataset_teacher(finished):
    bids, out, config, _ = finished
    copy_cohort(out, "default", "xdist")
    teacher = out / "group" / "default" / "teacher.pt"
    code = run_group(bids, out, config, "--run-name", "xdist", "--teacher", str(teacher),
                  "--ablate", "no-logit-kd", "--cl-gap", "10")
    assert code == 0
    run = out / "group" / "xdist"
    log = pd.read_csv(run / "training.tsv", sep="\t")
    assert set(log["phase"]) == {"distill"} and (log["weight_logit_kd"] == 0).all()
    assert not (run / "teacher.pt").exists() and (run / "student_T1w.pt").is_file()
    assert "cross-dataset" in (run / "report.html").read_text()


def test_a_teacher_from_other_preprocessing_is_refused(finished, tmp_path, caplog):
    """--teacher whose file records another [preproc] than this run's caches: exit 64 naming
    the field (the same file with its own values is accepted, test above)."""
    bids, out, config, _ = finished
    payload = torch.load(out / "group" / "default" / "teacher.pt", weights_only=True)
    gamma = payload["config"]["preproc"]["gamma"]
    payload["config"]["preproc"]["gamma"] = gamma + 0.25
    other = tmp_path / "teacher_other_gamma.pt"
    torch.save(payload, other)
    copy_cohort(out, "default", "other-prep")
    assert run_group(bids, out, config, "--run-name", "other-prep", "--teacher", str(other)) == 64
    assert f"gamma = {gamma + 0.25!r} there, {gamma!r} here" in caplog.text


def test_test_predictions_are_fp32_and_equal_predicts(finished, monkeypatch):
    """Training under bf16 autocast (as AMP on a GPU; CPU autocast here) leaves evaluation in
    fp32: the group level's test probabilities equal predict's for the same sessions."""
    from types import SimpleNamespace

    from bids_amyloid import derivatives
    from bids_amyloid.config import AppConfig
    from bids_amyloid.predict.inference import infer
    from bids_amyloid.predict.model import load_predict_model
    from bids_amyloid.predict.plan import SessionPlan
    from bids_amyloid.train import phases

    bids, out, config, _ = finished
    copy_cohort(out, "default", "amp")
    bf16 = lambda device, amp: torch.bfloat16  # noqa: E731 - training autocast, as on a GPU
    monkeypatch.setattr(loop, "autocast_dtype", bf16)
    monkeypatch.setattr(phases, "autocast_dtype", bf16, raising=False)   # where it was imported
    teacher = out / "group" / "default" / "teacher.pt"
    assert run_group(bids, out, config, "--run-name", "amp", "--teacher", str(teacher)) == 0
    monkeypatch.undo()
    run = out / "group" / "amp"
    preds = pd.read_csv(run / "predictions.tsv", sep="\t")
    test = preds[(preds["model"] == "student_T1w") & (preds["split"] == "test")]
    assert len(test) >= 3 and test["probability"].nunique() > 1
    model = load_predict_model(run / "student_T1w.pt", AppConfig())
    plans = []
    for sub, ses in zip(test["participant_id"], test["mri_session"], strict=True):
        sub, ses = sub.removeprefix("sub-"), ses.removeprefix("ses-")
        plans.append(SessionPlan(SimpleNamespace(sub=sub, ses=ses), ("T1w",), caches={
            "T1w": derivatives.mri_slice_cache(out, sub, ses, "T1w")}))
    probs = infer(plans, model)
    expected = [probs[p.key] for p in plans]
    assert test["probability"].tolist() == pytest.approx(expected, abs=1e-5, rel=0)


def test_no_teacher_baseline_trains_the_student_alone(finished):
    bids, out, config, _ = finished
    copy_cohort(out, "default", "alone")
    assert run_group(bids, out, config, "--run-name", "alone", "--ablate", "no-teacher") == 0
    run = out / "group" / "alone"
    assert not (run / "teacher.pt").exists() and not list(run.glob("student_T1w.pt"))
    from bids_amyloid.models import load_model

    student, _, meta = load_model(run / "student_T1w_no-teacher.pt")
    assert student.role == "student" and meta["teacher"] is None
    assert meta["ablation"] == "no-teacher" and meta["selection"] == "best val f1@tau"
    metrics = pd.read_csv(run / "metrics.tsv", sep="\t")
    assert set(metrics["model"]) == {"student_T1w_no-teacher"}
    log = pd.read_csv(run / "training.tsv", sep="\t")
    assert set(log["phase"]) == {"no-teacher"} and len(log) == 2
    assert "train_feature_kd" not in log.columns and "val_cosine" not in log.columns
    assert (log["weight_feature_kd"] == 0).all() and (log["weight_logit_kd"] == 0).all()
    assert (run / "checkpoints" / "no-teacher" / "done.json").is_file()
    # with a teacher given, the baseline is a usage error
    teacher = out / "group" / "default" / "teacher.pt"
    assert run_group(bids, out, config, "--run-name", "alone", "--ablate", "no-teacher",
                  "--teacher", str(teacher)) == 64


def test_contrastive_stage_without_teacher_is_a_clear_error(finished):
    bids, out, config, _ = finished
    copy_cohort(out, "default", "lonely")
    code = cli.main([str(bids), str(out), "group", "--stage", "contrastive", "--config",
                     str(config), "--run-name", "lonely", "-q"])
    assert code == 66


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed")
def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "out"
    bids, _ = synthetic_run(out, n_subjects=8)
    config = write_small_config(tmp_path / "small.toml")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "bids_amyloid.cli",
         str(bids), str(out), "group", "--stage", "all", "--config", str(config), "-q"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "group" / "default"
    assert (run / "metrics.tsv").is_file() and (run / "student_T1w.pt").is_file()


def test_staged_runs_with_a_two_contrast_teacher(tmp_path):
    out = tmp_path / "out"
    bids, _ = synthetic_run(out, n_subjects=8, contrasts=("T1w", "T2w"), second_pet=())
    config = write_small_config(tmp_path / "small.toml")
    base = [str(bids), str(out), "group", "--config", str(config), "-q"]
    run = out / "group" / "default"
    assert cli.main([*base, "--stage", "pretrain", "--teacher-contrasts", "T1w", "T2w"]) == 0
    assert (run / "teacher.pt").is_file() and not list(run.glob("student_*"))
    # the paper's "T1w+T2w → T1w": teacher contrasts come from teacher.pt
    assert cli.main([*base, "--stage", "distill", "--contrasts", "T1w"]) == 0
    # a two-contrast student (contrast dropout in training), evaluated with both contrasts
    assert cli.main([*base, "--stage", "distill", "--contrasts", "T1w", "T2w"]) == 0
    from bids_amyloid.models import load_model

    single, _, meta = load_model(run / "student_T1w.pt")
    assert single.contrasts == ("T1w",) and meta["teacher_contrasts"] == ["T1w", "T2w"]
    double, _, _ = load_model(run / "student_T1w+T2w.pt")
    assert double.contrasts == ("T1w", "T2w")
    log = pd.read_csv(run / "training.tsv", sep="\t")
    assert set(log["phase"]) == {"pretrain", "distill"}
    assert cli.main([*base, "--stage", "distill", "--teacher-contrasts", "T1w"]) == 64
