"""Synthetic participant-level outputs for the training tests (no preprocessing needed).

:func:`synthetic_run` writes, for a handful of subjects, MRI slice caches
(per contrast) and PET slice caches with :func:`bids_amyloid.derivatives.write_slice_cache`,
a minimal BIDS folder, and a hand-written ``cohort.tsv`` — the files the group
level reads. The signal is simple: PET cortical uptake rises with Centiloid
(a tiny teacher learns it quickly); the MRI changes weakly (a darker, larger
"ventricle"), so a student has something to learn from the teacher.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from bids_amyloid import derivatives

CANDIDATES = list(range(70, 110))  # 40 "sagittal positions" on a made-up template grid


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ax = np.linspace(-1, 1, size)
    return np.meshgrid(ax, ax, indexing="ij")


def mri_slices(label: int, n: int, size: int, rng: np.random.Generator, contrast: str,
               nuisance: float = 0.0) -> np.ndarray:
    """Head-like ellipses in [0, 1]; positives have a slightly larger dark centre
    (its radius also varies with sd ``nuisance`` regardless of the label)."""
    yy, xx = _grid(size)
    r = np.sqrt((yy / 0.85) ** 2 + (xx / 0.7) ** 2)
    base = np.clip(1.2 - r, 0, 1) * (0.8 if contrast == "T1w" else 0.6)
    hole = 0.18 + 0.08 * label + (rng.normal(0, nuisance) if nuisance else 0.0)
    base = np.where(r < hole, 0.1, base)
    out = np.stack([base * (0.9 + 0.1 * np.cos(k / n * np.pi)) for k in range(n)])
    return np.clip(out + rng.normal(0, 0.03, out.shape), 0, 1).astype(np.float32)


def pet_slices(centiloid: float, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """SUVR-like: 0.8 background, a cortical ring at 1 + CL/80."""
    yy, xx = _grid(size)
    r = np.sqrt((yy / 0.85) ** 2 + (xx / 0.7) ** 2)
    ring = (r > 0.5) & (r < 0.8)
    img = np.where(r < 0.9, 0.8, 0.0) + ring * max(centiloid, 0) / 80.0
    out = np.repeat(img[None], n, axis=0)
    return np.clip(out + rng.normal(0, 0.05, out.shape), 0, None).astype(np.float32)


def synthetic_run(out: Path, n_subjects: int = 15, contrasts: tuple[str, ...] = ("T1w",),
                  size: int = 32, n_kept: int = 12, seed: int = 0, run_name: str = "default",
                  second_pet: tuple[int, ...] = (2, 3), nuisance: float = 0.0
                  ) -> tuple[Path, pd.DataFrame]:
    """Write caches + ``cohort.tsv`` under ``out``; return ``(bids_dir, cohort)``.

    Subject ``i``: positive when ``i`` is even; split val when ``i % 5 == 0``,
    test when ``i % 5 == 1``, train otherwise. Subjects in ``second_pet`` get a
    second PET (another tracer) paired with the same MRI session. ``nuisance``
    blurs the MRI signal (sd of the label-independent "ventricle" radius; 0.08
    separates the classes), so an MRI-only student has a harder task.
    """
    rng = np.random.default_rng(seed)
    bids = out.parent / f"{out.name}_bids"
    bids.mkdir(parents=True, exist_ok=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "synthetic", "BIDSVersion": "1.10.0"}))
    out.mkdir(parents=True, exist_ok=True)
    kept = CANDIDATES[4: 4 + n_kept]
    rows = []
    for i in range(n_subjects):
        sub, label = f"{i:02d}", int(i % 2 == 0)
        split = "val" if i % 5 == 0 else "test" if i % 5 == 1 else "train"
        for c in contrasts:
            derivatives.write_slice_cache(
                derivatives.mri_slice_cache(out, sub, "01", c),
                mri_slices(label, len(kept), size, rng, c, nuisance), kept, {"Contrast": c})
        pets = [("02", "AV45")] + ([("03", "PIB")] if i in second_pet else [])
        for pet_ses, tracer in pets:
            cl = float(rng.uniform(40, 100) if label else rng.uniform(-10, 12))
            derivatives.write_slice_cache(
                derivatives.pet_slice_cache(out, sub, pet_ses, tracer),
                pet_slices(cl, len(CANDIDATES), size, rng), CANDIDATES, {"Tracer": tracer})
            rows.append({"participant_id": f"sub-{sub}", "mri_session": "ses-01",
                         "pet_session": f"ses-{pet_ses}", "tracer": tracer,
                         "centiloid": round(cl, 2), "label": int(cl > 20.6), "days_apart": 30,
                         "split": split})
    cohort = pd.DataFrame(rows)
    folder = out / "group" / run_name
    folder.mkdir(parents=True, exist_ok=True)
    cohort.to_csv(folder / "cohort.tsv", sep="\t", index=False)
    return bids, cohort


def small_toml(*, n_train_slices: int = 5, contrastive_epochs: int = 2, accumulation: int = 2,
               contrastive_extra: str = "") -> str:
    """A group-level TOML for the synthetic runs: ``test_vit`` at 32 px, batches of 4,
    2 epochs of phases 1 and 3; ``contrastive_extra`` lines go into ``[contrastive]``."""
    return f"""
[model]
backbone = "test_vit"
image_size = 32

[train]
n_train_slices = {n_train_slices}
bootstrap = 50
amp = false

[pretrain]
max_epochs = 2
batch_size = 4

[contrastive]
max_epochs = {contrastive_epochs}
{contrastive_extra}batch_size = 4
accumulation = {accumulation}

[distill]
max_epochs = 2
batch_size = 4
accumulation = {accumulation}
"""


class Killed(Exception):
    """Stands in for a job killed right after a checkpoint."""


def run_group(bids: Path, out: Path, config: Path, *extra: str) -> int:
    """``bids-amyloid BIDS OUT group --stage all --config CONFIG --deterministic -q EXTRA``."""
    from bids_amyloid import cli

    return cli.main([str(bids), str(out), "group", "--stage", "all", "--config", str(config),
                     "--deterministic", "-q", *extra])


def copy_cohort(out: Path, src: str, dst: str) -> None:
    """Give group run ``dst`` the ``cohort.tsv`` of run ``src`` (same split, no re-pairing)."""
    (out / "group" / dst).mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "group" / src / "cohort.tsv", out / "group" / dst / "cohort.tsv")


def write_small_config(path: Path, extra: str = "") -> Path:
    path.write_text(small_toml() + extra)
    return path


def shuffle_labels(cohort: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """A label-shuffled control: ``centiloid`` and ``label`` permuted together across the
    rows of each split (images, sessions and splits unchanged), so that no image carries
    information about its label."""
    rng = np.random.default_rng(seed)
    out = cohort.copy()
    for split in out["split"].unique():
        rows = np.flatnonzero((out["split"] == split).to_numpy())
        perm = rng.permutation(rows)
        for column in ("centiloid", "label"):
            out.iloc[rows, out.columns.get_loc(column)] = cohort[column].to_numpy()[perm]
    return out
