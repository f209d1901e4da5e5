"""Predict throughput: sessions/s from slice caches, seconds per session from raw T1w.

Usage::

    python benchmarks/predict.py                         # both backbones, CPU (CUDA if present)
    python benchmarks/predict.py --sessions 8 --backbones vit_tiny_patch16_224
    python benchmarks/predict.py --end-to-end 2          # + raw T1w → prediction, 2 subjects

*From caches*: ``--sessions`` slice caches (40 slices of 224×224, as the
participant level writes them) are predicted by :func:`bids_amyloid.predict.infer`
(cache read, 25-slice selection, CLIP normalisation, batched student forward);
sessions/s over the whole set after one warm-up session. Backbones are timm's
``vit_tiny_patch16_224`` and ``vit_base_patch16_224`` (BiomedCLIP's trunk
architecture, so the same cost; random weights, none needed).

*End to end*: a small simulated cohort (``--end-to-end N`` subjects, no
participant level run) is predicted with the command line; predict then runs
the MRI preprocessing itself (N4, HD-BET, rigid to MNI, slices) with the model
file's parameters (HD-BET, the default). Seconds per predicted session, wall
clock, tiny backbone.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bids_amyloid import cli
from bids_amyloid import derivatives as drv
from bids_amyloid.bids import MRISession
from bids_amyloid.config import AppConfig, ModelConfig, TrainConfig
from bids_amyloid.models import build_student, save_model
from bids_amyloid.predict import SessionPlan, infer, load_predict_model

BACKBONES = ("vit_tiny_patch16_224", "vit_base_patch16_224")


def write_caches(root: Path, n: int, seed: int = 0) -> list[SessionPlan]:
    """``n`` sessions' T1w slice caches with 40 random slices each."""
    rng = np.random.default_rng(seed)
    plans = []
    for i in range(n):
        sub = f"{i:03d}"
        cache = drv.mri_slice_cache(root, sub, "01", "T1w")
        slices = rng.random((40, 224, 224), dtype=np.float32)
        drv.write_slice_cache(cache, slices, list(range(78, 118)), {})
        plan = SessionPlan(MRISession(sub, "01", None, "none", {}), ("T1w",))
        plan.caches = {"T1w": cache}
        plans.append(plan)
    return plans


def model_file(folder: Path, backbone: str, device: str) -> Path:
    cfg = AppConfig(model=ModelConfig(backbone=backbone), train=TrainConfig(device=device))
    path = folder / f"student_T1w_{backbone}.pt"
    save_model(path, build_student(cfg, ("T1w",)), cfg, {"thresholds": {"tau": 0.5}})
    return path


def from_caches(folder: Path, backbone: str, device: str, n_sessions: int,
                batch: int) -> dict[str, object]:
    plans = write_caches(folder / "caches", n_sessions)
    cfg = AppConfig(train=TrainConfig(device=device))
    model = load_predict_model(model_file(folder, backbone, device), cfg)
    infer(plans[:1], model, batch_size=1)  # warm-up (allocations, kernels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    infer(plans, model, batch_size=batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"benchmark": "from slice caches", "backbone": backbone, "device": device,
            "sessions": n_sessions, "seconds": seconds, "sessions_per_s": n_sessions / seconds,
            "s_per_session": seconds / n_sessions}


def end_to_end(folder: Path, n_subjects: int, device: str, nprocs: int) -> dict[str, object]:
    from bids_amyloid.simulate import simulate_cohort

    bids = simulate_cohort(folder / "bids", n_subjects, seed=3, size="small")
    model = model_file(folder, BACKBONES[0], device)
    out = folder / "out"
    start = time.perf_counter()
    code = cli.main([str(bids), str(out), "predict", "--model", str(model), "--nprocs",
                     str(nprocs), "--skip-bids-validation", "--device", device, "-q"])
    seconds = time.perf_counter() - start
    table = out / "predict" / model.name.removesuffix(".pt") / "predictions.tsv"
    n = len(pd.read_csv(table, sep="\t")) if table.is_file() else 0
    return {"benchmark": f"raw T1w → prediction (exit {code}, nprocs {nprocs})",
            "backbone": BACKBONES[0], "device": device, "sessions": n, "seconds": seconds,
            "sessions_per_s": n / seconds if n else float("nan"),
            "s_per_session": seconds / n if n else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    p.add_argument("--sessions", type=int, default=16, help="sessions predicted from caches")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--end-to-end", type=int, default=0, metavar="N",
                   help="also simulate N subjects and time raw T1w → prediction")
    p.add_argument("--nprocs", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    threads = torch.get_num_threads()  # the CLI run below may lower it for its workers
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        for backbone in args.backbones:
            rows.append(from_caches(Path(tmp) / backbone, backbone, args.device, args.sessions,
                                    args.batch))
            print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
        if args.end_to_end:
            rows.append(end_to_end(Path(tmp) / "e2e", args.end_to_end, args.device, args.nprocs))
    print("\n" + pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\ntorch {torch.__version__}, {threads} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""))


if __name__ == "__main__":
    main()
