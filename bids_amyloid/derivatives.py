"""Naming, writing and reading of the BIDS-Derivatives this app produces.

One layer owns every output name (the idea of niworkflows' DerivativesDataSink):
other modules ask for a path here instead of formatting file names.

Layout of OUT (participant level)::

    OUT/dataset_description.json, OUT/.bidsignore, OUT/sub-XX.html
    OUT/sub-XX/ses-YY/anat/sub-XX_ses-YY_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz
    OUT/sub-XX/ses-YY/anat/sub-XX_ses-YY_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz
    OUT/sub-XX/ses-YY/anat/sub-XX_ses-YY_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.mat
    OUT/sub-XX/ses-YY/anat/sub-XX_ses-YY_desc-brain_T1w.nii.gz, ..._desc-brain_mask.nii.gz (native)
    OUT/sub-XX/ses-YY/anat/sub-XX_ses-YY_space-MNI152NLin2009aSym_desc-slices_T1w.npy (+ .json)
    OUT/sub-XX/ses-PP/pet/sub-XX_ses-PP_trc-AV45_space-MNI152NLin2009aSym_desc-suvr_pet.nii.gz
    OUT/sub-XX/ses-PP/pet/sub-XX_ses-PP_trc-AV45_space-MNI152NLin2009aSym_desc-slices_pet.npy

Slice caches: a float16 array (n_slices, 224, 224), single channel, values as
preprocessed (MRI in [0, 1]; PET as SUVR, not rescaled), memory-mappable with
``np.load(mmap_mode="r")``; the JSON sidecar holds ``SliceIndices`` (sagittal
indices on the template grid, in increasing order, one per array row) and the
parameters that made it. MRI caches keep only slices whose mean ≥ 0.01; PET
caches keep all candidate positions so any MRI's indices can be looked up.

Example
-------
>>> from pathlib import Path
>>> derivative_path(Path("/out"), "01", "02", "anat", suffix="T1w", ext=".nii.gz",
...                 space="MNI152NLin2009aSym", desc="preproc").name
'sub-01_ses-02_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz'
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_amyloid import __version__
from bids_amyloid.config import TEMPLATE_SPACE
from bids_amyloid.io import atomic_path, write_json

# BIDS entity order (specification, "Entity table"), with the transform entities.
ENTITY_ORDER = ("sub", "ses", "acq", "ce", "trc", "rec", "run", "from", "to", "mode",
                "space", "res", "label", "desc")
# bids-validator-deno matches a bare name against every path component; "log/" matches nothing.
BIDSIGNORE = ["*_desc-slices_*", "*_xfm.*", "*.html", "log", "figures", "group", "predict", "work"]


def bids_name(entities: dict[str, str | None], suffix: str, ext: str) -> str:
    """``{"sub": "01", "desc": "preproc"}, "T1w", ".nii.gz"`` → a BIDS file name."""
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}")
    parts = [f"{key}-{entities[key]}" for key in ENTITY_ORDER if entities.get(key)]
    return "_".join([*parts, suffix]) + ext


def derivative_path(out: Path, sub: str, ses: str | None, datatype: str, *, suffix: str,
                    ext: str, **entities: str | None) -> Path:
    """Path of a derivative under ``out/sub-<sub>[/ses-<ses>]/<datatype>/``.

    Keyword entities may use ``from_`` for the ``from`` entity.
    """
    ents: dict[str, str | None] = {"sub": sub, "ses": ses}
    ents.update({key.rstrip("_"): value for key, value in entities.items()})
    folder = Path(out) / f"sub-{sub}"
    if ses:
        folder = folder / f"ses-{ses}"
    return folder / datatype / bids_name(ents, suffix, ext)


def mri_slice_cache(out: Path, sub: str, ses: str, contrast: str) -> Path:
    return derivative_path(out, sub, ses, "anat", suffix=contrast, ext=".npy",
                           space=TEMPLATE_SPACE, desc="slices")


def pet_slice_cache(out: Path, sub: str, ses: str, tracer: str) -> Path:
    return derivative_path(out, sub, ses, "pet", suffix="pet", ext=".npy", trc=tracer,
                           space=TEMPLATE_SPACE, desc="slices")


# --------------------------------------------------------------------------- participant level


def mri_preproc_path(out: Path, sub: str, ses: str, contrast: str) -> Path:
    """The preprocessed MRI contrast on the template grid."""
    return derivative_path(out, sub, ses, "anat", suffix=contrast, ext=".nii.gz",
                           space=TEMPLATE_SPACE, desc="preproc")


def brain_mask_path(out: Path, sub: str, ses: str) -> Path:
    """The session's brain mask on the template grid."""
    return derivative_path(out, sub, ses, "anat", suffix="mask", ext=".nii.gz",
                           space=TEMPLATE_SPACE, desc="brain")


