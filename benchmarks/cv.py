"""``group --cv K`` end to end: per-fold and pooled out-of-fold results, and the ensemble.

By default on the synthetic cohort of ``tests/test_learning.py``
(``tests/train_fixtures.synthetic_run``: MRI slice caches whose dark centre is
larger in positives, blurred by a label-independent nuisance) with that test's
small CPU schedule (tiny ViT, 32 px; bootstrap raised to 1000 for the CIs).

Prints ``cv_metrics.tsv`` (per fold, mean, sd, pooled, pooled after each
fold's calibration) and the ensemble file's members.

    python benchmarks/cv.py --out /tmp/cv [--subjects 100] [--nuisance 0.03] [--folds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

COLUMNS = ("fold", "n", "auc", "auc_ci_low", "auc_ci_high", "threshold", "f1@tau",
           "sensitivity@tau", "specificity@tau", "brier_raw", "brier_calibrated", "ece_raw",
           "ece_calibrated", "sensitivity@rule_out", "npv@rule_out", "pet_avoided@rule_out")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="working folder (synthetic OUT)")
    p.add_argument("--subjects", type=int, default=100)
    p.add_argument("--nuisance", type=float, default=0.03)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--run-name", default="cv")
    return p.parse_args()


def main() -> None:
    args = parse()
    from train_fixtures import synthetic_run

    from bids_amyloid import cli
    from bids_amyloid.demo import small_cohort_group_toml

    out = args.out / "out"
    if not (out / "group" / args.run_name / "cohort.tsv").is_file():
        synthetic_run(out, n_subjects=args.subjects, n_kept=12, nuisance=args.nuisance,
                      second_pet=(), run_name=args.run_name)
    bids = args.out / "out_bids"
    config = args.out / "cv.toml"
    config.write_text(small_cohort_group_toml(bootstrap=1000))
    argv = [str(bids), str(out), "group", "--stage", "all", "--config", str(config),
            "--cv", str(args.folds), "--run-name", args.run_name, "--deterministic", "-q"]
    print("$ bids-amyloid " + " ".join(argv), flush=True)
    start = time.perf_counter()
    code = cli.main(argv)
    minutes = (time.perf_counter() - start) / 60
    if code != 0:
        raise SystemExit(f"group --cv failed with exit code {code}")
    run = out / "group" / args.run_name
    table = pd.read_csv(run / "cv_metrics.tsv", sep="\t", dtype={"fold": str})
    pd.set_option("display.width", 250)
    print(f"\n{args.subjects} synthetic subjects, nuisance {args.nuisance}, --cv {args.folds}, "
          f"{minutes:.1f} min\n")
    print(table[[c for c in COLUMNS if c in table]].round(3).to_string(index=False))

    import torch

    payload = torch.load(run / "student_T1w_ensemble.pt", weights_only=True)
    print(f"\nensemble τ {payload['meta']['thresholds']['tau']:.4f} "
          f"({payload['meta'].get('tau_source')}); members:")
    for member in payload["members"]:
        print(f"  {member['path']}  sha256 {member['sha256'][:12]}…  τ {member['tau']:.4f}  "
              f"train/val/test subjects {len(member['training_participants'])}/"
              f"{len(member['validation_participants'])}/{len(member['test_participants'])}")


if __name__ == "__main__":
    main()
