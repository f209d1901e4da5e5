"""Group-level training and inference on one GPU, measured with the project's own code.

One call makes synthetic slice caches of the participant level's format
(float16 ``(S, 224, 224)`` ``.npy`` + JSON sidecar, written by
:func:`bids_amyloid.derivatives.write_slice_cache`) on the machine's own disk,
then runs the real phase code — :class:`bids_amyloid.train.phases.PretrainPhase`,
``ContrastivePhase`` and ``DistillPhase`` through
:class:`bids_amyloid.train.loop.Trainer` (memory-mapped caches, DataLoader
workers, augmentation on the device, bf16 autocast, accumulation, clipping) —
and :func:`bids_amyloid.predict.inference.infer` on a saved student model file. It
prints one table and writes it to ``OUT/gpu_benchmark.{tsv,txt}`` with the
environment in ``gpu_benchmark.json``.

Backbone: timm ``vit_base_patch16_224`` randomly initialised (BiomedCLIP's
trunk architecture, so its cost), 224 px, 25 slices per image set, batch 6
(phases 1–2) and 10 (phase 3), the paper's accumulation (1, 5, 3).

Table columns
-------------
samples/s, slices/s
    Timed optimiser steps after one warm-up step. Slices = images through the
    ViT per sample: phase 1 25 MRI + 25 PET; phase 2 adds 25 negative PET;
    phase 3 the student's 25 MRI (forward + backward) + the frozen teacher's
    25 MRI + 25 PET (forward only). Inference: sessions/s, 25 MRI slices each.
TFLOP/s, MFU
    FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode`` on one real
    micro-batch (forward + backward as executed: frozen ViT weights get no
    weight-gradient FLOPs; attention through SDPA is counted), times
    samples/s. MFU = that over ``--peak-tflops`` (default: 989.4, the H100/H200
    SXM dense-bf16 datasheet figure, on a GPU named H100/H200; else the
    measured large-matmul rate). ``matmul_tflops`` in the JSON is the rate
    measured here (bf16 8192³ on CUDA, fp32 2048³ on CPU).
peak GiB
    ``torch.cuda.max_memory_allocated`` over the timed steps (CPU: peak RSS).
stall
    Fraction of the timed wall time the training loop spent blocked in the
    DataLoader's ``next()`` (the loop syncs once per optimiser step, so the
    GPU's idle time due to data is at most this). Phase 2 reads its negative
    PET slices in the main process (``ContrastivePhase.prepare``): that time
    is not in the stall, it lowers both samples/s columns.
no-loader samples/s
    The same steps fed from batches already in memory: the ceiling without
    data loading.
val s/sample, epochs, projected min
    Validation time per sample, and the paper's full schedule (30 + 15 + 100
    epochs, no early stop) on ``--cohort`` pairs (870, OASIS-3 size) split
    60 % train / 20 % validation: per phase ``epochs × (0.6·N / samples_per_s
    + 0.2·N · val_s_per_sample) / 60`` minutes; the total row sums them.

Run on a lent device (the ``device`` tool's ``run``; the working tree
travels, ``PYTHONPATH=.`` makes the package importable, no wheels are needed:
the project's modules on this path import none of open_clip, nibabel,
nilearn, pybids, antspyx, HD-BET, deepbet, grad-cam, tomli_w)::

    run(timeout_s=360, command="export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD;
        set -o pipefail; nvidia-smi -L; timeout 330 python3 benchmarks/gpu/bench.py
        --out $OUT 2>&1 | tee $OUT/log.txt")

(about 2–4 minutes expected; ``benchmarks/gpu/README.md`` says why that
timeout). On CPU, in seconds (what ``tests/test_gpu_benchmark.py`` runs,
with those packages blocked)::

    python benchmarks/gpu/bench.py --smoke --out /tmp/gpu-smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bids_amyloid import derivatives as drv
from bids_amyloid.config import AppConfig, apply_overrides
from bids_amyloid.models import build_student, save_model
from bids_amyloid.train.batches import PhaseContext
from bids_amyloid.train.data import SliceCacheDataset, WeightedEpochSampler, make_loader
from bids_amyloid.train.loop import LoopSettings, Trainer, TrainingLog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # benchmarks/: the CPU benchmark
from memory import peak_memory_gib
from train import PAPER_EPOCHS, make_task

LOG = logging.getLogger("gpu_benchmark")
TRAIN_FRACTION, VAL_FRACTION = 0.6, 0.2  # StratifiedGroupKFold(5): 3 folds train, 1 validation
DATASHEET_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4}
CANDIDATES = [int(i) for i in np.unique(np.round(np.linspace(78, 118, 40)))]  # 40 sagittal positions
COLUMNS = ("row", "batch", "accumulation", "slices_per_sample", "samples_per_s", "slices_per_s",
           "noloader_samples_per_s", "tflops_per_s", "mfu", "peak_gib", "stall_fraction",
           "val_s_per_sample", "epochs", "projected_min")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU run (test_vit, 32 px, 5 slices)")
    p.add_argument("--out", type=Path, help="where the table goes (default $OUT, else a new "
                   "temporary folder)")
    p.add_argument("--work", type=Path, help="where the caches go (default: a temporary folder)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", help="default vit_base_patch16_224 (smoke: test_vit)")
    p.add_argument("--image-size", type=int, help="default 224 (smoke: 32)")
    p.add_argument("--slices", type=int, help="slices per image set (default 25; smoke 5)")
    p.add_argument("--sessions", type=int, help="synthetic MRI–PET pairs (default 120; smoke 10)")
    p.add_argument("--micro-batches", type=int, help="timed micro-batches per phase, rounded up "
                   "to whole optimiser steps (default 30; smoke 1)")
    p.add_argument("--workers", type=int, help="DataLoader workers (default 8 on CUDA, else 0)")
    p.add_argument("--infer-batch", type=int, default=8, help="sessions per predict batch")
    p.add_argument("--cohort", type=int, default=870, help="pairs in the projected cohort")
    p.add_argument("--peak-tflops", type=float, help="peak for MFU (see module docstring)")
    p.add_argument("--phases", nargs="+", default=list(PAPER_EPOCHS), choices=list(PAPER_EPOCHS))
    args = p.parse_args(argv)
    small = args.smoke
    defaults = {"backbone": "test_vit" if small else "vit_base_patch16_224",
                "image_size": 32 if small else 224, "slices": 5 if small else 25,
                "sessions": 10 if small else 120, "micro_batches": 2 if small else 30,
                "workers": 8 if args.device.startswith("cuda") and not small else 0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu-bench-out-"))
    return args


def config(args: argparse.Namespace) -> AppConfig:
    """The paper's configuration with the benchmark's backbone, size and slice count.

    ``--smoke`` also shrinks every phase to batch 2 with accumulation 2 (still
    exercising accumulation), so it runs in seconds on a shared CPU.
    """
    overrides: dict[str, dict[str, Any]] = {
        "model": {"backbone": args.backbone, "image_size": args.image_size},
        "train": {"n_train_slices": args.slices, "amp": True, "num_workers": args.workers,
                  "device": args.device}}
    if args.smoke:
        for phase in PAPER_EPOCHS:
            overrides[phase] = {"batch_size": 2, "accumulation": 2}
    return apply_overrides(AppConfig(), overrides)


# -- synthetic participant-level outputs --------------------------------------------------------
def write_caches(root: Path, n_sessions: int, size: int, seed: int = 0) -> pd.DataFrame:
    """One T1w and one AV45 slice cache per subject, as the participant level writes them.

    MRI caches keep 36 of the 40 candidate positions (some slices dropped for a
    low mean, as on real heads), PET caches all 40; values are random (never
    zeros: they can time faster). Returns the cohort table (60/20/20 split).
    """
    rng = np.random.default_rng(seed)
    kept = CANDIDATES[2:38]
    rows = []
    for i in range(n_sessions):
        sub = f"{i:04d}"
        mri = rng.random((len(kept), size, size), dtype=np.float32)
        drv.write_slice_cache(drv.mri_slice_cache(root, sub, "01", "T1w"), mri, kept,
                              {"Contrast": "T1w", "Synthetic": True})
        pet = 0.8 + 1.5 * rng.random((len(CANDIDATES), size, size), dtype=np.float32)
        drv.write_slice_cache(drv.pet_slice_cache(root, sub, "02", "AV45"), pet, CANDIDATES,
                              {"Tracer": "AV45", "Synthetic": True})
        positive = i % 2 == 0  # every split gets both classes
        centiloid = float(rng.uniform(40, 120) if positive else rng.uniform(-20, 15))
        fold = i % 5
        rows.append({"participant_id": f"sub-{sub}", "mri_session": "ses-01",
                     "pet_session": "ses-02", "tracer": "AV45", "centiloid": centiloid,
                     "label": int(centiloid > 20.6),
                     "split": "val" if fold == 0 else "test" if fold == 1 else "train"})
    return pd.DataFrame(rows)


# -- measuring --------------------------------------------------------------------------------
class TimedLoader:
    """A DataLoader stand-in that adds up the time ``next()`` blocks (the loop's data stall)."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.sampler, self.waited = loader, getattr(loader, "sampler", None), 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                self.waited += time.perf_counter() - start
            yield batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device) -> float:
    """Measured large-matmul rate: bf16 8192³ on CUDA, fp32 1024³ on CPU (median of 5)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for k in range(8):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        if k >= 3:
            times.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(times)) / 1e12


def step_flops(trainer: Trainer, batch: dict[str, Any]) -> float:
    """FLOPs of one forward + backward of the phase's network on ``batch`` (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with trainer._autocast():
            loss = trainer.task.net(batch)["loss"]
        loss.float().backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def slices_per_sample(phase: str, s: int) -> int:
    return {"pretrain": 2 * s, "contrastive": 3 * s, "distill": 3 * s}[phase]


