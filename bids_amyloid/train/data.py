"""Training data: MRI–PET pairs of ``cohort.tsv`` read from memory-mapped slice caches.

Nothing is loaded up front: each sample maps its caches (``np.load(mmap_mode="r")``)
and copies only the slices it uses, so RAM does not grow with the cohort. Of
each MRI's kept slices, ``n_slices`` (25) evenly spaced ones are used, in
numeric order of their sagittal index; the PET rows are looked up at the same
indices (PET caches keep all 40 candidate positions). PET SUVR is divided by
one global factor (``cfg.train.pet_scale``), never rescaled per slice.

Provenance: each cache's sidecar records the ``[preproc]`` parameters that made
it (``Parameters``) and, for PET, the MRI session it was registered through
(``MRISession``). :func:`check_caches` leaves out a row whose PET was registered
through another session than the cohort pairs it with; :func:`cache_parameters`
refuses a cohort whose caches were made with different parameters, and
:func:`with_cache_parameters` puts the caches' parameters (not the group run's
``[preproc]``) into the configuration the model files record.

Example
-------
>>> even_positions(10, 4)
[0, 3, 6, 9]
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bids_amyloid import derivatives
from bids_amyloid.config import AppConfig, ConfigError, apply_overrides, config_to_dict
from bids_amyloid.errors import InputDataError, InputMissingError, UsageError
from bids_amyloid.slice_selection import even_positions

LOG = logging.getLogger(__name__)


def _strip(label: str, prefix: str) -> str:
    label = str(label)
    return label[len(prefix):] if label.startswith(prefix) else label


@dataclass(frozen=True)
class PairPaths:
    """Slice caches of one cohort row."""

    mri: dict[str, Path]
    pet: Path


def pair_paths(out: Path, row: pd.Series | dict[str, Any], contrasts: Sequence[str]) -> PairPaths:
    """Cache paths of a cohort row (``participant_id``, ``mri_session``, ``pet_session``, ``tracer``)."""
    sub = _strip(row["participant_id"], "sub-")
    mri_ses = _strip(row["mri_session"], "ses-")
    pet_ses = _strip(row["pet_session"], "ses-")
    mri = {c: derivatives.mri_slice_cache(out, sub, mri_ses, c) for c in contrasts}
    return PairPaths(mri=mri, pet=derivatives.pet_slice_cache(out, sub, pet_ses, str(row["tracer"])))


def _finished(path: Path) -> bool:
    return path.is_file() and derivatives.sidecar_of(path).is_file()


def _sidecar(path: Path) -> dict[str, Any]:
    """A cache's sidecar; InputMissingError naming it when it cannot be read."""
    sidecar = derivatives.sidecar_of(path)
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputMissingError(f"{sidecar}: cannot read the slice cache's sidecar ({err}); "
                                "re-run the participant level for it") from err
    if not isinstance(meta, dict):
        raise InputMissingError(f"{sidecar}: not a JSON object; re-run the participant level")
    return meta


def _registered_elsewhere(paths: PairPaths, row: pd.Series, out: Path) -> str | None:
    """Why the row's PET cache does not belong to its MRI session, or None if it does."""
    try:
        through = _sidecar(paths.pet).get("MRISession")
    except InputMissingError as err:
        return str(err)
    listed = str(row["mri_session"])
    listed = listed if not listed or listed.startswith("ses-") else f"ses-{listed}"
    if through is None or through == listed:
        return None
    return (f"PET {paths.pet.relative_to(out)} was registered through {through or 'n/a'}, "
            f"the cohort pairs it with {listed or 'n/a'} (run the participant level with the "
            "group run's contrasts: both pair with bids_amyloid.bids.pair_scans)")