def mri_xfm_path(out: Path, sub: str, ses: str, contrast: str) -> Path:
    """The rigid native → template transform of one contrast (ITK/ANTs ``.mat``)."""
    return derivative_path(out, sub, ses, "anat", suffix="xfm", ext=".mat",
                           from_=contrast, to=TEMPLATE_SPACE, mode="image")


def pet_suvr_path(out: Path, sub: str, ses: str, tracer: str) -> Path:
    """The SUVR image of one PET scan on the template grid."""
    return derivative_path(out, sub, ses, "pet", suffix="pet", ext=".nii.gz",
                           trc=tracer, space=TEMPLATE_SPACE, desc="suvr")


def native_brain_path(out: Path, sub: str, ses: str) -> Path:
    """The skull-stripped, N4-corrected T1w on its native grid (PET is registered to it)."""
    return derivative_path(out, sub, ses, "anat", suffix="T1w", ext=".nii.gz", desc="brain")


def native_mask_path(out: Path, sub: str, ses: str) -> Path:
    """The T1w's brain mask on its native grid."""
    return derivative_path(out, sub, ses, "anat", suffix="mask", ext=".nii.gz", desc="brain")


def qc_numbers_path(out: Path, sub: str, ses: str, tracer: str | None = None) -> Path:
    """QC numbers of a unit: the MRI session (``tracer`` None) or one PET scan."""
    if tracer is None:
        return figure_path(out, sub, ses, desc="anat", suffix="qc", ext=".json")
    return figure_path(out, sub, ses, desc="pet", suffix="qc", ext=".json", trc=tracer)


def mri_figure_path(out: Path, sub: str, ses: str, step: str, contrast: str) -> Path:
    """QC figure of one MRI step (``skullstrip``, ``registration``) for one contrast."""
    return figure_path(out, sub, ses, desc=step, suffix=contrast)


def pet_figure_path(out: Path, sub: str, ses: str, tracer: str) -> Path:
    """QC figure of one PET scan's SUVR over its MRI."""
    return figure_path(out, sub, ses, desc="suvr", suffix="pet", trc=tracer)


def source_uri(path: Path, bids_dir: Path | None) -> str:
    """``bids:raw:<relative path>`` for an input inside BIDS_DIR, else the absolute path.

    >>> source_uri(Path("/data/bids/sub-01/anat/sub-01_T1w.nii.gz"), Path("/data/bids"))
    'bids:raw:sub-01/anat/sub-01_T1w.nii.gz'
    """
    path = Path(path).resolve()
    if bids_dir is not None:
        with contextlib.suppress(ValueError):
            return "bids:raw:" + path.relative_to(Path(bids_dir).resolve()).as_posix()
    return str(path)


def output_uri(path: Path, out: Path) -> str:
    """``bids::<relative path>`` for a file of this derivative dataset."""
    return "bids::" + Path(path).relative_to(out).as_posix()


def sidecar_of(path: Path) -> Path:
    """``x.nii.gz``/``x.npy``/``x.mat`` → ``x.json``."""
    name = path.name
    for ext in (".nii.gz", ".nii", ".npy", ".mat", ".h5", ".tsv"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    raise ValueError(f"no sidecar rule for {path}")


def write_slice_cache(path: Path, slices: np.ndarray, indices: list[int],
                      meta: dict[str, Any]) -> None:
    """Write a slice cache (float16 array + JSON sidecar), each file atomically.

    The sidecar is written last: a cache counts as finished only when both exist.
    """
    if slices.ndim != 3 or len(indices) != slices.shape[0]:
        raise ValueError(f"slice cache {path}: {slices.shape} does not match {len(indices)} indices")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, slices.astype(np.float16))
    write_json(sidecar_of(path), {**meta, "SliceIndices": [int(i) for i in indices]})


def read_slice_cache(path: Path) -> tuple[np.ndarray, list[int], dict[str, Any]]:
    """Memory-map a slice cache: ``(array (S, H, W) float16, indices, sidecar)``."""
    meta = json.loads(sidecar_of(path).read_text())
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    return array, list(meta["SliceIndices"]), meta


