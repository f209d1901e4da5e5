"""End-to-end demo on synthetic data, CPU only: ``python -m bids_amyloid.demo OUTDIR``.

``make demo`` runs it (about 10 CPU-minutes, most in two parallel processes; it prints
each step's wall and CPU time and the load average). Every step is the app's own
command line, as a user would type it:

1. simulate a synthetic cohort (``bids-amyloid-simulate --size tiny``: one
   T1w-only MRI session per subject at 3 mm, amyloid PET at 5 mm, Centiloid
   labels, and the simulator's truth);
2. participant level on the cohort's subjects (a CPU-sized protocol: deepbet
   brain extraction, 2 mm template grid, short N4 and registration schedules, VOIs
   placed through the rigid MRI transform; :data:`CONFIG`);
3. group level ``--stage all``: teacher (PET + MRI) and distilled MRI-only
   student, with a tiny randomly initialised ViT (``test_vit``, 32 px, 6 slices)
   and a schedule of 8 + 2 + 30 epochs (phase 3: ~390 optimiser steps);
4. group level ``--stage distill --ablate no-teacher`` in the same run: the
   same student trained without a teacher, the baseline distillation must beat;
5. predict, MRI only, on a handful of subjects that neither level has seen
   (their MRI is preprocessed by predict itself; their PET is never read, their
   Centiloid only scores the predictions), with saliency maps;
6. print, on the group level's test pairs (subjects held out of training and
   model selection): the oracle AUC (:mod:`bids_amyloid.sim.oracle`, the best
   any MRI-only model can do on these pairs, from the simulator's truth), the
   teacher, the student and the no-teacher student with subject-bootstrap
   95 % CIs, the spread of the student's probabilities, then the held-out
   predictions, the step times and one sentence on what the numbers show.

The predict subjects come from the same simulation run but are excluded from
steps 2–4 with ``--participant-label``: separately simulated cohorts reuse the
labels ``sub-001``…, and predict flags training subjects by label.

The data are synthetic and the backbone is tiny and not pretrained: the
figures show whether the pipeline learns the amyloid signal the simulator puts
into the MRI, not how well MRI predicts amyloid in people (see the paper for
that). A rerun into the same OUTDIR reuses finished steps.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bids_amyloid.derivatives import GroupRun, PredictRun
from bids_amyloid.io import write_text

SIZE = "tiny"
RUN_NAME = "demo"
BACKBONE = "test_vit"
STUDENT = "student_T1w"
NO_TEACHER = "student_T1w_no-teacher"


SMALL_COHORT_LRS = "lr_heads = 1e-3\nlr_projection = 5e-4\nlr_lora = 5e-4\n"  # [distill]


def small_cohort_group_toml(*, bootstrap: int = 1000, pretrain_epochs: int = 4,
                            distill_epochs: int = 6, train_extra: str = "",
                            distill_extra: str = "", image_size: int = 32, n_slices: int = 6,
                            contrastive_epochs: int = 2, model_extra: str = "",
                            distill_batch: int = 6) -> str:
    """The group-level TOML of a small synthetic cohort on CPU.

    A tiny randomly initialised ViT (:data:`BACKBONE`) on 32 px slices, 6 slices
    per sample (``image_size``, ``n_slices``), batches of 6 (phase 3: ``distill_batch``),
    no augmentation, fp32, 2 contrastive epochs, and the small-cohort phase-3 rule of
    :func:`bids_amyloid.train.phases.head_budget`: one optimiser step per batch
    (``accumulation = 1``) and a classifier layer re-initialised at zero
    (``reinit_gain = 0``). ``model_extra``, ``train_extra`` and
    ``distill_extra`` are TOML lines appended to ``[model]``, ``[train]`` and ``[distill]``.
    The demo, ``tests/test_learning.py``, ``benchmarks/calibration.py`` and
    ``benchmarks/train_quality.py`` use it.

    >>> import tomllib
    >>> cfg = tomllib.loads(small_cohort_group_toml(distill_extra="lr_heads = 1e-3\\n"))
    >>> cfg["distill"]["max_epochs"], cfg["distill"]["lr_heads"], cfg["train"]["bootstrap"]
    (6, 0.001, 1000)
    """
    return f"""[model]
