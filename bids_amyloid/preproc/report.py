"""Per-subject QC report: one self-contained HTML page, figures inlined as PNG.

Each session contributes figures drawn while it ran (the native images live
only in the work dir) plus a small QC JSON with its numbers; both are kept
under ``OUT/sub-XX/figures/`` so the page can be rebuilt from any subset of
re-run sessions. The page puts a one-line-per-session summary table on top
(status, mask volume, registration similarity, SUVR reference mean) with
anything suspicious in red, then per session:

- the brain-mask outline (red) on the N4-corrected native image, 3 orthogonal
  views at 3 positions: a strip that took skull or lost brain is obvious;
- the registered MRI with the template's edges (cyan): misregistration shows
  as edges that do not follow the anatomy;
- the SUVR over the registered MRI, on one fixed colour scale for everybody.

Figures are assembled as RGB arrays (outlines are mask edges, no plotting
axes) and saved with matplotlib's PNG writer: fast, no pyplot state, no display.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bids_amyloid import __version__
from bids_amyloid.derivatives import report_path
from bids_amyloid.io import write_text
from bids_amyloid.pages import html_page

LOG = logging.getLogger(__name__)

MASK_VOLUME_ML = (800.0, 2200.0)  # adult brain masks outside this range are flagged
TEMPLATE_DICE_MIN = 0.75  # brain mask vs template brain; ~0.85–0.9 after a good strip
# correlation of the registered image with the template (MRI), of PET with its MRI (PET)
SIMILARITY_KEYS = ("template_correlation", "registration_correlation", "registration_similarity")
SUVR_RANGE = (0.5, 2.5)  # one colour scale for every PET so uptake compares across pages
QC_SUFFIX = "_qc.json"
_VIEWS = ("sagittal", "coronal", "axial")
_OFFSETS = (-0.2, 0.0, 0.2)  # positions as fractions of the object's extent around its centre
PANEL_PX = 220  # the field of view's longest side, in display pixels


@dataclass(frozen=True)
class Failure:
    """A session or scan that failed in this run, shown in red on the page."""

    unit: str  # e.g. "ses-01" or "ses-02 trc-AV45"
    reason: str
    log: str  # path of its log, relative to OUT


# --------------------------------------------------------------------------- figures


def _canonical(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Data in RAS+ voxel order (closest canonical) and its voxel sizes."""
    canon = nib.as_closest_canonical(img)
    data = np.asarray(canon.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data.mean(axis=3)
    return np.nan_to_num(data), np.asarray(canon.header.get_zooms()[:3], dtype=float)


def _positions(weights: np.ndarray) -> list[tuple[int, int, int]]:
    """Three (x, y, z) voxel positions around the centre of ``weights``' support."""
    support = np.argwhere(weights > 0)
    if support.size == 0:
        support = np.argwhere(np.ones_like(weights, dtype=bool))
    low, high = support.min(axis=0), support.max(axis=0)
    centre = support.mean(axis=0)
    out = []
    for frac in _OFFSETS:
        pos = np.clip(np.round(centre + frac * (high - low)), 0, np.array(weights.shape) - 1)
        out.append((int(pos[0]), int(pos[1]), int(pos[2])))
    return out


_AXES = {"sagittal": (1, 2), "coronal": (0, 2), "axial": (0, 1)}  # (horizontal, vertical) axes


def _cut(volume: np.ndarray, view: str, pos: tuple[int, int, int]) -> np.ndarray:
    """A 2D slice as an image array: rows top → bottom = superior/anterior → inferior/posterior."""
    if view == "sagittal":
        cut = volume[pos[0], :, :]
    elif view == "coronal":
        cut = volume[:, pos[1], :]
    else:
        cut = volume[:, :, pos[2]]
    return np.flipud(cut.T)


class _Panels:
    """Cuts of several co-registered volumes, resampled to square display pixels."""

    def __init__(self, zooms: np.ndarray, shape: tuple[int, ...]) -> None:
        self.zooms = zooms
        fov = float(np.max(np.asarray(shape[:3]) * zooms))
        self.mm = fov / PANEL_PX  # mm per display pixel

    def cut(self, volume: np.ndarray, view: str, pos: tuple[int, int, int],
            order: int = 1) -> np.ndarray:
        from scipy.ndimage import zoom

        horizontal, vertical = _AXES[view]
        factors = (self.zooms[vertical] / self.mm, self.zooms[horizontal] / self.mm)
        return zoom(_cut(volume, view, pos), factors, order=order, prefilter=False)


def _window(volume: np.ndarray) -> tuple[float, float]:
    values = volume[volume > 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, (1.0, 99.5))
    return float(low), float(max(high, low + 1e-6))


def _edge(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask)


Painter = Callable[[np.ndarray, _Panels, str, tuple[int, int, int]], None]


def _mosaic(background: np.ndarray, zooms: np.ndarray, centre_on: np.ndarray, title: str,
            paint: Painter) -> bytes:
    """PNG of 3 views (rows) × 3 positions (columns); ``paint`` draws overlays in RGB."""
    panels = _Panels(zooms, background.shape)
    vmin, vmax = _window(background)
    positions = _positions(centre_on)
    rows = []
    for view in _VIEWS:
        tiles = []
        for pos in positions:
            gray = np.clip((panels.cut(background, view, pos) - vmin) / (vmax - vmin), 0, 1)
            rgb = np.repeat(gray[..., None], 3, axis=2)
            paint(rgb, panels, view, pos)
            tiles.append(np.pad(rgb, ((2, 2), (2, 2), (0, 0))))
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), ((width - r.shape[1]) // 2, (width - r.shape[1] + 1) // 2),
                       (0, 0))) for r in rows]
    return _png(np.concatenate(rows, axis=0), title)


