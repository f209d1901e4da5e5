"""Predict's reliability flag with real preprocessing: a mirrored T1w and a T2w fed as T1w.

1. Simulates ``--subjects`` subjects (``size="small"``), drops PET, and runs
   ``predict`` on their T1w (the real MRI chain: N4, deepbet, ANTs) with a
   model file that has no training-cohort reference. The QC numbers of these
   normal sessions form the reference, as the group level would build it from
   its training sessions (:func:`bids_amyloid.reliability.qc_reference`).
2. Builds a second dataset of two altered copies of the first subject's first
   session — its T1w mirrored superior–inferior (which no rigid registration
   can undo), and its T2w saved as T1w — and runs ``predict`` with the model
   file now holding that reference.

Printed: each session's QC numbers (brain-mask Dice with the template, the
correlation with the template after registration, ANTs' registration
correlation), the reference floors, and ``predictions.tsv``'s ``reliability``.
(The student is randomly initialised, so only the QC route is exercised
here; the embedding route is tested in ``tests/test_reliability.py``.)

    python benchmarks/reliability.py --out /tmp/reliability [--subjects 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEYS = ("template_mask_dice", "template_correlation", "registration_correlation")


def qc_numbers(out: Path) -> dict[str, dict[str, float]]:
    """The T1w QC numbers of every session under ``out``, by file name."""
    found = {}
    for path in sorted(out.glob("sub-*/figures/*desc-anat_qc.json")):
        numbers = json.loads(path.read_text())["Numbers"]["T1w"]
        found[path.name.removesuffix("_desc-anat_qc.json")] = {k: numbers[k] for k in KEYS}
    return found


def predict(bids: Path, out: Path, model: Path) -> pd.DataFrame:
    from bids_amyloid import cli

    if cli.main([str(bids), str(out), "predict", "--model", str(model), "-q"]) != 0:
        raise SystemExit(f"predict failed on {bids}")
    return pd.read_csv(next((out / "predict").glob("*/predictions.tsv")), sep="\t")


def altered_dataset(source: Path, target: Path) -> None:
    """Two copies of the first subject's first session: T1w mirrored, and T2w as T1w."""
    from tests.bids_builders import BidsBuilder

    anat = sorted(source.glob("sub-*/ses-*/anat"))[0]
    t1 = next(anat.glob("*_T1w.nii.gz"))
    t2 = next(anat.glob("*_T2w.nii.gz"))
    b = BidsBuilder(target)
    for sub, make in (("mirrored", "flip"), ("t2asT1", "t2")):
        path = b.anat(sub, "01", "T1w")
        img = nib.load(t1 if make == "flip" else t2)
        data = np.asarray(img.dataobj)
        if make == "flip":
            data = np.flip(data, axis=2).copy()    # voxel axis 2: superior–inferior here
        nib.save(nib.Nifti1Image(data, img.affine, img.header), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a new folder")
    parser.add_argument("--subjects", type=int, default=2)
    args = parser.parse_args(argv)

    from bids_amyloid.config import AppConfig, ModelConfig, PreprocConfig
    from bids_amyloid.models import build_student, save_model
    from bids_amyloid.reliability import qc_reference, read_session_qc
    from bids_amyloid.simulate import simulate_cohort
    from tests.test_predict import strip_pet_and_centiloid

    args.out.mkdir(parents=True, exist_ok=False)
    cfg = AppConfig(preproc=PreprocConfig(skull_strip="deepbet"),
                    model=ModelConfig(backbone="test_vit"))
    network = build_student(cfg, ("T1w",))
    plain = save_model(args.out / "plain" / "student_T1w.pt", network, cfg,
                       {"thresholds": {"tau": 0.5}})
    bids = simulate_cohort(args.out / "bids", args.subjects, seed=1, size="small")
    strip_pet_and_centiloid(bids)
    start = time.perf_counter()
    predict(bids, args.out / "out_reference", plain)
    reference = qc_numbers(args.out / "out_reference")
    records = [read_session_qc(args.out / "out_reference", sub.removeprefix("sub-"),
                               ses.removeprefix("ses-"))
               for sub, ses in (name.split("_")[:2] for name in reference)]
    floors = qc_reference(records, ("T1w",))
    model = save_model(args.out / "checked" / "student_T1w.pt", network, cfg,
                       {"thresholds": {"tau": 0.5},
                        "reliability": {"qc_low": floors, "qc_percentile": 1.0}})
    altered_dataset(bids, args.out / "bids_altered")
    table = predict(args.out / "bids_altered", args.out / "out_altered", model)
    print(f"preprocessing and predict: {time.perf_counter() - start:.0f} s")
    print("\nreference sessions (normal simulated T1w):")
    for name, numbers in reference.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in numbers.items()))
    print("reference floors (1st percentile): "
          + ", ".join(f"{k} {v:.3f}" for k, v in floors["T1w"].items()))
    print("\naltered sessions:")
    altered = qc_numbers(args.out / "out_altered")
    for row in table.itertuples(index=False):
        numbers = altered[f"{row.participant_id}_{row.session_id}"]
        print(f"  {row.participant_id}: " + ", ".join(f"{k} {v:.3f}" for k, v in numbers.items()))
        print(f"    reliability: {row.reliability}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