backbone = "{BACKBONE}"
image_size = {image_size}
{model_extra}
[train]
n_train_slices = {n_slices}
bootstrap = {bootstrap}
amp = false
{train_extra}
[augment]
enabled = false

[pretrain]
max_epochs = {pretrain_epochs}
batch_size = 6
lr = 5e-4

[contrastive]
max_epochs = {contrastive_epochs}
batch_size = 6
accumulation = 1
lr_backbone = 5e-5
lr_classifier = 2e-4

[distill]
max_epochs = {distill_epochs}
batch_size = {distill_batch}
accumulation = 1
reinit_gain = 0.0
{distill_extra}"""


CONFIG = """\
# The CPU demo's protocol (make demo): every level reads this file.
# Participant level: deepbet instead of HD-BET, 2 mm template grid, shorter N4 and
# registration schedules, Centiloid VOIs placed through the rigid MRI transform.
[preproc]
skull_strip = "deepbet"
template_resolution = 2
n_slices = 16
slice_size = 64
n4_shrink_factor = 9
n4_iterations = [20, 10]
registration_iterations = [60, 20]
pet_registration_shrink = [4, 2]
pet_registration_smoothing = [2.0, 1.0]
pet_registration_iterations = [60, 20]
pet_realign = false
voi_registration = "rigid"

