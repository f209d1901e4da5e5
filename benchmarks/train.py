"""Training throughput per phase: samples/s, slices/s, peak memory (and MFU on CUDA).

Runs the real phase code (data from memory-mapped synthetic slice caches,
augmentation, the loop's AMP/accumulation/clipping) for a few optimiser
steps per phase, after warm-up steps, and projects the paper's schedule
(30 + 15 + 100 epochs) for an OASIS-3-sized cohort (≈ 870 pairs).

    python benchmarks/train.py                                   # CPU, tiny test ViT
    python benchmarks/train.py --backbone vit_tiny_patch16_224
    python benchmarks/train.py --device cuda --backbone vit_base_patch16_224 --workers 6

``vit_base_patch16_224`` (random init) has BiomedCLIP's trunk architecture,
so its speed is BiomedCLIP's. "Slices" are images through the ViT: a
phase-1 sample is 25 MRI + 25 PET slices; phase 2 adds 25 negative PET
slices; phase 3 runs the student on 25 MRI slices and the frozen teacher
(forward only) on 25 MRI + 25 PET.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from memory import peak_memory_gib  # benchmarks/memory.py (this script's folder)
from train_fixtures import synthetic_run

from bids_amyloid.config import AppConfig, apply_overrides
from bids_amyloid.models import build_student, build_teacher
from bids_amyloid.train.batches import PhaseContext
from bids_amyloid.train.data import (
    SliceCacheDataset,
    WeightedEpochSampler,
    make_loader,
)
from bids_amyloid.train.loop import LoopSettings, Trainer, TrainingLog
from bids_amyloid.train.phases import ContrastivePhase, DistillPhase, PretrainPhase

PAPER_EPOCHS = {"pretrain": 30, "contrastive": 15, "distill": 100}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, SXM


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="test_vit")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--slices", type=int, default=25)
    p.add_argument("--subjects", type=int, default=20)
    p.add_argument("--steps", type=int, default=3, help="timed optimiser steps per phase")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimiser steps per phase")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--cohort", type=int, default=870, help="pairs per epoch for the projection")
    p.add_argument("--phases", nargs="+", default=list(PAPER_EPOCHS))
    p.add_argument("--accumulation", type=int,
                   help="override every phase's accumulation (throughput per sample is the same; "
                        "fewer micro-batches per timed step)")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone trunk")
    return p.parse_args()


def slices_per_sample(phase: str, s: int) -> int:
    return {"pretrain": 2 * s, "contrastive": 3 * s, "distill": 3 * s}[phase]


def make_task(phase: str, ctx: PhaseContext, cfg: AppConfig, compile_trunk: bool = False) -> Any:
    """The task of ``phase`` on a fresh T1w teacher (and, for phase 3, a student from it)."""
    teacher = build_teacher(cfg, ("T1w",)).to(ctx.device)
    if compile_trunk:
        teacher.backbone.trunk = torch.compile(teacher.backbone.trunk)
    if phase == "pretrain":
        return PretrainPhase(ctx, teacher)
    if phase == "contrastive":
        return ContrastivePhase(ctx, teacher)
    student = build_student(cfg, ("T1w",)).to(ctx.device)
    student.init_from_teacher(teacher)
    if compile_trunk:
        student.backbone.trunk = torch.compile(student.backbone.trunk)
    return DistillPhase(ctx, student, teacher)


def step_flops(task: Any, trainer: Trainer, batch: dict[str, Any]) -> float:
    """FLOPs of one forward+backward of the phase's network (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, trainer._autocast():
        loss = task.net(batch)["loss"]
    with counter:
        loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench_phase(phase: str, cfg: AppConfig, data: dict[str, SliceCacheDataset], args: argparse.Namespace,
                device: torch.device, folder: Path) -> dict[str, float]:
    batch = {"pretrain": cfg.pretrain, "contrastive": cfg.contrastive, "distill": cfg.distill}[
        phase].batch_size
    ctx = PhaseContext(cfg=cfg, device=device, train=data["train"], val=data["val"],
                       val_loader=make_loader(data["val"], batch, num_workers=args.workers),
                       teacher_contrasts=("T1w",), student_contrasts=("T1w",))
    task = make_task(phase, ctx, cfg, args.compile)
    accum = task.accumulation
    total_batches = (args.warmup + args.steps) * accum
    sampler = WeightedEpochSampler(data["train"].labels, seed=0, num_samples=total_batches * batch)
    loader = make_loader(data["train"], batch, sampler, num_workers=args.workers,
                         pin_memory=device.type == "cuda")
    settings = LoopSettings(device=device, amp=not args.no_amp,
                            max_steps_per_epoch=args.warmup * accum)
    trainer = Trainer(task, loader, settings, folder / phase, TrainingLog(None))
    trainer.train_epoch(0)                                      # warm-up (compile, caches)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    trainer.s.max_steps_per_epoch = args.steps * accum
    start = time.perf_counter()
    stats = trainer.train_epoch(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    samples = stats["train_samples"]
    start = time.perf_counter()
    task.validate(1)
    val_seconds = (time.perf_counter() - start) / max(len(data["val"]), 1)
    out = {"samples_per_s": samples / seconds,
           "slices_per_s": samples * slices_per_sample(phase, cfg.train.n_train_slices) / seconds,
           "val_s_per_sample": val_seconds, "peak_gib": peak_memory_gib(device)}
    raw = next(iter(make_loader(data["train"], batch)))
    flops = step_flops(task, trainer, task.prepare(raw, 2, trainer._rngs(2)))
    out["tflops_per_s"] = flops / batch * out["samples_per_s"] / 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), float("nan"))
        out["mfu"] = out["tflops_per_s"] / peak
    return out


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    torch.manual_seed(0)
    overrides: dict[str, dict[str, Any]] = {
        "model": {"backbone": args.backbone, "image_size": args.image_size},
        "train": {"n_train_slices": args.slices, "amp": not args.no_amp,
                  "num_workers": args.workers},
    }
    if args.accumulation:
        for phase in PAPER_EPOCHS:
            overrides[phase] = {"accumulation": args.accumulation}
    cfg = apply_overrides(AppConfig(), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        _, cohort = synthetic_run(out, n_subjects=args.subjects, size=args.image_size, n_kept=36,
                                  second_pet=())
        data = {split: SliceCacheDataset(cohort[cohort["split"] == split], out, ("T1w",),
                                         args.slices, pet_scale=cfg.train.pet_scale)
                for split in ("train", "val")}
        print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
              f"{torch.get_num_threads()} threads), backbone {args.backbone}, {args.slices} slices "
              f"of {args.image_size}², AMP {'on' if cfg.train.amp and device.type == 'cuda' else 'off'}, "
              f"workers {args.workers}")
        print(f"{'phase':12s} {'batch×acc':>9s} {'samples/s':>10s} {'slices/s':>10s} "
              f"{'val s/smp':>10s} {'peak GiB':>9s} {'TFLOP/s':>8s} {'MFU':>6s}")
        projected = 0.0
        for phase in args.phases:
            res = bench_phase(phase, cfg, data, args, device, Path(tmp))
            section = getattr(cfg, phase)
            print(f"{phase:12s} {section.batch_size:>5d}×{section.accumulation:<3d} "
                  f"{res['samples_per_s']:10.2f} {res['slices_per_s']:10.1f} "
                  f"{res['val_s_per_sample']:10.4f} {res['peak_gib']:9.2f} "
                  f"{res.get('tflops_per_s', float('nan')):8.3f} {res.get('mfu', float('nan')):6.1%}")
            per_epoch = (0.7 * args.cohort / res["samples_per_s"]
                         + 0.15 * args.cohort * res["val_s_per_sample"])
            projected += PAPER_EPOCHS[phase] * per_epoch
        print(f"projected full schedule (30+15+100 epochs, {args.cohort} pairs, 70 % train / 15 % "
              f"val, no early stop): {projected / 60:.1f} min")


if __name__ == "__main__":
    main()