def timed_epoch(trainer: Trainer, epoch: int, micro_batches: int) -> tuple[float, float]:
    """``(samples, seconds)`` of ``micro_batches`` micro-batches of one training epoch."""
    trainer.s.max_steps_per_epoch = micro_batches
    sync(trainer.s.device)
    start = time.perf_counter()
    stats = trainer.train_epoch(epoch)
    sync(trainer.s.device)
    return stats["train_samples"], time.perf_counter() - start


def bench_phase(phase: str, cfg: AppConfig, data: dict[str, SliceCacheDataset],
                args: argparse.Namespace, device: torch.device, folder: Path) -> dict[str, Any]:
    section = getattr(cfg, phase)
    batch = section.batch_size
    ctx = PhaseContext(cfg=cfg, device=device, train=data["train"], val=data["val"],
                       val_loader=make_loader(data["val"], batch, num_workers=args.workers,
                                              pin_memory=device.type == "cuda"),
                       teacher_contrasts=("T1w",), student_contrasts=("T1w",))
    task = make_task(phase, ctx, cfg)
    accum = task.accumulation
    steps = max(1, math.ceil(args.micro_batches / accum))
    micro = steps * accum
    sampler = WeightedEpochSampler(data["train"].labels, seed=0, num_samples=(accum + micro) * batch)
    loader = TimedLoader(make_loader(data["train"], batch, sampler, num_workers=args.workers,
                                     pin_memory=device.type == "cuda"))
    trainer = Trainer(task, loader, LoopSettings(device=device, amp=True), folder / phase,  # type: ignore[arg-type]
                      TrainingLog(None))
    timed_epoch(trainer, 0, accum)                            # warm-up: one optimiser step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loader.waited = 0.0
    samples, seconds = timed_epoch(trainer, 1, micro)
    stall = loader.waited / seconds
    memory = peak_memory_gib(device)
    # the same micro-batches from memory: the rate without data loading
    cached = [raw for raw, _ in zip(make_loader(data["train"], batch, sampler), range(micro),
                                    strict=False)]
    trainer.loader = TimedLoader(cached)  # type: ignore[assignment]
    samples_nl, seconds_nl = timed_epoch(trainer, 2, micro)
    start = time.perf_counter()
    task.validate(1)
    sync(device)
    val_s = (time.perf_counter() - start) / len(data["val"])
    flops = step_flops(trainer, task.prepare(cached[0], 3, trainer._rngs(3))) / batch
    sps = samples / seconds
    n_slices = slices_per_sample(phase, cfg.train.n_train_slices)
    return {"row": phase, "batch": batch, "accumulation": accum, "slices_per_sample": n_slices,
            "samples_per_s": sps, "slices_per_s": sps * n_slices,
            "noloader_samples_per_s": samples_nl / seconds_nl,
            "tflops_per_s": flops * sps / 1e12, "peak_gib": memory, "stall_fraction": stall,
            "val_s_per_sample": val_s, "epochs": PAPER_EPOCHS[phase],
            "flops_per_sample": flops, "timed_micro_batches": micro, "timed_seconds": seconds}


