"""Calibration and screening operating points of a trained student, on test.

Runs the group level (``--stage all``) on the synthetic cohort of
``tests/test_learning.py`` (``tests/train_fixtures.synthetic_run``: MRI slice
caches whose dark centre is larger in positives, blurred by a nuisance) with
that test's small schedule, then prints, for the student ``student_T1w.pt``
on the test split: AUC, Brier score and expected calibration error (10
equal-width bins) before and after the Platt scaling fitted on validation,
and each operating point's threshold with sensitivity, specificity, PPV, NPV
(95 % subject-bootstrap CIs) and, at rule-out, the fraction of PET avoided.

    python benchmarks/calibration.py --out /tmp/calib [--subjects 100] [--nuisance 0.03]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from bids_amyloid.demo import small_cohort_group_toml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CONFIG = small_cohort_group_toml(bootstrap=1000)
POINTS = ("0.5", "tau", "rule_out", "rule_in")


def ci(row: pd.Series, key: str) -> str:
    return f"{row[key]:.3f} [{row[key + '_ci_low']:.3f}–{row[key + '_ci_high']:.3f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="an empty folder")
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--nuisance", type=float, default=0.03)
    args = parser.parse_args(argv)

    from train_fixtures import synthetic_run

    from bids_amyloid import cli

    bids, _ = synthetic_run(args.out, n_subjects=args.subjects, n_kept=12,
                            nuisance=args.nuisance, second_pet=())
    config = args.out / "calibration.toml"
    config.write_text(CONFIG)
    start = time.perf_counter()
    code = cli.main([str(bids), str(args.out), "group", "--stage", "all", "--config",
                     str(config), "--deterministic", "-q"])
    if code != 0:
        return code
    metrics = pd.read_csv(args.out / "group" / "default" / "metrics.tsv", sep="\t")
    print(f"group run: {time.perf_counter() - start:.0f} s, {args.subjects} subjects")
    from bids_amyloid.calibration import PlattScaling
    from bids_amyloid.models import read_model_file

    meta = read_model_file(args.out / "group" / "default" / "student_T1w.pt")["meta"]
    calibration = PlattScaling.from_meta(meta)
    if calibration is not None:
        print(f"calibration (Platt, fitted on {calibration.n} validation samples): "
              f"slope {calibration.slope:.3f}, intercept {calibration.intercept:.3f}")
    for split in ("val", "test"):
        row = metrics[(metrics["model"] == "student_T1w") & (metrics["split"] == split)].iloc[0]
        print(f"\nstudent_T1w on {split}: n {int(row['n'])} ({int(row['n_positive'])} positive), "
              f"AUC {row['auc']:.3f} [{row['auc_ci_low']:.3f}–{row['auc_ci_high']:.3f}]")
        print(f"  Brier  before {row['brier_raw']:.4f}  after {row['brier_calibrated']:.4f}")
        print(f"  ECE    before {row['ece_raw']:.4f}  after {row['ece_calibrated']:.4f}"
              "  (10 equal-width bins)")
        for point in POINTS:
            thr = row["threshold@" + point]
            cal = float(calibration.apply([thr])[0]) if calibration is not None else float("nan")
            line = (f"  {point:>8}: threshold {thr:.5f} (calibrated {cal:.3f})  "
                    + "  ".join(f"{k} {ci(row, f'{k}@{point}')}"
                                for k in ("sensitivity", "specificity", "ppv", "npv")))
            if point == "rule_out":
                line += f"  PET avoided {ci(row, 'pet_avoided@rule_out')}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