# Group level: a tiny randomly initialised ViT on 32 px slices and a short schedule
# (the paper's is BiomedCLIP ViT-B/16, 224 px, 30 + 15 + 100 epochs). Phase 3 is
# sized in optimiser steps: one per batch, 30 epochs of ~13 batches (~390 steps) at
# a head learning rate of 1e-3, and its re-initialised classifier layer starts at
# zero, so the label, not a random draw, sets its direction.
""" + small_cohort_group_toml(
    pretrain_epochs=8, distill_epochs=30, train_extra='device = "cpu"\n',
    distill_extra=SMALL_COHORT_LRS)
BANNER = ("SYNTHETIC DATA, tiny randomly initialised backbone ({backbone}, 32 px), short "
          "schedule, CPU-sized preprocessing: the demo shows whether the pipeline learns the "
          "amyloid signal the simulator puts into the MRI, not the method's accuracy on "
          "real scans.")

LOG = logging.getLogger(__name__)


class Clock:
    """Wall and CPU seconds (this process and its finished children) of each step."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []
        self._start = (0.0, 0.0)

    @staticmethod
    def _cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def start(self, title: str) -> None:
        print(f"\n=== {title}", flush=True)
        self._start = (time.perf_counter(), self._cpu())

    def stop(self, name: str) -> None:
        wall, cpu = time.perf_counter() - self._start[0], self._cpu() - self._start[1]
        self.rows.append((name, wall, cpu))
        print(f"--- {name}: {wall:.0f} s wall, {cpu:.0f} s CPU; load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)

    def summary(self) -> str:
        wall, cpu = sum(r[1] for r in self.rows), sum(r[2] for r in self.rows)
        steps = ", ".join(f"{n} {w:.0f} s ({c:.0f} s CPU)" for n, w, c in self.rows)
        return (f"timings: {steps}; total {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU "
                f"(load average now {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores)")


def _app(*args: str) -> int:
    from bids_amyloid import cli

    print("$ bids-amyloid " + " ".join(args), flush=True)
    return cli.main(list(args))


def _simulate(*args: str) -> int:
    from bids_amyloid import simulate

    print("$ bids-amyloid-simulate " + " ".join(args), flush=True)
    return simulate.main(list(args))


def _subjects(bids: Path) -> list[str]:
    return sorted(p.name.removeprefix("sub-") for p in bids.glob("sub-*") if p.is_dir())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bids_amyloid.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", type=Path, help="everything goes here (created)")
    p.add_argument("--subjects", type=int, default=100,
                   help="cohort of the participant and group levels (5-fold split: a fifth "
                        "of them are the test subjects)")
    p.add_argument("--held-out", type=int, default=4, help="subjects only predicted")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--nprocs", type=int, default=2, help="sessions preprocessed in parallel")
    return p


def run_demo(outdir: Path, n_train: int, n_held_out: int, seed: int, nprocs: int) -> int:
    """Run the steps; return 0 when every step succeeded."""
    outdir = outdir.resolve()
    bids, out = outdir / "bids", outdir / "derivatives"
    config = str(write_text(outdir / "demo_config.toml", CONFIG))
    clock = Clock()
    print(BANNER.format(backbone=BACKBONE))

    clock.start(f"1/5 simulate {n_train + n_held_out} subjects ({SIZE} size) → {bids}")
    if not (bids / "dataset_description.json").is_file():
        code = _simulate(str(bids), "--subjects", str(n_train + n_held_out), "--size", SIZE,
                         "--seed", str(seed), "--nprocs", str(nprocs))
        if code != 0:
            return code
    clock.stop("simulate")
    subjects = _subjects(bids)
    train, held_out = subjects[:n_train], subjects[n_train:]
    print(f"cohort: {len(train)} subjects; held out for predict: {', '.join(held_out)}")

    clock.start("2/5 participant level (N4, deepbet, rigid to MNI, PET SUVR, slice caches)")
    code = _app(str(bids), str(out), "participant", "--participant-label", *train,
                "--config", config, "--nprocs", str(nprocs), "--skip-bids-validation", "-q")
    clock.stop("participant")
    if code not in (0, 1):
        return code
    if code == 1:
        print("participant level exit 1: the units listed above could not be processed; "
              "the group level uses the others")

    group = GroupRun.of(out, RUN_NAME)
    common = ("--run-name", RUN_NAME, "--participant-label", *train, "--config", config,
              "--skip-bids-validation", "--deterministic", "-q")
    clock.start(f"3/5 group level --stage all (teacher + distilled student, {BACKBONE})")
    if not group.student(("T1w",)).is_file():
        code = _app(str(bids), str(out), "group", "--stage", "all", *common)
        if code != 0:
            return code
    clock.stop("group")

    clock.start("4/5 group level --ablate no-teacher (the student without a teacher)")
    if not group.student(("T1w",), "no-teacher").is_file():
        code = _app(str(bids), str(out), "group", "--stage", "distill", "--ablate",
                    "no-teacher", *common)
        if code != 0:
            return code
    clock.stop("no-teacher")

    clock.start("5/5 predict on held-out subjects, MRI only, with saliency")
    code = _app(str(bids), str(out), "predict", "--model", str(group.student(("T1w",))),
                "--participant-label", *held_out, "--config", config, "--nprocs", str(nprocs),
                "--saliency", "--skip-bids-validation", "-q")
    clock.stop("predict")
    if code not in (0, 1):
        return code
    report(bids, out, clock)
    return code


def _auc(metrics: pd.DataFrame, model: str) -> tuple[float, float, float, int]:
    """AUC, CI and n of ``model`` on the test split of the group level's ``metrics.tsv``."""
    row = metrics[(metrics["model"] == model) & (metrics["split"] == "test")]
    if len(row) != 1:
        raise RuntimeError(f"metrics.tsv: no single test row for {model}")
    r = row.iloc[0]
    return float(r["auc"]), float(r["auc_ci_low"]), float(r["auc_ci_high"]), int(r["n"])


def split_table(bids: Path, group: GroupRun) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test split's AUC table (oracle, teacher, student, no-teacher) and the student's
    test predictions."""
    from bids_amyloid.sim.oracle import oracle_auc

    metrics = pd.read_csv(group.metrics, sep="\t")
    preds = pd.read_csv(group.predictions, sep="\t")
    test = preds[(preds["model"] == STUDENT) & (preds["split"] == "test")]
    sessions = list(zip(test["participant_id"], test["mri_session"], strict=True))
    rows = [{"model": "oracle (MRI-only, simulator truth)", "n": len(test),
             "auc": oracle_auc(bids, sessions, test["label"].to_numpy())}]
    for name, model in (("teacher (PET + MRI)", "teacher"), ("student (MRI only)", STUDENT),
                        ("student without teacher", NO_TEACHER)):
        value, low, high, n = _auc(metrics, model)
        spread = preds[(preds["model"] == model) & (preds["split"] == "test")]["probability"]
        rows.append({"model": name, "n": n, "auc": value, "ci_low": low, "ci_high": high,
                     "probability_sd": float(spread.std())})
    return pd.DataFrame(rows), test


def verdict(table: pd.DataFrame) -> str:
    """One sentence on what the test-split numbers show and what they do not."""
    get = table.set_index("model")
    oracle = get.loc["oracle (MRI-only, simulator truth)", "auc"]
    s, nt = get.loc["student (MRI only)"], get.loc["student without teacher"]
    if s["ci_low"] > 0.5:
        learned = "ranks amyloid status better than chance (CI above 0.5)"
    else:
        learned = "cannot be told from chance here (its CI holds 0.5)"
    if s["ci_low"] > nt["ci_high"]:
        versus = "above the student trained without a teacher"
    elif s["ci_high"] < nt["ci_low"]:
        versus = "below the student trained without a teacher"
    else:
        versus = "not distinguishable from the student trained without a teacher " \
                 f"({nt['auc']:.2f} [{nt['ci_low']:.2f}–{nt['ci_high']:.2f}])"
    return (f"On {int(s['n'])} test pairs of held-out synthetic subjects the MRI-only student "
            f"(AUC {s['auc']:.2f} [{s['ci_low']:.2f}–{s['ci_high']:.2f}]) {learned}, against "
            f"{oracle:.2f} for the best any MRI-only model could do on these pairs, and is "
            f"{versus}; this shows the whole pipeline learning a signal planted in simulated "
            "MRI, not how well MRI predicts amyloid in people (synthetic data, a tiny randomly "
            "initialised ViT, a few hundred optimiser steps).")


def _fmt(frame: pd.DataFrame) -> str:
    return frame.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="")


def report(bids: Path, out: Path, clock: Clock) -> None:
    """Print the test-split table, the held-out predictions, where the reports are, timings."""
    group = GroupRun.of(out, RUN_NAME)
    predicted = PredictRun.of(out, STUDENT)
    table, test = split_table(bids, group)
    print(f"\n=== group level, test split ({len(test)} pairs of "
          f"{test['participant_id'].nunique()} subjects held out of training and selection; "
          f"{int(test['label'].sum())} positive); AUC with 95 % subject-bootstrap CI")
    print(_fmt(table))
    held = pd.read_csv(predicted.predictions, sep="\t")
    print("\n=== predict on held-out subjects (never seen by either level)")
    print(_fmt(held[[c for c in ("participant_id", "session_id", "probability",
                                  "positive_at_tau", "cohort_split") if c in held.columns]]))
    if predicted.metrics.is_file():
        scored = pd.read_csv(predicted.metrics, sep="\t")
        print("\nagainst their Centiloid labels (a handful of subjects: no AUC to read):")
        print(_fmt(scored[[c for c in ("set", "n", "n_positive", "auc", "f1@tau")
                           if c in scored.columns]]))
    distinct = np.unique(np.round(np.r_[test["probability"], held["probability"]], 4)).size
    print(f"\ndistinct student probabilities (test + held out, 4 decimals): {distinct} of "
          f"{len(test) + len(held)}")
    print("\n=== reports")
    print(f"participant QC pages : {len(sorted(out.glob('sub-*.html')))} × {out}/sub-*.html")
    print(f"group report         : {group.report}")
    print(f"predictions          : {predicted.predictions}")
    print(f"saliency pages       : {predicted.page('*')}")
    print("\n" + clock.summary())
    print("\n" + verdict(table))
    print(BANNER.format(backbone=BACKBONE))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.subjects < 10 or args.held_out < 1:
        print("the demo needs at least 10 cohort subjects (5-fold split) and 1 held out",
              file=sys.stderr)
        return 64
    return run_demo(args.outdir, args.subjects, args.held_out, args.seed, args.nprocs)


if __name__ == "__main__":
    sys.exit(main())