def bench_inference(cfg: AppConfig, cohort: pd.DataFrame, root: Path, args: argparse.Namespace,
                    device: torch.device) -> dict[str, Any]:
    """Sessions/s of :func:`bids_amyloid.predict.inference.infer` from T1w caches (median of 5
    passes over all sessions, after a warm-up batch; the model file is saved and loaded first)."""
    from bids_amyloid.bids import MRISession
    from bids_amyloid.predict.inference import infer
    from bids_amyloid.predict.model import load_predict_model
    from bids_amyloid.predict.plan import SessionPlan

    path = root / "student_T1w.pt"
    save_model(path, build_student(cfg, ("T1w",)), cfg, {"thresholds": {"tau": 0.5}})
    model = load_predict_model(path, cfg)
    plans = []
    for sub in cohort["participant_id"].str.removeprefix("sub-"):
        plan = SessionPlan(MRISession(sub, "01", None, "none", {}), ("T1w",))
        plan.caches = {"T1w": drv.mri_slice_cache(root, sub, "01", "T1w")}
        plans.append(plan)
    infer(plans[: args.infer_batch], model, batch_size=args.infer_batch)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        probs = infer(plans, model, batch_size=args.infer_batch)
        sync(device)
        times.append(time.perf_counter() - start)
    if len(probs) != len(plans) or not all(0.0 <= p <= 1.0 for p in probs.values()):
        raise RuntimeError(f"inference returned {len(probs)} probabilities for {len(plans)} sessions")
    sps = len(plans) / float(np.median(times))
    return {"row": "inference", "batch": args.infer_batch, "accumulation": 1,
            "slices_per_sample": cfg.train.n_train_slices, "samples_per_s": sps,
            "slices_per_s": sps * cfg.train.n_train_slices, "peak_gib": peak_memory_gib(device)}


