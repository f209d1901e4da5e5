"""Which slices of a slice cache a network sees, and how they are read for inference.

Training (:mod:`bids_amyloid.train.data`) and inference
(:mod:`bids_amyloid.predict`) take the same ``n_slices`` evenly spaced slices
of an MRI cache, in numeric order of their sagittal index, zero padded and
masked when the cache holds fewer.

Example
-------
>>> even_positions(10, 4)
[0, 3, 6, 9]
>>> even_positions(3, 5)
[0, 1, 2]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_amyloid import derivatives as drv
from bids_amyloid.errors import InputDataError


def even_positions(n_available: int, n_wanted: int) -> list[int]:
    """``n_wanted`` evenly spaced positions in ``range(n_available)`` (all if fewer)."""
    if n_available <= n_wanted:
        return list(range(n_available))
    return sorted({int(k) for k in np.rint(np.linspace(0, n_available - 1, n_wanted))})


@dataclass(frozen=True)
class SliceInput:
    """The slices of one contrast of one session, as the model sees them."""

    slices: np.ndarray  # float32 (n_slices, H, W), zero padded
    mask: np.ndarray  # bool (n_slices,)
    indices: tuple[int, ...]  # sagittal template indices of the real rows, in order


def load_slices(cache: Path, n_slices: int) -> SliceInput:
    """The ``n_slices`` evenly spaced slices of a cache, in numeric order, zero padded."""
    try:
        array, indices, _ = drv.read_slice_cache(cache)
    except (OSError, ValueError, KeyError) as err:
        raise InputDataError(f"{cache}: cannot read slice cache ({err})") from err
    if array.ndim != 3 or array.shape[0] != len(indices) or not indices:
        raise InputDataError(f"{cache}: array {array.shape} does not match "
                             f"{len(indices)} SliceIndices")
    order = sorted(range(len(indices)), key=lambda k: indices[k])
    rows = [order[k] for k in even_positions(len(order), n_slices)]
    out = np.zeros((n_slices, *array.shape[1:]), dtype=np.float32)
    out[: len(rows)] = np.asarray(array[np.asarray(rows)], dtype=np.float32)
    mask = np.zeros(n_slices, dtype=bool)
    mask[: len(rows)] = True
    return SliceInput(out, mask, tuple(int(indices[r]) for r in rows))
