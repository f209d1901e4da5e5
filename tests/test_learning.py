"""The MRI-only student learns the label (and learns nothing from shuffled labels).

A synthetic problem (:func:`train_fixtures.synthetic_run`): positives' MRI has a
larger dark centre (radius +0.08), blurred by a label-independent radius
nuisance of sd :data:`NUISANCE`; so the best any MRI-only model can do is the
generator's oracle AUC ``Φ(0.08 / (NUISANCE·√2))`` ≈ 0.97. The whole group
level runs (teacher phases 1–2, distillation), through the command line, with
a tiny ViT, 32 px images and a schedule of a few hundred optimiser steps:

- true labels: the student's test AUC must reach :data:`MIN_AUC`;
- labels (and Centiloid) permuted within each split of ``cohort.tsv``
  (:func:`train_fixtures.shuffle_labels`), the same pipeline: the student's AUC on
  the (permuted) test labels must stay ≤ :data:`MAX_SHUFFLED_AUC` with a CI
  holding 0.5 — nothing about a test label reaches its prediction. (Against the
  *true* labels such a student is not at chance: feature KD still teaches it the
  image's dominant variation, the dark centre, and its readout's sign is random,
  so its AUC lands near the oracle's or its mirror.)

The schedule (:func:`bids_amyloid.demo.small_cohort_group_toml`) follows the
small-cohort rule of :func:`bids_amyloid.train.phases.head_budget`: the re-initialised classifier layer starts at zero
(``reinit_gain = 0``), so its direction comes from the label, not from the
random draw, and one optimiser step per batch (``accumulation = 1``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from train_fixtures import shuffle_labels, synthetic_run

from bids_amyloid import cli
from bids_amyloid.demo import small_cohort_group_toml

pytestmark = pytest.mark.xdist_group("learning")

N_SUBJECTS = 100
NUISANCE = 0.03
SIGNAL = 0.08           # synthetic_run: the positives' extra "ventricle" radius
MIN_AUC = 0.85
MAX_SHUFFLED_AUC = 0.70
CONFIG = small_cohort_group_toml(bootstrap=50)


def oracle_auc() -> float:
    """AUC of the true radius: the difference of two normals with sd NUISANCE, mean SIGNAL."""
    z = SIGNAL / (NUISANCE * math.sqrt(2.0))
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame, Path]:
    tmp = tmp_path_factory.mktemp("learning")
    out = tmp / "out"
    bids, cohort = synthetic_run(out, n_subjects=N_SUBJECTS, n_kept=12, nuisance=NUISANCE,
                                 second_pet=())
    config = tmp / "learning.toml"
    config.write_text(CONFIG)
    return bids, out, cohort, config


def _student_test(bids: Path, out: Path, config: Path, run: str) -> pd.Series:
    """Run the group level; the student's test row of ``metrics.tsv``."""
    code = cli.main([str(bids), str(out), "group", "--stage", "all", "--config", str(config),
                     "--run-name", run, "--deterministic", "-q"])
    assert code == 0
    metrics = pd.read_csv(out / "group" / run / "metrics.tsv", sep="\t")
    row = metrics[(metrics["model"] == "student_T1w") & (metrics["split"] == "test")]
    assert len(row) == 1
    return row.iloc[0]


def test_student_learns_the_label(data: tuple[Path, Path, pd.DataFrame, Path]) -> None:
    bids, out, _, config = data
    assert oracle_auc() > 0.95
    row = _student_test(bids, out, config, "default")
    preds = pd.read_csv(out / "group" / "default" / "predictions.tsv", sep="\t")
    test = preds[(preds["model"] == "student_T1w") & (preds["split"] == "test")]
    assert len(test) == N_SUBJECTS // 5
    assert test["probability"].std() > 0      # not one constant output
    assert row["auc"] >= MIN_AUC, f"student test AUC {row['auc']:.3f} (oracle {oracle_auc():.3f})"
    assert row["auc_ci_low"] > 0.5


def test_student_learns_nothing_from_shuffled_labels(
        data: tuple[Path, Path, pd.DataFrame, Path]) -> None:
    """The whole pipeline on permuted labels: chance on its (permuted) test labels."""
    bids, out, cohort, config = data
    shuffled = shuffle_labels(cohort, seed=1)
    assert (shuffled["label"] != cohort["label"]).mean() > 0.3
    folder = out / "group" / "shuffled"
    folder.mkdir(parents=True, exist_ok=True)
    shuffled.to_csv(folder / "cohort.tsv", sep="\t", index=False)
    row = _student_test(bids, out, config, "shuffled")
    assert row["auc"] <= MAX_SHUFFLED_AUC, f"student test AUC {row['auc']:.3f}, shuffled labels"
    assert row["auc_ci_low"] <= 0.5 <= row["auc_ci_high"]