def projected_minutes(row: dict[str, Any], cohort: int) -> float:
    """Minutes for ``row['epochs']`` epochs of ``cohort`` pairs at the measured rates."""
    per_epoch = (TRAIN_FRACTION * cohort / row["samples_per_s"]
                 + VAL_FRACTION * cohort * row["val_s_per_sample"])
    return row["epochs"] * per_epoch / 60.0


def finish_table(rows: list[dict[str, Any]], peak: float, cohort: int) -> pd.DataFrame:
    """Add MFU and projections, and the full-schedule total row."""
    for row in rows:
        if "tflops_per_s" in row:
            row["mfu"] = row["tflops_per_s"] / peak
            row["projected_min"] = projected_minutes(row, cohort)
    train = [r for r in rows if "projected_min" in r]
    if train:
        rows = [*rows, {"row": "full_schedule", "epochs": sum(r["epochs"] for r in train),
                        "projected_min": sum(r["projected_min"] for r in train)}]
    return pd.DataFrame(rows).reindex(columns=list(COLUMNS))


def environment(args: argparse.Namespace, device: torch.device, peak: float,
                measured: float) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "device": str(device),
                           "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                           "matmul_tflops": measured, "peak_tflops_for_mfu": peak,
                           "args": {k: str(v) for k, v in vars(args).items()}}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["sdpa_flash"] = torch.backends.cuda.flash_sdp_enabled()
    return env


def write_outputs(out: Path, table: pd.DataFrame, env: dict[str, Any], extra: list[dict]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "gpu_benchmark.tsv", sep="\t", index=False, float_format="%.6g",
                 na_rep="n/a")
    text = table.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")
    (out / "gpu_benchmark.txt").write_text(text + "\n")
    (out / "gpu_benchmark.json").write_text(json.dumps({**env, "rows": extra}, indent=1,
                                                       default=float))
    return text


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = config(args)
    measured = matmul_tflops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name),
                                    measured)
    print(f"{name}: torch {torch.__version__}, measured matmul {measured:.3g} TFLOP/s, MFU peak "
          f"{peak:.4g} TFLOP/s; {args.backbone} {args.image_size}px × {args.slices} slices, "
          f"{args.workers} workers", flush=True)
    env = environment(args, device, peak, measured)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-", dir=args.work) as tmp:
        root = Path(tmp) / "derivatives"
        start = time.perf_counter()
        cohort = write_caches(root, args.sessions, args.image_size)
        env["cache_write_s"] = time.perf_counter() - start
        data = {split: SliceCacheDataset(cohort[cohort["split"] == split], root, ("T1w",),
                                         args.slices, pet_scale=cfg.train.pet_scale)
                for split in ("train", "val")}
        for phase in args.phases:
            start = time.perf_counter()
            rows.append(bench_phase(phase, cfg, data, args, device, Path(tmp) / "ckpt"))
            print(f"{phase}: {rows[-1]['samples_per_s']:.2f} samples/s "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            write_outputs(args.out, finish_table(list(rows), peak, args.cohort), env, rows)
        rows.append(bench_inference(cfg, cohort, root, args, device))
    table = finish_table(rows, peak, args.cohort)
    print(write_outputs(args.out, table, env, rows))
    print(f"written to {args.out}/gpu_benchmark.tsv")
    return table


if __name__ == "__main__":
    main()
