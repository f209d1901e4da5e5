"""Throughput of the teacher and student networks (slices/s), forward and forward+backward.

Usage::

    python benchmarks/models.py                                   # tiny + ViT-B/16, CPU or CUDA
    python benchmarks/models.py --backbones vit_tiny_patch16_224 --iters 5
    python benchmarks/models.py --device cuda --batch 6 --slices 25

Shapes are the protocol's: batch 6 sessions × 25 slices, one MRI contrast
(T1w); the teacher also encodes the same number of PET slices, so it pushes
2 × 6 × 25 = 300 slices through the ViT per step, the student 150. The
BiomedCLIP-sized backbone is timm's ``vit_base_patch16_224`` randomly
initialised: same architecture and cost as BiomedCLIP's trunk, no weights
needed. ``train`` = forward + backward with LoRA (frozen ViT weights, LoRA on
blocks 6–11), heads trainable, like phases 1–3.

On CUDA the forward runs under bf16 autocast and the model-FLOPs utilisation
(MFU) is reported: FLOPs are counted by ``torch.utils.flop_counter`` on a
1-session step (so frozen weights rightly cost no weight-gradient FLOPs) and
scaled to the batch; the peak is the GPU's dense bf16 figure (``--peak-tflops``
to override).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable

import torch

from bids_amyloid.config import AppConfig, ModelConfig
from bids_amyloid.models import build_student, build_teacher

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
BACKBONES = ("vit_tiny_patch16_224", "vit_base_patch16_224")


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def make_batch(b: int, s: int, size: int, device: torch.device) -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(b, s, dtype=torch.bool, device=device)
    return {"mri": {"T1w": torch.randn(b, s, 3, size, size, generator=g).to(device)},
            "mri_mask": {"T1w": mask}, "pet": torch.randn(b, s, 3, size, size, generator=g).to(device),
            "pet_mask": mask}


def step_fn(model: torch.nn.Module, role: str, batch: dict, train: bool,
            device: torch.device) -> Callable[[], None]:
    """One forward (no grad) or forward + backward step of ``model`` on ``batch``."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    args = ((batch["mri"], batch["mri_mask"], batch["pet"], batch["pet_mask"]) if role == "teacher"
            else (batch["mri"], batch["mri_mask"]))

    def forward() -> torch.Tensor:
        with autocast:
            out = model(*args)
        return out.logit.float().sum() + out.embedding.float().pow(2).mean()

    def run() -> None:
        if train:
            model.train()
            forward().backward()
            model.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad():
                forward()

    return run


def seconds_per_step(run: Callable[[], None], iters: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def flops_per_slice(model: torch.nn.Module, role: str, train: bool, size: int,
                    device: torch.device) -> float:
    """FLOPs of one step on 1 session × 2 slices, per slice through the ViT."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = make_batch(1, 2, size, device)
    counter = FlopCounterMode(display=False)
    with counter:
        step_fn(model, role, batch, train, device)()
    return counter.get_total_flops() / (4 if role == "teacher" else 2)


def bench_one(backbone: str, role: str, args: argparse.Namespace, device: torch.device,
              peak: float | None) -> list[str]:
    cfg = AppConfig(model=ModelConfig(backbone=backbone))
    torch.manual_seed(0)
    model = (build_teacher if role == "teacher" else build_student)(cfg, ("T1w",)).to(device)
    batch = make_batch(args.batch, args.slices, cfg.model.image_size, device)
    slices = args.batch * args.slices * (2 if role == "teacher" else 1)
    iters = args.iters or (1 if device.type == "cpu" and "base" in backbone else 3)
    rows = []
    for train in (False, True):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # warm-up on CPU with one small step (a full ViT-B step takes minutes there)
        warm = batch if device.type == "cuda" else make_batch(1, 2, cfg.model.image_size, device)
        for _ in range(args.warmup):
            step_fn(model, role, warm, train, device)()
        sec = seconds_per_step(step_fn(model, role, batch, train, device), iters, device)
        flops = flops_per_slice(model, role, train, cfg.model.image_size, device) * slices
        mfu = f"{100 * flops / sec / (peak * 1e12):5.1f}%" if peak else "  n/a"
        mem = (f"{torch.cuda.max_memory_allocated(device) / 2**30:6.1f}" if device.type == "cuda"
               else "   n/a")
        rows.append(f"{backbone:22s} {role:8s} {'fwd+bwd' if train else 'forward':8s} "
                    f"{slices:6d} {sec:9.3f} {slices / sec:9.1f} {args.batch / sec:9.2f} "
                    f"{flops / sec / 1e9:9.1f} {mfu:>6s} {mem}")
        print(rows[-1], flush=True)
    del model
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    p.add_argument("--roles", nargs="+", default=["teacher", "student"], choices=["teacher", "student"])
    p.add_argument("--batch", type=int, default=6, help="sessions per step")
    p.add_argument("--slices", type=int, default=25, help="slices per session and modality")
    p.add_argument("--iters", type=int, default=0, help="timed steps (default 3; 1 for ViT-B on CPU)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak-tflops", type=float, help="accelerator peak for MFU (default: bf16 table)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    device = torch.device(args.device)
    peak = peak_tflops(device, args.peak_tflops)
    import timm.layers

    name = (torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"CPU, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"# device: {name}; torch {torch.__version__}; timm fused attention: "
          f"{timm.layers.use_fused_attn()}; batch {args.batch} x {args.slices} slices; "
          f"autocast bf16: {device.type == 'cuda'}; peak: {peak or 'n/a'} TFLOP/s")
    print(f"{'backbone':22s} {'model':8s} {'mode':8s} {'slices':>6s} {'s/step':>9s} {'slices/s':>9s} "
          f"{'sess/s':>9s} {'GFLOP/s':>9s} {'MFU':>6s} {'GiB':>6s}")
    for backbone in args.backbones:
        for role in args.roles:
            bench_one(backbone, role, args, device, peak)


if __name__ == "__main__":
    main()
