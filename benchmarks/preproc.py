"""Benchmark of the participant-level image chain on the simulated cohort.

Prints, per T1w session and per PET scan: wall and CPU seconds and peak
resident memory of each step, the session total, and the accuracy against the
simulator's ground truth (rotation/translation error of the native → template
pose at the brain centroid, brain-mask Dice). For PET, a Centiloid error table
(r, bias, RMSE vs the simulated Centiloid; and how the error grows with head
size) for all-frame averaging vs the late window (with and without frame
realignment), and rigid vs affine placement of the Centiloid VOIs.

Each session runs in a fresh process (like one array job: imports, template
and network loading included in its figures), with ``--threads`` ITK/torch
threads. The steps are the public functions :func:`preprocess_mri_session`
chains, called one by one so each can be timed.

Usage::

    python benchmarks/preproc.py                       # simulate 2 subjects, size full
    python benchmarks/preproc.py --bids /path/sim --sessions 3 --skull-strip deepbet
    python benchmarks/preproc.py --subjects 6 --size small --sessions 2 --pets 12
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from memory import process_peak_gb  # benchmarks/memory.py (this script's folder)


class PeakRSS:
    """Polls this process's resident memory; ``peak()`` since the last ``reset()`` (GB)."""

    def __init__(self, interval: float = 0.02) -> None:
        self._peak = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            time.sleep(self._interval)

    def reset(self) -> None:
        self._peak = self._rss()

    def peak(self) -> float:
        self._peak = max(self._peak, self._rss())
        return self._peak / 1e9

    def close(self) -> None:
        self._stop.set()


@contextmanager
def step(name: str, table: dict[str, dict[str, float]], rss: PeakRSS) -> Iterator[None]:
    rss.reset()
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    table[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                   "peak_gb": rss.peak()}


def _truth(root: Path, image: Path) -> dict[str, Any]:
    from bids_amyloid.sim.writer import truth_paths

    return json.loads(truth_paths(root, image)[0].read_text())


def run_mri(task: tuple[Path, Path, dict[str, Any], int, Path]) -> dict[str, Any]:
    """One T1w session in this (fresh) process: steps, totals, accuracy."""
    t1, root, overrides, threads, work = task
    rss = PeakRSS()
    steps: dict[str, dict[str, float]] = {}
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    with step("import", steps, rss):
        import nibabel as nib

        from bids_amyloid.config import PreprocConfig
        from bids_amyloid.preproc.bias import n4_correct
        from bids_amyloid.preproc.intensity import normalise_intensity
        from bids_amyloid.preproc.mri import load_mri
        from bids_amyloid.preproc.register import pose_error, register_rigid
        from bids_amyloid.preproc.skullstrip import skull_strip
        from bids_amyloid.preproc.template import (
            load_template,
            load_template_mask,
            resample_array,
            set_threads,
        )
        from bids_amyloid.sim.writer import truth_paths

        cfg = dataclasses.replace(PreprocConfig(), **overrides)
        set_threads(threads)
    with step("load", steps, rss):
        image = load_mri(t1)
    with step("n4", steps, rss):
        corrected = n4_correct(image, cfg, threads=threads)
    with step("skullstrip", steps, rss):
        mask = skull_strip(corrected, cfg.skull_strip, tta=cfg.hdbet_tta, mode=cfg.hdbet_mode,
                           mirrors=cfg.hdbet_tta_mirrors, threads=threads,
                           bf16=cfg.hdbet_bf16)
    with step("intensity", steps, rss):
        norm = normalise_intensity(corrected, mask, cfg.clip_percentiles, cfg.gamma)
    with step("register", steps, rss):
        # loaded here, as preproc.mri does: not held in memory through skull stripping
        template, tmask = load_template(cfg), load_template_mask(cfg)
        fit = register_rigid(template, norm, cfg, threads=threads, work=work, fixed_mask=tmask)
    with step("resample", steps, rss):
        for img in (norm, mask):
            resample_array(np.asarray(img.dataobj, np.float32), img.affine, template.affine,
                           template.shape, order=1, world=fit.to_fixed)
    total = {"wall_s": time.perf_counter() - start_wall,
             "cpu_s": time.process_time() - start_cpu,
             "peak_gb": process_peak_gb()}
    rss.close()
    truth = _truth(root, t1)
    angle, shift = pose_error(fit.to_fixed, np.array(truth["native_to_template"]),
                              np.array(truth["centroid_native"]))
    true_mask = np.asarray(nib.load(truth_paths(root, t1)[1]).dataobj) > 0
    ours = np.asarray(mask.dataobj) > 0
    dice = float(2 * (ours & true_mask).sum() / (ours.sum() + true_mask.sum()))
    return {"image": t1.name, "shape": list(image.shape), "steps": steps, "total": total,
            "rotation_deg": angle, "translation_mm": shift, "dice": dice,
            "head_scale": truth.get("head_scale")}


