"""Fast sanity checks of input images, run before any heavy work.

Each check raises :class:`~bids_amyloid.errors.InputDataError` with a message
that names the file and says what is wrong, so one bad file fails its own
session with a clear reason instead of a traceback from deep inside ANTs.

What is caught: a missing or zero-byte file, a truncated ``.nii.gz`` (the
whole gzip stream is read, so a cut-off tail is found too), a file that is
not NIfTI at all (e.g. an HTML error page saved under a NIfTI name), an
image whose data is all zero, all NaN or constant, a 4D anatomical image
(PET may be 3D or 4D), and absurd voxel sizes or dimensions.

Example
-------
>>> import tempfile, pathlib
>>> bad = pathlib.Path(tempfile.mkdtemp()) / "sub-01_T1w.nii.gz"
>>> _ = bad.write_text("<!DOCTYPE html><html>404</html>")
>>> try:
...     check_image(bad, "T1w")
... except InputDataError as err:
...     print(str(err).split(": ", 1)[1])
is an HTML page, not a NIfTI image (a failed download?)
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_amyloid.errors import InputDataError

LOG = logging.getLogger(__name__)

MIN_VOXEL_MM = 0.1
MAX_VOXEL_MM = 10.0
MIN_DIM = 8  # voxels along each spatial axis
MAX_DIM = 2048
MAX_FRAMES = 2000  # PET time frames
GZIP_MAGIC = b"\x1f\x8b"
NIFTI_HEADER_SIZES = (348, 540)  # NIfTI-1 and NIfTI-2 ``sizeof_hdr``
_CHUNK = 1 << 22


def check_image(path: Path, kind: str) -> None:
    """Check one input image; ``kind`` is a contrast (``"T1w"`` …) or ``"pet"``.

    Anatomical images must be 3D (a trailing singleton 4th axis is accepted);
    PET may be 3D or 4D (dynamic frames).

    Raises
    ------
    InputDataError
        ``"<path>: <what is wrong>"``.
    """
    path = Path(path)
    _check_file(path)
    img = _load_header(path)
    _check_shape(path, img.shape, kind)
    _check_geometry(path, img)
    _check_data(path, img)


def check_session_inputs(images: dict[str, Path], pets: list[Path] | tuple[Path, ...] = ()) -> None:
    """Check every MRI contrast of a session, then each PET file."""
    for contrast, path in images.items():
        check_image(path, contrast)
    for path in pets:
        check_image(path, "pet")


def _fail(path: Path, problem: str) -> InputDataError:
    return InputDataError(f"{path}: {problem}")


def _check_file(path: Path) -> None:
    """Existence, size, and that the bytes look like (gzipped) NIfTI; gzip read to the end."""
    if not path.is_file():
        raise _fail(path, "file does not exist")
    if path.stat().st_size == 0:
        raise _fail(path, "file is empty (0 bytes)")
    with open(path, "rb") as fh:
        head = fh.read(512)
    if _looks_like_markup(head):
        raise _fail(path, "is an HTML page, not a NIfTI image (a failed download?)")
    if path.name.endswith(".gz"):
        if not head.startswith(GZIP_MAGIC):
            raise _fail(path, "is not gzip-compressed although its name ends in .gz")
        head = _read_whole_gzip(path)
        if _looks_like_markup(head):
            raise _fail(path, "holds a compressed HTML page, not a NIfTI image")
    if len(head) < 4 or not _has_nifti_header(head):
        raise _fail(path, "is not a NIfTI image (no NIfTI-1/2 header)")


def _looks_like_markup(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body"))


def _has_nifti_header(head: bytes) -> bool:
    little = int.from_bytes(head[:4], "little")
    big = int.from_bytes(head[:4], "big")
    return little in NIFTI_HEADER_SIZES or big in NIFTI_HEADER_SIZES


def _read_whole_gzip(path: Path) -> bytes:
    """Decompress the whole stream (finds truncation and CRC errors); return its first bytes."""
    first = b""
    try:
        with gzip.open(path, "rb") as fh:
            first = fh.read(512)
            while fh.read(_CHUNK):
                pass
    except EOFError as err:
        raise _fail(path, f"truncated gzip file (the download or copy was cut off: {err})") from err
    except (OSError, zlib.error) as err:
        raise _fail(path, f"corrupt gzip data ({err})") from err
    return first


def _load_header(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(path)
    except (nib.filebasedimages.ImageFileError, OSError, ValueError, EOFError) as err:
        raise _fail(path, f"cannot be read as NIfTI ({err})") from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise _fail(path, f"is a {type(img).__name__}, expected NIfTI")
    return img


def _check_shape(path: Path, shape: tuple[int, ...], kind: str) -> None:
    if len(shape) < 3:
        raise _fail(path, f"has {len(shape)} dimensions {shape}; expected a 3D volume")
    extra = shape[3:]
    if kind == "pet":
        if len(shape) > 4:
            raise _fail(path, f"PET has {len(shape)} dimensions {shape}; expected 3D or 4D")
        if extra and not 1 <= extra[0] <= MAX_FRAMES:
            raise _fail(path, f"PET has {extra[0]} frames; expected 1–{MAX_FRAMES}")
    elif any(n != 1 for n in extra):
        raise _fail(path, f"{kind} image is {len(shape)}D with shape {shape}; "
                          "expected a single 3D volume")
    spatial = shape[:3]
    if any(not MIN_DIM <= n <= MAX_DIM for n in spatial):
        raise _fail(path, f"absurd dimensions {spatial} voxels; each axis must have "
                          f"{MIN_DIM}–{MAX_DIM} voxels")


def _check_geometry(path: Path, img: nib.Nifti1Image) -> None:
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)):
        raise _fail(path, "the voxel-to-world affine is missing or not finite")
    linear = affine[:3, :3]
    if abs(np.linalg.det(linear)) < 1e-12:
        raise _fail(path, "the voxel-to-world affine is singular")
    sizes = np.linalg.norm(linear, axis=0)
    if np.any(sizes < MIN_VOXEL_MM) or np.any(sizes > MAX_VOXEL_MM):
        shown = " × ".join(f"{s:.4g}" for s in sizes)
        raise _fail(path, f"absurd voxel size {shown} mm; expected {MIN_VOXEL_MM}–"
                          f"{MAX_VOXEL_MM} mm (wrong units in the header?)")


def _check_data(path: Path, img: nib.Nifti1Image) -> None:
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (OSError, ValueError, EOFError, zlib.error) as err:
        raise _fail(path, f"image data cannot be read (truncated file?): {err}") from err
    finite = np.isfinite(data)
    if not finite.any():
        raise _fail(path, "every voxel is NaN or infinite")
    values = data[finite]
    low, high = float(values.min()), float(values.max())
    if low == high == 0.0:
        raise _fail(path, "every voxel is zero (empty image)")
    if low == high:
        raise _fail(path, f"every voxel has the same value {low:g} (constant image)")
    bad = data.size - int(finite.sum())
    if bad:
        LOG.warning("%s: %d of %d voxels are NaN or infinite", path, bad, data.size)