def figure_path(out: Path, sub: str, ses: str | None, *, desc: str, suffix: str,
                ext: str = ".png", **entities: str | None) -> Path:
    """A QC figure (or QC numbers, ``ext=".json"``) under ``out/sub-<sub>/figures/``."""
    ents: dict[str, str | None] = {"sub": sub, "ses": ses, "desc": desc}
    ents.update({key.rstrip("_"): value for key, value in entities.items()})
    return Path(out) / f"sub-{sub}" / "figures" / bids_name(ents, suffix, ext)


def log_path(out: Path, sub: str, unit: str) -> Path:
    """Log of one session (``unit`` like ``ses-01`` or ``ses-02_trc-AV45``)."""
    return Path(out) / f"sub-{sub}" / "log" / f"{unit}.log"


def report_path(out: Path, sub: str) -> Path:
    """The subject's self-contained QC page ``out/sub-<sub>.html``."""
    return Path(out) / f"sub-{sub}.html"


def dataset_description(container: str | None = None) -> dict[str, Any]:
    generated: dict[str, Any] = {
        "Name": "bids-amyloid",
        "Version": __version__,
        "CodeURL": "https://github.com/bids-amyloid/bids-amyloid",
    }
    if container:
        generated["Container"] = {"Type": "docker", "Tag": container}
    return {
        "Name": "bids-amyloid derivatives",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
    }


def init_output(out: Path, source: Path | None = None) -> None:
    """Create OUT's ``dataset_description.json`` and ``.bidsignore`` if missing.

    The container image sets ``BIDS_AMYLOID_CONTAINER`` so outputs name it.
    """
    import os

    out.mkdir(parents=True, exist_ok=True)
    desc = out / "dataset_description.json"
    if not desc.exists():
        data = dataset_description(os.environ.get("BIDS_AMYLOID_CONTAINER"))
        if source is not None:
            uri = Path(source).resolve().as_uri()
            data["SourceDatasets"] = [{"URL": uri}]
            data["DatasetLinks"] = {"raw": uri}  # sidecars cite inputs as bids:raw:<path>
        write_json(desc, data)
    ignore = out / ".bidsignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    missing = [line for line in BIDSIGNORE if line not in lines]
    if missing:  # keep the user's own lines, add ours
        with atomic_path(ignore) as tmp:
            tmp.write_text("\n".join([*lines, *missing]) + "\n")


# --------------------------------------------------------------------------- group and predict level
#
#   OUT/group/<run-name>/   cohort.tsv excluded.tsv provenance.tsv cohort.json missing.tsv
#                           config.toml teacher.pt student_<C>.pt student_<C>_best-cosine.pt
#                           training.tsv metrics.tsv predictions.tsv report.html *.png
#                           checkpoints/<phase>/ (last.pt, best_<key>.pt, history.json)
#                           --cv K: fold-<k>/ (a run each, plus fold.json), cv_metrics.tsv
#                           oof_predictions.tsv student_<C>_ensemble.pt
#   OUT/predict/<model>/    predictions.tsv excluded.tsv evaluation.tsv metrics.tsv
#                           predict.json report.html reliability.png (if labelled)
#                           sub-XX.html, saliency maps (BIDS names below it),
#                           derivatives/ (MRI preprocessed with the model's parameters)
#
# The group and predict levels log to the console only; their file logs are
# training.tsv (group) and predict.json (predict).


def session_label(ses: str) -> str:
    """The ``session_id`` of a table row: ``ses-<ses>``, or ``n/a`` without sessions.

    >>> session_label("01"), session_label("")
    ('ses-01', 'n/a')
    """
    return f"ses-{ses}" if ses else "n/a"


def student_file(contrasts: tuple[str, ...], selection: str = "") -> str:
    """``student_T1w.pt``, ``student_T1w+T2w_best-cosine.pt``."""
    tail = f"_{selection}" if selection else ""
    return f"student_{'+'.join(contrasts)}{tail}.pt"


@dataclass(frozen=True)
class CheckpointFolder:
    """The checkpoints of one training phase, ``checkpoints/<phase>/``.

    >>> CheckpointFolder(Path("ck")).best("f1@tau").as_posix()
    'ck/best_f1@tau.pt'
    """

    folder: Path

    last = property(lambda self: self.folder / "last.pt")            # resume point
    history = property(lambda self: self.folder / "history.json")    # per-epoch rows
    done = property(lambda self: self.folder / "done.json")          # written when finished

    def best(self, key: str) -> Path:
        """The weights of the best epoch by validation ``key``."""
        return self.folder / f"best_{key}.pt"


