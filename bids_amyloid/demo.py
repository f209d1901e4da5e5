"""End-to-end demo on synthetic data, CPU only: ``python -m bids_amyloid.demo OUTDIR``.

``make demo`` runs it. Every step is the app's own command line, as a user
would type it:

1. simulate a small synthetic cohort (``bids-amyloid-simulate``, ``small``
   size: coarse voxels, MRI + amyloid PET + Centiloid);
2. participant level on the training subjects (MRI + PET preprocessing; deepbet
   brain extraction instead of the default HD-BET, for speed);
3. group level ``--stage all`` with a small, randomly initialised ViT
   (``--backbone vit_tiny_patch16_224``) and a short schedule;
4. predict, MRI only, on held-out subjects that neither level has seen (their
   MRI is preprocessed by predict itself; their PET images are never read —
   their Centiloid values are used only to score the predictions), with
   saliency maps;
5. print the metrics tables and where the reports are.

The held-out subjects come from the same simulation run but are excluded from
steps 2–3 with ``--participant-label``: separately simulated cohorts reuse the
labels ``sub-001``…, and predict flags training subjects by label.

The data are synthetic and the backbone is tiny and not pretrained: the
figures show that the pipeline runs end to end, not how well MRI predicts
amyloid (see the paper for that). A rerun into the same OUTDIR reuses
finished steps.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd

from bids_amyloid.derivatives import GroupRun, PredictRun
from bids_amyloid.io import write_text

BACKBONE = "vit_tiny_patch16_224"
RUN_NAME = "demo"
SCHEDULE = """\
# Short schedule for the CPU demo (the paper's is 30 + 15 + 100 epochs).
# deepbet instead of HD-BET for brain extraction: ~15x less CPU on this machine.
[preproc]
skull_strip = "deepbet"

[model]
backbone = "vit_tiny_patch16_224"

[train]
n_train_slices = 8
bootstrap = 200
amp = false
device = "cpu"

[augment]
enabled = false

[pretrain]
max_epochs = 4
batch_size = 6
lr = 5e-4

[contrastive]
max_epochs = 2
batch_size = 6
accumulation = 1
lr_backbone = 5e-5
lr_classifier = 2e-4

[distill]
max_epochs = 4
batch_size = 6
accumulation = 1
lr_lora = 5e-4
lr_projection = 5e-4
lr_heads = 5e-4
"""
BANNER = ("SYNTHETIC DATA, small randomly initialised backbone ({backbone}), short schedule, "
          "deepbet brain extraction: this demo shows the pipeline running end to end on CPU, "
          "not the method's accuracy.")

LOG = logging.getLogger(__name__)


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _done(start: float, timings: dict[str, float], name: str) -> None:
    timings[name] = time.perf_counter() - start
    print(f"--- {name}: {timings[name]:.0f} s", flush=True)


def _app(*args: str) -> int:
    from bids_amyloid import cli

    print("$ bids-amyloid " + " ".join(args), flush=True)
    return cli.main(list(args))


def _subjects(bids: Path) -> list[str]:
    return sorted(p.name.removeprefix("sub-") for p in bids.glob("sub-*") if p.is_dir())


def _table(path: Path, columns: list[str], query: str | None = None) -> str:
    frame = pd.read_csv(path, sep="\t")
    if query:
        frame = frame.query(query)
    shown = [c for c in columns if c in frame.columns]
    return frame[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bids_amyloid.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", type=Path, help="everything goes here (created)")
    p.add_argument("--subjects", type=int, default=12, help="training cohort size")
    p.add_argument("--held-out", type=int, default=3, help="subjects only predicted")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--nprocs", type=int, default=2, help="sessions preprocessed in parallel")
    return p


def run_demo(outdir: Path, n_train: int, n_held_out: int, seed: int, nprocs: int) -> int:
    """Run the four steps; return 0 when every step succeeded."""
    from bids_amyloid.simulate import simulate_cohort

    outdir = outdir.resolve()
    bids, out = outdir / "bids", outdir / "derivatives"
    schedule = write_text(outdir / "demo_schedule.toml", SCHEDULE)
    timings: dict[str, float] = {}
    print(BANNER.format(backbone=BACKBONE))

    start = _step(f"1/4 simulate {n_train + n_held_out} subjects (small size) → {bids}")
    if not (bids / "dataset_description.json").is_file():
        simulate_cohort(bids, n_train + n_held_out, seed, size="small", nprocs=nprocs)
    _done(start, timings, "simulate")
    subjects = _subjects(bids)
    train, held_out = subjects[:n_train], subjects[n_train:]
    print(f"training subjects: {len(train)}; held out for predict: {', '.join(held_out)}")

    start = _step("2/4 participant level (N4, deepbet, rigid to MNI, PET SUVR, slice caches)")
    code = _app(str(bids), str(out), "participant", "--participant-label", *train,
                "--config", str(schedule), "--nprocs", str(nprocs))
    _done(start, timings, "participant")
    if code not in (0, 1):
        return code
    if code == 1:
        print("participant level exit 1: the units listed above could not be processed; "
              "the group level uses the others")

    start = _step(f"3/4 group level --stage all ({BACKBONE}, short schedule)")
    student = GroupRun.of(out, RUN_NAME).student(("T1w",))
    if not student.is_file():
        code = _app(str(bids), str(out), "group", "--stage", "all", "--run-name", RUN_NAME,
                    "--participant-label", *train, "--config", str(schedule),
                    "--backbone", BACKBONE, "--skip-bids-validation")
        if code != 0:
            return code
    _done(start, timings, "group")

    start = _step("4/4 predict on held-out subjects, MRI only, with saliency")
    code = _app(str(bids), str(out), "predict", "--model", str(student),
                "--participant-label", *held_out, "--nprocs", str(nprocs), "--saliency",
                "--skip-bids-validation")
    _done(start, timings, "predict")
    if code not in (0, 1):
        return code
    report(out, timings)
    return code


def report(out: Path, timings: dict[str, float]) -> None:
    """Print the metrics tables and where everything is."""
    group = GroupRun.of(out, RUN_NAME)
    predicted = PredictRun.of(out, "student_T1w")
    metrics = ["n", "n_positive", "auc", "auc_ci_low", "auc_ci_high", "f1@0.5", "f1@tau",
               "threshold"]
    print("\n=== group level: metrics (validation and test splits of the training cohort)")
    print(_table(group.metrics, ["model", "split", *metrics]))
    print("\n=== predict on held-out subjects")
    print(_table(predicted.predictions, ["participant_id", "session_id", "probability",
                                         "positive_at_tau", "cohort_split"]))
    if predicted.metrics.is_file():
        print("\nagainst their Centiloid labels:")
        print(_table(predicted.metrics, ["set", *metrics]))
    pages = sorted(out.glob("sub-*.html"))
    print("\n=== reports")
    print(f"participant QC pages : {len(pages)} × {out}/sub-*.html")
    print(f"group report         : {group.report}")
    print(f"predictions          : {predicted.predictions}")
    print(f"saliency pages       : {predicted.page('*')}")
    total = sum(timings.values())
    print("\ntimings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; total {total / 60:.1f} min")
    print(BANNER.format(backbone=BACKBONE))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.subjects < 10 or args.held_out < 1:
        print("the demo needs at least 10 training subjects (5-fold split) and 1 held out",
              file=sys.stderr)
        return 64
    return run_demo(args.outdir, args.subjects, args.held_out, args.seed, args.nprocs)


if __name__ == "__main__":
    sys.exit(main())