def _png(rgb: np.ndarray, title: str) -> bytes:
    from matplotlib.image import imsave

    buf = io.BytesIO()
    imsave(buf, np.clip(rgb, 0, 1), format="png", metadata={"Title": title})
    return buf.getvalue()


def skullstrip_figure(image: nib.Nifti1Image, mask: nib.Nifti1Image, title: str) -> bytes:
    """PNG: the brain-mask outline in red on the native (N4-corrected) image."""
    data, zooms = _canonical(image)
    mask_data, _ = _canonical(mask)
    if mask_data.shape != data.shape:
        raise ValueError(f"mask {mask_data.shape} and image {data.shape} grids differ")
    binary = mask_data > 0.5

    def paint(rgb: np.ndarray, panels: _Panels, view: str, pos: tuple[int, int, int]) -> None:
        rgb[_edge(panels.cut(binary, view, pos, order=0))] = (1.0, 0.0, 0.0)

    return _mosaic(data, zooms, binary if binary.any() else data, title, paint)


def registration_figure(image: nib.Nifti1Image, template: nib.Nifti1Image, title: str) -> bytes:
    """PNG: the registered image with the template's edges (cyan) on top."""
    data, zooms = _canonical(image)
    tpl, _ = _canonical(template)
    if tpl.shape != data.shape:
        raise ValueError(f"template {tpl.shape} and image {data.shape} grids differ")
    inside = tpl[tpl > 0]
    # the template's outline and its white-matter boundary
    levels = [0.05 * float(inside.max()), float(np.percentile(inside, 60))] if inside.size else [0.5]

    def paint(rgb: np.ndarray, panels: _Panels, view: str, pos: tuple[int, int, int]) -> None:
        cut = panels.cut(tpl, view, pos)
        for level in levels:
            rgb[_edge(cut > level)] = (0.0, 1.0, 1.0)

    return _mosaic(data, zooms, tpl, title, paint)


def pet_figure(suvr: nib.Nifti1Image, mri: nib.Nifti1Image, title: str) -> bytes:
    """PNG: SUVR (hot colours, fixed scale :data:`SUVR_RANGE`) over the registered MRI."""
    from matplotlib import colormaps

    data, zooms = _canonical(mri)
    pet, _ = _canonical(suvr)
    if pet.shape != data.shape:
        raise ValueError(f"SUVR {pet.shape} and MRI {data.shape} grids differ")
    low, high = SUVR_RANGE
    hot = colormaps["hot"]

    def paint(rgb: np.ndarray, panels: _Panels, view: str, pos: tuple[int, int, int]) -> None:
        cut = panels.cut(pet, view, pos)
        colour = hot(np.clip((cut - low) / (high - low), 0, 1))[..., :3]
        alpha = np.where(cut >= low * 0.5, 0.6, 0.0)[..., None]
        rgb[:] = (1 - alpha) * rgb + alpha * colour

    return _mosaic(data, zooms, data, title, paint)


# --------------------------------------------------------------------------- numbers


def flag_metrics(metrics: dict[str, float]) -> list[str]:
    """Human-readable warnings for numbers outside their usual range."""
    flags = []
    volume = metrics.get("mask_volume_ml")
    if volume is not None and not MASK_VOLUME_ML[0] <= volume <= MASK_VOLUME_ML[1]:
        flags.append(f"brain mask {volume:.0f} ml is outside {MASK_VOLUME_ML[0]:.0f}–"
                     f"{MASK_VOLUME_ML[1]:.0f} ml: check the skull strip")
    dice = metrics.get("template_mask_dice")
    if dice is not None and dice < TEMPLATE_DICE_MIN:
        flags.append(f"brain mask overlaps the template's brain poorly (Dice {dice:.2f} < "
                     f"{TEMPLATE_DICE_MIN}): check the skull strip and the registration")
    for key, value in metrics.items():
        if isinstance(value, float) and not np.isfinite(value):
            flags.append(f"{key} is {value}")
    return flags