@dataclass(frozen=True)
class GroupRun:
    """The files of one group run, ``OUT/group/<run-name>/``.

    >>> GroupRun.of(Path("/out"), "demo").student(("T1w",), "best-cosine").as_posix()
    '/out/group/demo/student_T1w_best-cosine.pt'
    """

    folder: Path

    @classmethod
    def of(cls, out: Path, run_name: str) -> GroupRun:
        return cls(Path(out) / "group" / run_name)

    cohort = property(lambda self: self.folder / "cohort.tsv")
    excluded = property(lambda self: self.folder / "excluded.tsv")
    cohort_json = property(lambda self: self.folder / "cohort.json")
    provenance = property(lambda self: self.folder / "provenance.tsv")
    missing = property(lambda self: self.folder / "missing.tsv")
    config = property(lambda self: self.folder / "config.toml")
    teacher = property(lambda self: self.folder / "teacher.pt")
    training = property(lambda self: self.folder / "training.tsv")
    metrics = property(lambda self: self.folder / "metrics.tsv")
    predictions = property(lambda self: self.folder / "predictions.tsv")
    report = property(lambda self: self.folder / "report.html")

    def student(self, contrasts: tuple[str, ...], selection: str = "") -> Path:
        """The student file (``selection`` ``""``: best F1@τ, ``best-cosine``)."""
        return self.folder / student_file(contrasts, selection)

    def checkpoints(self, phase: str) -> Path:
        """``checkpoints/<phase>/``: the files of :class:`CheckpointFolder`."""
        return self.folder / "checkpoints" / phase

    # --cv K: one group run per outer fold in fold-<k>/, then the pooled results
    cv_metrics = property(lambda self: self.folder / "cv_metrics.tsv")
    oof_predictions = property(lambda self: self.folder / "oof_predictions.tsv")
    fold_record = property(lambda self: self.folder / "fold.json")   # in fold-<k>/: finished

    def fold(self, k: int) -> GroupRun:
        """The run of outer fold ``k`` under ``--cv``, ``fold-<k>/``."""
        return GroupRun(self.folder / f"fold-{k}")

    def ensemble(self, contrasts: tuple[str, ...], selection: str = "") -> Path:
        """The ``--cv`` ensemble of the folds' students, ``student_<C>[_<selection>-]ensemble.pt``."""
        return self.student(contrasts, f"{selection}-ensemble" if selection else "ensemble")

    def figure(self, name: str) -> Path:
        """A report figure (``roc_test``, ``roc_epochs``, ``reliability``, ``training_curves``)
        as PNG."""
        return self.folder / f"{name}.png"


@dataclass(frozen=True)
class PredictRun:
    """The files of one predict run, ``OUT/predict/<model name>/``.

    >>> PredictRun.of(Path("/out"), "student_T1w").predictions.as_posix()
    '/out/predict/student_T1w/predictions.tsv'
    """

    folder: Path

    @classmethod
    def of(cls, out: Path, model_name: str) -> PredictRun:
        return cls(Path(out) / "predict" / model_name)

    predictions = property(lambda self: self.folder / "predictions.tsv")
    excluded = property(lambda self: self.folder / "excluded.tsv")
    evaluation = property(lambda self: self.folder / "evaluation.tsv")
    metrics = property(lambda self: self.folder / "metrics.tsv")
    provenance = property(lambda self: self.folder / "predict.json")
    report = property(lambda self: self.folder / "report.html")    # summary page of the run
    reliability_figure = property(lambda self: self.folder / "reliability.png")  # if labelled
    derivatives = property(lambda self: self.folder / "derivatives")

    def page(self, sub: str) -> Path:
        """The subject's saliency page ``sub-<sub>.html``."""
        return self.folder / f"sub-{sub}.html"

    def saliency_map(self, sub: str, ses: str, contrast: str, method: str) -> Path:
        """A saliency map (``method`` ``gradient`` or ``hirescam``) on the template grid."""
        return derivative_path(self.folder, sub, ses, "anat", suffix="saliency", ext=".nii.gz",
                               space=TEMPLATE_SPACE, desc=f"{method}{contrast}")
