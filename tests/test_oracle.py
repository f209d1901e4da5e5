"""The simulator's MRI-visible amyloid signal and the oracle AUC computed from its truth."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_amyloid.sim.oracle import (
    fisher_direction,
    oracle_auc,
    oracle_direction,
    oracle_score,
    oracle_scores,
    reference_sample,
)
from bids_amyloid.sim.plan import plan_cohort
from bids_amyloid.sim.writer import TRUTH_FOLDER
from bids_amyloid.simulate import simulate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_cohort(tmp_path_factory.mktemp("oracle") / "bids", 4, seed=3, size="small")


def _mann_whitney(labels: list[int], scores: list[float]) -> float:
    """AUC by counting (positive, negative) pairs; ties count one half."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    return sum(wins) / len(wins)


def test_truth_holds_the_signal_the_mri_derives_from(cohort: Path) -> None:
    plans = {f"sub-{p.label}": p for p in plan_cohort(4, seed=3, size="small")}
    params = pd.read_csv(cohort / TRUTH_FOLDER / "parameters.tsv", sep="\t")
    mri = params[params["modality"] == "mri"]
    assert len(mri) >= 4
    for row in mri.itertuples():
        expected = min(max(row.latent_centiloid, 0.0), 120.0) / 100.0
        assert row.mri_amyloid_signal == pytest.approx(expected, abs=1e-4)
        plan = plans[row.participant_id]
        # thinning = 0.06 + 0.004·(age − 70) + 0.10·signal + subject offset + session noise (sd 0.01)
        rest = row.cortical_thinning - 0.06 - 0.004 * (row.age - 70) - 0.10 * row.mri_amyloid_signal
        assert abs(rest - plan.thinning_offset) < 0.04
        rest = row.ventricle_growth_mm - 0.6 - 0.08 * (row.age - 70) - 1.6 * row.mri_amyloid_signal
        if 0.0 < row.ventricle_growth_mm < 5.0:      # not clipped
            assert abs(rest - plan.ventricle_offset) < 0.8
    for path in (cohort / TRUTH_FOLDER).glob("*_T1w_truth.json"):
        truth = json.loads(path.read_text())
        row = mri[(mri["participant_id"] == truth["participant_id"])
                  & (mri["session_id"] == truth["session_id"])]
        assert truth["mri_amyloid_signal"] == pytest.approx(row["mri_amyloid_signal"].item(),
                                                        abs=1e-4)


def test_oracle_scores_follow_the_truth(cohort: Path) -> None:
    w_thin, w_vent = oracle_direction()
    sessions, labels, expected = [], [], []
    for path in sorted((cohort / TRUTH_FOLDER).glob("*_T1w_truth.json")):
        truth = json.loads(path.read_text())
        sessions.append((truth["participant_id"], truth["session_id"].removeprefix("ses-")))
        labels.append(int(truth["latent_centiloid"] > 20.0))
        expected.append(w_thin * truth["cortical_thinning"] + w_vent * truth["ventricle_growth_mm"])
    np.testing.assert_allclose(oracle_scores(cohort, sessions), expected, atol=1e-3)
    if len(set(labels)) == 2:
        assert oracle_auc(cohort, sessions, labels) == pytest.approx(
            _mann_whitney(labels, expected))
    with pytest.raises(KeyError, match="sub-999/ses-x"):
        oracle_scores(cohort, [("sub-999", "ses-x")])


def test_oracle_is_the_best_mri_ranking_and_below_the_amyloid_itself() -> None:
    """On an independent planned cohort: both morphology weights positive, the oracle
    ranks better than either parameter alone, and worse than the (unseen) amyloid."""
    w_thin, w_vent = oracle_direction()
    assert w_thin > 0 and w_vent > 0
    features, labels = reference_sample(1500, seed=99)
    scores = oracle_score(features[:, 0], features[:, 1])
    from sklearn.metrics import roc_auc_score

    oracle = roc_auc_score(labels, scores)
    assert oracle > roc_auc_score(labels, features[:, 0]) + 0.01
    assert oracle > roc_auc_score(labels, features[:, 1]) + 0.01
    assert 0.8 < oracle < 0.97          # learnable, not trivial (the generator's nuisance)
    # the sample's own Fisher direction gives the same ranking quality
    own = features @ fisher_direction(features, labels)
    assert roc_auc_score(labels, own) == pytest.approx(oracle, abs=0.01)


def test_missing_truth_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"parameters\.tsv"):
        oracle_scores(tmp_path, [("sub-01", "ses-01")])