#: PET variants compared on the same scans: (label, PreprocConfig overrides).
PET_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("all frames, rigid VOIs", {"pet_windows": {}, "pet_realign": False,
                                "voi_registration": "rigid"}),
    ("window, rigid VOIs", {"pet_realign": False, "voi_registration": "rigid"}),
    ("window+realign, rigid VOIs", {"voi_registration": "rigid"}),
    ("window+realign, affine VOIs", {}),  # the defaults
)


def run_pets(task: tuple[list[Path], Path, Path, dict[str, Any], int, Path]) -> list[dict[str, Any]]:
    """A subject's PET scans through its first T1w, each in every variant of PET_VARIANTS.

    The default variant (last) is timed step by step; the MRI chain is not timed here.
    """
    pet_paths, t1, root, overrides, threads, work = task
    import nibabel as nib

    from bids_amyloid.config import PreprocConfig
    from bids_amyloid.preproc.mri import preprocess_mri_session
    from bids_amyloid.preproc.pet import preprocess_pet
    from bids_amyloid.preproc.register import pose_error
    from bids_amyloid.sim.imaging import centiloid_from_suvr

    cfg = dataclasses.replace(PreprocConfig(), **overrides)
    mri = preprocess_mri_session({"T1w": t1}, cfg, work / "mri", threads=threads)["T1w"]
    rss = PeakRSS()
    out = []
    for pet_path in pet_paths:
        truth = _truth(root, pet_path)
        tracer = str(truth["tracer"])
        steps: dict[str, dict[str, float]] = {}
        estimates: dict[str, float] = {}
        for label, changes in PET_VARIANTS:
            variant = dataclasses.replace(cfg, **changes)
            with step("preprocess_pet", steps, rss):
                result = preprocess_pet(pet_path, mri, variant, work / "pet", threads=threads)
            estimates[label] = centiloid_from_suvr(result.metrics["cortical_suvr"], tracer)
        for key in ("seconds_frames_smooth", "seconds_register", "seconds_voi_registration",
                    "seconds_suvr"):
            steps[key.removeprefix("seconds_")] = {"wall_s": result.metrics[key], "cpu_s": 0.0,
                                                   "peak_gb": 0.0}
        angle, shift = pose_error(result.to_template, np.array(truth["native_to_template"]),
                                  np.array(truth["centroid_native"]))
        out.append({"image": pet_path.name, "shape": list(nib.load(pet_path).shape),
                    "steps": steps, "rotation_deg": angle, "translation_mm": shift,
                    "tracer": tracer, "centiloid": truth["centiloid"],
                    "head_scale": truth["head_scale"], "estimates": estimates,
                    "frames_used": result.frames["FramesUsed"],
                    # simulated motion of the frames the window uses (the realignment's scope)
                    "max_frame_motion_mm": max(truth["frame_motion_mm"][k]
                                               for k in result.frames["FramesUsed"]),
                    "realign_max_mm": result.metrics["frame_max_translation_mm"],
                    "voi_scale": result.metrics["voi_scale"]})
    rss.close()
    return out


def centiloid_table(pets: list[dict[str, Any]]) -> list[str]:
    """Lines of the Centiloid error table: r, bias, RMSE vs truth, and the slope of the
    error against head scale (CL per +10 % head size), per variant."""
    truth = np.array([r["centiloid"] for r in pets])
    scale = np.array([r["head_scale"] for r in pets])
    lines = [f"{'variant':<30} {'r':>6} {'bias CL':>8} {'RMSE CL':>8} {'err/10% head':>13}"]
    for label, _ in PET_VARIANTS:
        est = np.array([r["estimates"][label] for r in pets])
        err = est - truth
        r = float(np.corrcoef(est, truth)[0, 1]) if len(pets) > 2 else float("nan")
        slope = float(np.polyfit(scale, err, 1)[0]) * 0.1 if np.ptp(scale) > 0 else float("nan")
        lines.append(f"{label:<30} {r:6.3f} {err.mean():8.2f} {np.sqrt((err ** 2).mean()):8.2f} "
                     f"{slope:13.2f}")
    return lines


