"""Quality check of the group level on a simulated cohort, with every ablation.

Acceptance (issue 5): on ≥ 60 simulated subjects the PET-seeing teacher
reaches validation AUC ≥ 0.9; report the student's test AUC with its 95 %
subject-bootstrap CI, and the same for each ablation. Each variant is one
``bids-amyloid ... group --stage all`` run (same cohort.tsv, so same splits):

    baseline, no-pretrain, no-triplet, no-feature-kd, no-logit-kd, cl-gap 0, cl-gap 10

(no-feature-kd / no-logit-kd change phase 3 only: they distil the baseline's
teacher via ``--teacher``, which is the same teacher they would retrain.)

Three ways to get the participant-level outputs it needs::

    # 1. a simulated BIDS cohort already preprocessed with the participant level
    python benchmarks/train_quality.py --bids SIM --out OUT
    # 2. simulate and preprocess here first (hours on 2 cores: ~1 min per MRI session)
    python benchmarks/train_quality.py --bids SIM --out OUT --simulate 60 --nprocs 8
    # 3. synthetic slice caches (tests/train_fixtures.py; no preprocessing) — checks
    #    the training side only
    python benchmarks/train_quality.py --out OUT --synthetic 60

``--config`` sets the schedule (default: the paper's; a short one is
``--epochs 8 4 12``). Results go to ``OUT/group/quality.tsv`` and stdout.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "no-pretrain": ["--ablate", "no-pretrain"],
    "no-triplet": ["--ablate", "no-triplet"],
    "no-feature-kd": ["--ablate", "no-feature-kd"],
    "no-logit-kd": ["--ablate", "no-logit-kd"],
    "cl-gap-0": ["--cl-gap", "0"],
    "cl-gap-10": ["--cl-gap", "10"],
}
REUSE_TEACHER = ("no-feature-kd", "no-logit-kd")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="participant-level output folder")
    p.add_argument("--bids", type=Path, help="the (simulated) BIDS dataset")
    p.add_argument("--simulate", type=int, metavar="N", help="simulate N subjects into --bids first")
    p.add_argument("--synthetic", type=int, metavar="N", help="synthetic caches for N subjects")
    p.add_argument("--nuisance", type=float, default=0.06,
                   help="--synthetic: label-independent MRI variation (sd; the signal is 0.08)")
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--config", type=Path, help="TOML for the group runs")
    p.add_argument("--epochs", type=int, nargs=3, metavar=("P1", "P2", "P3"),
                   help="max epochs of the three phases (written into a config)")
    p.add_argument("--backbone", default="vit_tiny_patch16_224")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--device", default="auto")
    return p.parse_args()


def call(argv: list[str]) -> int:
    from bids_amyloid import cli

    print("$ bids-amyloid " + " ".join(argv), flush=True)
    return cli.main(argv)


def prepare_data(args: argparse.Namespace) -> Path:
    """Return the BIDS folder; create participant-level outputs if asked to."""
    if args.synthetic:
        from train_fixtures import synthetic_run

        bids, _ = synthetic_run(args.out, n_subjects=args.synthetic, size=args.image_size,
                                n_kept=36, run_name="baseline", nuisance=args.nuisance)
        return bids
    if args.bids is None:
        raise SystemExit("--bids is needed unless --synthetic is given")
    if args.simulate:
        subprocess.run([sys.executable, "-m", "bids_amyloid.simulate", str(args.bids),
                        "--subjects", str(args.simulate), "--nprocs", str(args.nprocs)],
                       check=True)
        code = call([str(args.bids), str(args.out), "participant", "--nprocs", str(args.nprocs),
                     "--skip-bids-validation"])
        if code not in (0, 1):
            raise SystemExit(f"participant level failed with exit code {code}")
    return args.bids


def write_config(args: argparse.Namespace) -> Path | None:
    if args.epochs is None:
        return args.config
    text = args.config.read_text() if args.config else ""
    p1, p2, p3 = args.epochs
    text += (f"\n[pretrain]\nmax_epochs = {p1}\n[contrastive]\nmax_epochs = {p2}\n"
             f"[distill]\nmax_epochs = {p3}\n")
    path = args.out / "group" / "quality.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def summarise(run: Path, variant: str, seconds: float) -> dict[str, object]:
    metrics = pd.read_csv(run / "metrics.tsv", sep="\t")

    def pick(model: str, split: str) -> pd.Series:
        rows = metrics[(metrics["model"] == model) & (metrics["split"] == split)]
        return rows.iloc[0] if len(rows) else pd.Series(dtype=float)

    student = next(m for m in metrics["model"] if m.startswith("student_") and "cosine" not in m)
    teacher_val, st_test = pick("teacher", "val"), pick(student, "test")
    cos_test = pick(f"{student}_best-cosine", "test")
    return {"variant": variant, "teacher_val_auc": teacher_val.get("auc"),
            "student_test_auc": st_test.get("auc"), "ci_low": st_test.get("auc_ci_low"),
            "ci_high": st_test.get("auc_ci_high"), "student_test_f1@tau": st_test.get("f1@tau"),
            "best_cosine_test_auc": cos_test.get("auc"), "minutes": seconds / 60}


def main() -> None:
    args = parse()
    args.out.mkdir(parents=True, exist_ok=True)
    bids = prepare_data(args)
    config = write_config(args)
    common = ["--backbone", args.backbone, "--device", args.device, "--deterministic", "-q"]
    if config is not None:
        common += ["--config", str(config)]
    rows = []
    for variant in args.variants:
        run = args.out / "group" / variant
        baseline_cohort = args.out / "group" / "baseline" / "cohort.tsv"
        if variant != "baseline" and baseline_cohort.is_file():
            run.mkdir(parents=True, exist_ok=True)
            shutil.copy(baseline_cohort, run / "cohort.tsv")
        extra = list(VARIANTS[variant])
        teacher = args.out / "group" / "baseline" / "teacher.pt"
        if variant in REUSE_TEACHER and teacher.is_file():
            extra += ["--teacher", str(teacher)]
        start = time.perf_counter()
        code = call([str(bids), str(args.out), "group", "--stage", "all", "--run-name", variant,
                     *common, *extra])
        if code != 0:
            print(f"{variant}: group run failed with exit code {code}")
            continue
        row = summarise(run, variant, time.perf_counter() - start)
        if variant in REUSE_TEACHER:
            base = next((r for r in rows if r["variant"] == "baseline"), None)
            row["teacher_val_auc"] = base["teacher_val_auc"] if base else float("nan")
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False, float_format="%.3f"), flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "group" / "quality.tsv", sep="\t", index=False, float_format="%.4f")
    print("\n" + table.to_string(index=False, float_format="%.3f"))
    if len(table):
        ok = bool((table.loc[table["variant"] == "baseline", "teacher_val_auc"] >= 0.9).all())
        print(f"\nteacher validation AUC ≥ 0.9 (baseline): {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
