"""Fast stand-ins for the image functions, to test participant-level orchestration.

They read the real input files (so bad inputs still break them where real
code would), return MRIResult/PETResult-shaped objects on a tiny template grid
and take milliseconds. ``install(monkeypatch)`` swaps them in for
``bids_amyloid.participant.worker.load_steps``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np

from bids_amyloid.participant import plan, worker
from bids_amyloid.preproc.register import write_itk_transform

GRID = (20, 24, 20)
CALLS: list[str] = []  # one "mri" per MRI session preprocessed in this process
AFFINE = np.array([[1.0, 0, 0, -10], [0, 1.0, 0, -12], [0, 0, 1.0, -10], [0, 0, 0, 1]])


def template(_cfg: Any = None) -> nib.Nifti1Image:
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in GRID), indexing="ij")
    head = np.clip(1.2 - np.sqrt(x**2 + y**2 + z**2), 0, None)
    return nib.Nifti1Image((head * 100).astype(np.float32), AFFINE)


def preprocess_mri_session(images: dict[str, Path], cfg: Any, work: Path,
                           threads: int = 1) -> dict[str, SimpleNamespace]:
    CALLS.append("mri")
    work.mkdir(parents=True, exist_ok=True)
    tpl = np.asarray(template().dataobj)
    out = {}
    for contrast, path in images.items():
        native = nib.load(path)
        data = np.asarray(native.dataobj, dtype=np.float32)
        mask = (data > np.percentile(data, 60)).astype(np.uint8)
        xfm = work / f"{contrast}.mat"
        write_itk_transform(np.eye(4), xfm)  # real .mat: PET-only re-runs read it back
        mni = tpl / tpl.max() * (0.9 if contrast == "T1w" else 0.7)
        out[contrast] = SimpleNamespace(
            contrast=contrast,
            mni_image=nib.Nifti1Image(mni.astype(np.float32), AFFINE),
            mni_mask=nib.Nifti1Image((tpl > 20).astype(np.uint8), AFFINE),
            native_image=nib.Nifti1Image(data, native.affine),
            native_mask=nib.Nifti1Image(mask, native.affine),
            native_brain=nib.Nifti1Image(data * mask, native.affine),
            transform_file=xfm, to_template=np.eye(4),
            metrics={"mask_volume_ml": 1234.5, "registration_similarity": -0.61,
                     "seconds_total": 0.01})
    return out


def preprocess_pet(pet: Path, mri: Any, cfg: Any, work: Path, threads: int = 1) -> SimpleNamespace:
    data = np.asarray(nib.load(pet).dataobj, dtype=np.float32)
    level = float(data.mean() / (data.mean() + 1.0)) + 1.0  # depends on the input, ~1–2
    suvr = np.asarray(mri.mni_image.dataobj) * level
    return SimpleNamespace(suvr_mni=nib.Nifti1Image(suvr.astype(np.float32), AFFINE),
                           reference_mean=float(data.mean()), metrics={"seconds_total": 0.01},
                           frames={"NumberOfFrames": int(data.shape[3]) if data.ndim == 4 else 1,
                                   "FramesUsed": [0]})


def _slices(volume: nib.Nifti1Image, cfg: Any, keep_all: bool) -> tuple[np.ndarray, list[int]]:
    data = np.asarray(volume.dataobj, dtype=np.float32)
    idx = list(range(6, 14))
    if not keep_all:
        idx = [i for i in idx if data[i].mean() >= cfg.min_slice_mean]
    return np.stack([data[i, :, :] for i in idx]), idx


def extract_mri_slices(volume: nib.Nifti1Image, cfg: Any) -> tuple[np.ndarray, list[int]]:
    return _slices(volume, cfg, keep_all=False)


def extract_pet_slices(volume: nib.Nifti1Image, cfg: Any) -> tuple[np.ndarray, list[int]]:
    return _slices(volume, cfg, keep_all=True)


def steps() -> plan.Steps:
    return plan.Steps(preprocess_mri_session, preprocess_pet, extract_mri_slices,
                      extract_pet_slices, template)


def install(monkeypatch: Any) -> None:
    monkeypatch.setattr(worker, "load_steps", steps)