def _in_fresh_process(fn: Callable[[Any], dict[str, Any]], task: Any) -> dict[str, Any]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, (task,))


def _print_steps(result: dict[str, Any]) -> None:
    for name, s in result["steps"].items():
        print(f"    {name:<16} wall {s['wall_s']:7.1f} s  cpu {s['cpu_s']:7.1f} s  "
              f"peak {s['peak_gb']:5.2f} GB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bids", type=Path, help="existing simulated cohort (default: simulate one)")
    p.add_argument("--subjects", type=int, default=2)
    p.add_argument("--size", default="full", choices=("full", "small"))
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--sessions", type=int, default=2, help="T1w sessions to time")
    p.add_argument("--pets", type=int, default=2, help="PET scans to time")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skull-strip", default="hdbet", choices=("hdbet", "deepbet"))
    p.add_argument("--no-tta", action="store_true")
    p.add_argument("--json", type=Path, help="also write all figures here")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-preproc-"))
    root = args.bids
    if root is None:
        from bids_amyloid.simulate import simulate_cohort

        t = time.perf_counter()
        root = simulate_cohort(work / "bids", args.subjects, args.seed, args.size)
        print(f"simulated {args.subjects} subjects ({args.size}) in {time.perf_counter() - t:.0f} s")
    overrides = {"skull_strip": args.skull_strip, "hdbet_tta": not args.no_tta}
    print(f"cohort {root}; {os.cpu_count()} CPUs visible, {args.threads} threads; {overrides}")

    t1s = sorted(root.glob("sub-*/ses-*/anat/*_T1w.nii.gz"))[: args.sessions]
    mri = []
    for t1 in t1s:
        r = _in_fresh_process(run_mri, (t1, root, overrides, args.threads, work))
        mri.append(r)
        tot = r["total"]
        print(f"{r['image']} {tuple(r['shape'])}: wall {tot['wall_s']:.1f} s, cpu "
              f"{tot['cpu_s']:.1f} s, peak {tot['peak_gb']:.2f} GB | rotation "
              f"{r['rotation_deg']:.2f}°, translation {r['translation_mm']:.2f} mm, "
              f"Dice {r['dice']:.4f}")
        _print_steps(r)

    pets = []
    pet_files = sorted(root.glob("sub-*/ses-*/pet/*_pet.nii.gz"))[: args.pets]
    for sub in sorted({p.name.split("_")[0] for p in pet_files}):
        t1 = sorted(root.glob(f"{sub}/ses-*/anat/{sub}_ses-*_T1w.nii.gz"))[0]
        mine = [p for p in pet_files if p.name.startswith(f"{sub}_")]
        for r in _in_fresh_process(run_pets, (mine, t1, root, overrides, args.threads, work)):
            pets.append(r)
            print(f"{r['image']} {tuple(r['shape'])}: head x{r['head_scale']:.3f}, frames "
                  f"{r['frames_used']}, frame motion ≤{r['max_frame_motion_mm']:.1f} mm (found "
                  f"≤{r['realign_max_mm']:.1f}), pose {r['rotation_deg']:.2f}° "
                  f"{r['translation_mm']:.2f} mm | true {r['centiloid']:.1f} CL; "
                  + ", ".join(f"{k}: {v:.1f}" for k, v in r["estimates"].items()))
            _print_steps(r)
    if pets:
        print(f"Centiloid vs simulated truth, {len(pets)} PET scans "
              "(cortical SUVR through the app's tracer equations):")
        for line in centiloid_table(pets):
            print("  " + line)
        pp = [r["steps"]["preprocess_pet"] for r in pets]
        print(f"PET scans (default variant): mean wall {np.mean([s['wall_s'] for s in pp]):.1f} s, "
              f"max peak {max(s['peak_gb'] for s in pp):.2f} GB")

    if mri:
        walls = [r["total"]["wall_s"] for r in mri]
        print(f"T1w sessions: mean wall {np.mean(walls):.1f} s (max {max(walls):.1f}), "
              f"max peak {max(r['total']['peak_gb'] for r in mri):.2f} GB, worst rotation "
              f"{max(r['rotation_deg'] for r in mri):.2f}°, worst translation "
              f"{max(r['translation_mm'] for r in mri):.2f} mm, min Dice "
              f"{min(r['dice'] for r in mri):.4f}")
    print(f"load average now: {os.getloadavg()[0]:.1f} (others' jobs inflate wall times)")
    if args.json:
        args.json.write_text(json.dumps({"mri": mri, "pet": pets}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