def read_qc(folder: Path) -> list[dict[str, Any]]:
    """All QC JSONs of a subject, sorted by session then kind."""
    records = []
    for path in sorted(folder.glob(f"*{QC_SUFFIX}")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            LOG.warning("skipping unreadable QC file %s: %s", path, err)
            continue
        record["_folder"] = str(path.parent)
        records.append(record)
    return sorted(records, key=lambda r: (r.get("Session", ""), r.get("Kind", ""), r.get("Title", "")))


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{margin-bottom:0.2em} h2{border-bottom:1px solid #ccc;padding-top:0.6em}
table{border-collapse:collapse;margin:0.5em 0} td,th{border:1px solid #ccc;padding:2px 8px;
text-align:right} th{background:#eee} td.l,th.l{text-align:left}
.bad{background:#fdd;color:#900;font-weight:bold} .ok{color:#070}
.fail{border:3px solid #c00;background:#fee;padding:0.6em;margin:0.6em 0}
.flag{color:#c00;font-weight:bold} figure{display:inline-block;margin:0.3em}
figcaption{font-size:small;color:#444} img{max-width:100%}
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _summary_rows(records: list[dict[str, Any]], failures: list[Failure]) -> list[str]:
    rows = []
    for rec in records:
        numbers = rec.get("Numbers", {})
        for label, metrics in numbers.items():
            flags = rec.get("Flags", {}).get(label, [])
            status = f'<td class="bad l">CHECK: {_fmt("; ".join(flags))}</td>' if flags else \
                '<td class="ok l">ok</td>'
            rows.append(
                f'<tr><td class="l">{_fmt(rec.get("Unit", ""))}</td><td class="l">{_fmt(label)}</td>'
                f"<td>{_fmt(metrics.get('mask_volume_ml', ''))}</td>"
                f"<td>{_fmt(metrics.get('template_mask_dice', ''))}</td>"
                f"<td>{_fmt(_similarity(metrics))}</td>"
                f"<td>{_fmt(metrics.get('reference_mean', ''))}</td>{status}</tr>")
    for fail in failures:
        rows.append(f'<tr class="bad"><td class="l">{_fmt(fail.unit)}</td><td class="l">—</td>'
                    f'<td></td><td></td><td></td><td></td>'
                    f'<td class="l">FAILED: {_fmt(fail.reason)}</td></tr>')
    return rows


def _similarity(metrics: dict[str, Any]) -> Any:
    """The registration-quality number shown in the summary (first known key present)."""
    for key in SIMILARITY_KEYS:
        if key in metrics:
            return metrics[key]
    return next((v for k, v in metrics.items() if "similarity" in k or "correlation" in k), "")


def _section(rec: dict[str, Any]) -> str:
    parts = [f"<h2>{_fmt(rec.get('Title', rec.get('Unit', '')))}</h2>"]
    for label, flags in rec.get("Flags", {}).items():
        parts.extend(f'<p class="flag">{_fmt(label)}: {_fmt(flag)}</p>' for flag in flags)
    parts.extend(f"<p>{_fmt(note)}</p>" for note in rec.get("Notes", []))
    for label, metrics in rec.get("Numbers", {}).items():
        cells = "".join(f"<th>{_fmt(k)}</th>" for k in metrics)
        values = "".join(f"<td>{_fmt(v)}</td>" for v in metrics.values())
        parts.append(f'<table><tr><th class="l">{_fmt(label)}</th>{cells}</tr>'
                     f'<tr><td class="l"></td>{values}</tr></table>')
    folder = Path(rec["_folder"])
    for fig in rec.get("Figures", []):
        path = folder / fig["file"]
        if not path.is_file():
            parts.append(f'<p class="flag">missing figure {_fmt(fig["file"])}</p>')
            continue
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{_fmt(fig["caption"])}" src="data:image/png;base64,'
                     f'{data}"><figcaption>{_fmt(fig["caption"])}</figcaption></figure>')
    return "\n".join(parts)


def build_report(sub: str, records: list[dict[str, Any]], failures: Iterable[Failure]) -> str:
    """The HTML text of one subject's page (no external resources)."""
    failures = list(failures)
    head = ('<tr><th class="l">session / scan</th><th class="l">image</th><th>mask volume (ml)</th>'
            '<th>mask Dice vs template</th><th>registration r (MRI: vs template; PET: vs MRI)</th><th>SUVR reference mean</th><th class="l">status</th></tr>')
    body = [f"<h1>sub-{_fmt(sub)}</h1>",
            f"<p>bids-amyloid {__version__} participant-level QC. Red outline: brain mask on the "
            "native image. Cyan: template edges on the registered image. PET: SUVR over the "
            "registered MRI.</p>",
            "<table>" + head + "".join(_summary_rows(records, failures)) + "</table>"]
    for fail in failures:
        body.append(f'<div class="fail"><b>{_fmt(fail.unit)} FAILED</b>: {_fmt(fail.reason)}'
                    f"<br>log: {_fmt(fail.log)}</div>")
    body.extend(_section(rec) for rec in records)
    return html_page(f"sub-{sub} QC", "\n".join(body), _CSS)


def write_subject_report(out: Path, sub: str, failures: Iterable[Failure] = ()) -> Path:
    """Rebuild ``OUT/sub-<sub>.html`` from the subject's QC files and this run's failures."""
    records = read_qc(Path(out) / f"sub-{sub}" / "figures")
    path = report_path(out, sub)
    write_text(path, build_report(sub, records, failures))
    return path