def check_caches(cohort: pd.DataFrame, out: Path, contrasts: Sequence[str],
                 with_pet: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split cohort rows into those whose caches all exist and the others (with a reason).

    A row also goes to the others when its PET cache records (``MRISession``)
    another MRI session than the row's: that PET was registered through it.
    """
    keep, missing = [], []
    for idx, row in cohort.iterrows():
        paths = pair_paths(out, row, contrasts)
        needed = list(paths.mri.values()) + ([paths.pet] if with_pet else [])
        absent = [p for p in needed if not _finished(p)]
        elsewhere = None if absent or not with_pet else _registered_elsewhere(paths, row, out)
        if absent:
            missing.append({**row.to_dict(), "reason": "missing slice cache " + ", ".join(
                str(p.relative_to(out)) for p in absent)})
        elif elsewhere:
            missing.append({**row.to_dict(), "reason": elsewhere})
        else:
            keep.append(idx)
    return cohort.loc[keep].reset_index(drop=True), pd.DataFrame(missing)


def _value_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def cache_parameters(cohort: pd.DataFrame, out: Path, contrasts: Sequence[str],
                     with_pet: bool = True) -> dict[str, Any]:
    """The ``[preproc]`` parameters the cohort's slice caches were made with (JSON form).

    MRI caches record the MRI and slice fields, PET caches all fields; every
    field must have one value across all caches. Raises InputDataError naming
    each differing field with its values and an example file of each, or the
    caches that record no parameters when others do (UsageError: the user
    re-runs the participant level with one configuration). Returns ``{}`` when no
    cache records parameters (caches not written by the participant level).
    """
    seen: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    values: dict[str, Any] = {}
    unrecorded: list[Path] = []
    for _, row in cohort.iterrows():
        paths = pair_paths(out, row, contrasts)
        for path in [*paths.mri.values(), *([paths.pet] if with_pet else [])]:
            params = _sidecar(path).get("Parameters")
            if not isinstance(params, dict):
                unrecorded.append(path)
                continue
            for name, value in params.items():
                seen[name][_value_text(value)].append(path)
                values.setdefault(name, value)
    if not seen:
        return {}
    if unrecorded:
        raise UsageError(
            f"{len(unrecorded)} slice caches record no preprocessing parameters while others "
            f"do (e.g. {_examples(unrecorded, out)}): re-run the participant level for them")
    differing = {name: by_value for name, by_value in seen.items() if len(by_value) > 1}
    if differing:
        lines = [f"  {name}: " + " vs ".join(
            f"{text} ({len(files)} files, e.g. {_examples(files, out, 1)})"
            for text, files in sorted(by_value.items())) for name, by_value in sorted(differing.items())]
        raise UsageError(
            "the cohort's slice caches were made with different preprocessing parameters "
            f"({', '.join(sorted(differing))}); a model must see one preprocessing. Re-run "
            "the participant level with one --config for every session:\n" + "\n".join(lines))
    return values


def _examples(paths: Sequence[Path], out: Path, n: int = 2) -> str:
    return ", ".join(str(p.relative_to(out)) for p in paths[:n])


def with_cache_parameters(cfg: AppConfig, params: dict[str, Any]) -> AppConfig:
    """``cfg`` with ``[preproc]`` replaced by the caches' parameters (:func:`cache_parameters`).

    The group level does not preprocess: the parameters its model files record
    (and predict applies to new MRI) are those its inputs were made with. Each
    value that differs from the run's own ``[preproc]`` is logged.
    """
    if not params:
        LOG.warning("the slice caches record no preprocessing parameters (not written by the "
                    "participant level): the model files record this run's [preproc] instead")
        return cfg
    try:
        merged = apply_overrides(cfg, {"preproc": params})
    except ConfigError as err:
        raise UsageError(f"the slice caches record preprocessing parameters this version "
                         f"cannot use: {err}; re-run the participant level") from err
    own, made = config_to_dict(cfg.preproc), config_to_dict(merged.preproc)
    for name in sorted(k for k in made if own.get(k) != made[k]):
        LOG.info("slice caches made with %s = %s (this run's [preproc]: %s); the model files "
                 "record the caches' value", name, _value_text(made[name]),
                 _value_text(own.get(name)))
    return merged


class SliceCacheDataset(Dataset):
    """MRI (every contrast) and PET slices of cohort rows, from memory-mapped caches.

    Items are dicts: ``mri`` {contrast: float16 (S, H, W)}, ``mri_mask``
    {contrast: bool (S,)}, ``pet`` float16 (S, H, W) scaled SUVR, ``pet_mask``,
    ``label``, ``centiloid``, ``index``. ``S = n_slices``; sessions with fewer
    kept slices are zero-padded and masked. PET uses the first contrast's indices.
    """

    def __init__(self, cohort: pd.DataFrame, out: Path, contrasts: Sequence[str],
                 n_slices: int = 25, with_pet: bool = True, pet_scale: float = 3.0) -> None:
        if not contrasts:
            raise ValueError("at least one MRI contrast is needed")
        self.rows = cohort.reset_index(drop=True)
        self.out = Path(out)
        self.contrasts = tuple(contrasts)
        self.n_slices = int(n_slices)
        self.with_pet = with_pet
        self.pet_scale = float(pet_scale)
        self.paths = [pair_paths(self.out, r, self.contrasts) for _, r in self.rows.iterrows()]
        self.labels = self.rows["label"].astype(int).to_numpy()
        self.subjects = self.rows["participant_id"].astype(str).tolist()
        self.centiloids = pd.to_numeric(self.rows["centiloid"], errors="coerce").to_numpy(float)
        self._maps: dict[Path, tuple[np.ndarray, list[int]]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _cache(self, path: Path) -> tuple[np.ndarray, list[int]]:
        if path not in self._maps:
            try:
                array, indices, _ = derivatives.read_slice_cache(path)
            except (OSError, ValueError, KeyError) as err:
                raise InputDataError(f"{path}: cannot read slice cache ({err})") from err
            if array.ndim != 3 or array.shape[0] != len(indices):
                raise InputDataError(f"{path}: array {array.shape} does not match "
                                     f"{len(indices)} SliceIndices")
            self._maps[path] = (array, [int(i) for i in indices])
        return self._maps[path]

    def _padded(self, array: np.ndarray, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = array.shape[1:]
        out = np.zeros((self.n_slices, height, width), dtype=np.float16)  # the caches' type
        if rows:
            out[: len(rows)] = array[np.asarray(rows)]
        mask = torch.zeros(self.n_slices, dtype=torch.bool)
        mask[: len(rows)] = True
        return torch.from_numpy(out), mask

    def mri_rows(self, i: int, contrast: str) -> tuple[list[int], list[int]]:
        """Array rows and sagittal indices of the slices used for ``contrast``."""
        _, indices = self._cache(self.paths[i].mri[contrast])
        order = sorted(range(len(indices)), key=lambda k: indices[k])
        chosen = [order[k] for k in even_positions(len(order), self.n_slices)]
        return chosen, [indices[k] for k in chosen]

    def pet_item(self, i: int, slice_indices: Sequence[int] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """PET slices of sample ``i`` at ``slice_indices`` (default: its own MRI's)."""
        if slice_indices is None:
            slice_indices = self.mri_rows(i, self.contrasts[0])[1]
        path = self.paths[i].pet
        array, indices = self._cache(path)
        lookup = {idx: row for row, idx in enumerate(indices)}
        absent = [s for s in slice_indices if s not in lookup]
        if absent:
            raise InputDataError(f"{path}: no PET slice at sagittal indices {absent} "
                                 f"(has {indices[0]}…{indices[-1]})")
        pet, mask = self._padded(array, [lookup[s] for s in slice_indices])
        return pet / self.pet_scale, mask

    def __getitem__(self, i: int) -> dict[str, Any]:
        mri, mri_mask = {}, {}
        used: list[int] = []
        for k, contrast in enumerate(self.contrasts):
            rows, indices = self.mri_rows(i, contrast)
            mri[contrast], mri_mask[contrast] = self._padded(
                self._cache(self.paths[i].mri[contrast])[0], rows)
            if k == 0:
                used = indices
        item: dict[str, Any] = {"index": i, "label": float(self.labels[i]),
                                "centiloid": float(self.centiloids[i]),
                                "mri": mri, "mri_mask": mri_mask}
        if self.with_pet:
            item["pet"], item["pet_mask"] = self.pet_item(i, used)
        return item


def class_weights(labels: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Per-sample weight = 1 / (count of the sample's class): inverse class frequency."""
    y = np.asarray(labels, dtype=int)
    counts = np.bincount(y, minlength=2).astype(float)
    return torch.as_tensor(1.0 / counts[y], dtype=torch.double)


class WeightedEpochSampler(Sampler[int]):
    """WeightedRandomSampler (inverse class frequency) that also works under DDP.

    Each epoch draws ``num_samples`` indices with replacement from a generator
    seeded with ``(seed, epoch)`` — identical on every rank — and rank ``r``
    takes positions ``r, r + world, …``. The draw depends only on seed and
    epoch, so a resumed run sees the same batches.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, seed: int, rank: int = 0,
                 world: int = 1, num_samples: int | None = None) -> None:
        self.weights = class_weights(labels)
        self.seed, self.rank, self.world = int(seed), int(rank), int(world)
        total = num_samples if num_samples is not None else len(self.weights)
        self.total = int(np.ceil(total / self.world) * self.world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draw(self) -> torch.Tensor:
        """This epoch's indices for all ranks together."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.multinomial(self.weights, self.total, replacement=True, generator=gen)

    def __iter__(self) -> Iterator[int]:
        return iter(self.draw()[self.rank::self.world].tolist())

    def __len__(self) -> int:
        return self.total // self.world


def make_loader(dataset: SliceCacheDataset, batch_size: int, sampler: Sampler[int] | None = None,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Training loader (with ``sampler``) or in-order evaluation loader (without)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, drop_last=False)


def cache_config(cohort: pd.DataFrame, out: Path, contrasts: Sequence[str], cfg: AppConfig
                 ) -> AppConfig:
    """``cfg`` with the ``[preproc]`` of the slice caches of the cohort rows that can be used
    (:func:`check_caches`, :func:`cache_parameters`, :func:`with_cache_parameters`)."""
    usable, _ = check_caches(cohort, out, contrasts, with_pet=True)
    return with_cache_parameters(cfg, cache_parameters(usable, out, contrasts))
