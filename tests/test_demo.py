"""The demo's configuration, its cohort size and its closing sentence (no pipeline run:
``make demo`` itself and the slow end-to-end tests run the command lines)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bids_amyloid.config_checks import load_run_config
from bids_amyloid.demo import BACKBONE, CONFIG, main, verdict
from bids_amyloid.sim.plan import plan_cohort
from bids_amyloid.train.phases import head_budget


def test_demo_configuration_loads_and_sizes_phase_3_in_steps(tmp_path: Path) -> None:
    path = tmp_path / "demo.toml"
    path.write_text(CONFIG)
    cfg = load_run_config(path)
    assert cfg.model.backbone == BACKBONE
    assert cfg.distill.reinit_gain == 0.0 and cfg.distill.accumulation == 1
    # 100 subjects, 3 training folds of 5, 1.25 pairs per subject: ~75 training pairs
    steps, reach, bound = head_budget(cfg, 75)
    assert steps == cfg.distill.max_epochs * math.ceil(75 / cfg.distill.batch_size)
    assert reach > bound
    assert main([str(tmp_path / "demo"), "--subjects", "4"]) == 64


def test_tiny_cohort_has_enough_test_pairs() -> None:
    """One T1w-only MRI session per subject; index 3, 7, … get a second PET near it."""
    plans = plan_cohort(100, 7, "tiny")
    for plan in plans:
        mri = [s for s in plan.sessions if s.kind == "mri"]
        pet = [s for s in plan.sessions if s.kind == "pet"]
        assert len(mri) == 1 and mri[0].contrasts[0] == "T1w"
        assert len(pet) == (2 if plan.index % 4 == 3 else 1)
        assert all(abs(p.day - mri[0].day) <= 365 for p in pet)  # every PET pairs
    assert all(s.contrasts == ("T1w",) for p in plans[1:] for s in p.sessions if s.kind == "mri")
    # the test fold is a fifth of the subjects: ≥ 20 of them, ≥ 25 pairs expected
    assert sum(len(p.sessions) - 1 for p in plans) == 125


def _table(student: tuple[float, float, float], no_teacher: tuple[float, float, float]
           ) -> pd.DataFrame:
    rows = [{"model": "oracle (MRI-only, simulator truth)", "n": 25, "auc": 0.81}]
    for name, (a, lo, hi) in (("student (MRI only)", student),
                              ("student without teacher", no_teacher)):
        rows.append({"model": name, "n": 25, "auc": a, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def test_verdict_says_what_the_numbers_show() -> None:
    learned = verdict(_table((0.78, 0.6, 0.93), (0.55, 0.3, 0.75)))
    assert "On 25 test pairs" in learned and "0.78 [0.60–0.93]" in learned
    assert "better than chance" in learned and "0.81" in learned
    assert "not distinguishable from the student trained without a teacher" in learned
    assert "synthetic data" in learned and "randomly initialised" in learned
    chance = verdict(_table((0.52, 0.3, 0.74), (0.50, 0.3, 0.7)))
    assert "cannot be told from chance" in chance
    above = verdict(_table((0.9, 0.8, 0.97), (0.5, 0.3, 0.7)))
    assert "above the student trained without a teacher" in above
