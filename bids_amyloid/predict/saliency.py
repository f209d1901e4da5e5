"""Saliency of an MRI-only prediction: gradient and HiResCAM maps, in MNI space.

For each session and contrast, one backward pass of the student's logit gives

- **gradient saliency**: ``|∂ logit / ∂ intensity|`` of every pixel of the
  slices the model saw (the grey-level slice, before the 3-channel CLIP
  normalisation, so the three identical channels count once);
- **HiResCAM** (Draelos & Carin, 2020; `pytorch-grad-cam`_): the element-wise
  product of the activations and gradients of the last ViT block's
  ``norm1`` output, summed over channels, on the 14×14 patch grid (the ViT
  reshape transform drops the CLS token), then ReLU and bilinear upsampling.

Both are scaled per session by one factor (not per slice), so a slice the
model barely used stays faint. The slices are placed back on the template
grid (the sagittal plane at the slice's ``SliceIndices`` position; the
pad-to-square + resize of the slice extraction inverted), written as NIfTI
(float32, zero outside the slices the model saw), drawn as PNG overlays on
the MRI and gathered in one self-contained HTML page per subject.

The mapping between a 224×224 slice and its template plane is measured,
not assumed: coordinate volumes are run through the participant level's own
:func:`bids_amyloid.preproc.slices.extract_mri_slices` and an affine map is
fitted, so it follows whatever orientation, padding and resizing that code
uses.

.. _pytorch-grad-cam: https://github.com/jacobgil/pytorch-grad-cam
"""

from __future__ import annotations

import functools
import html
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import pandas as pd

from bids_amyloid.config import PreprocConfig, config_to_dict
from bids_amyloid.derivatives import PredictRun, session_label
from bids_amyloid.io import atomic_path, write_text
from bids_amyloid.pages import html_page, png_img
from bids_amyloid.predict.model import SEEN_SPLITS
from bids_amyloid.slice_selection import load_slices

if TYPE_CHECKING:
    from bids_amyloid.predict.model import PredictModel
    from bids_amyloid.predict.plan import SessionPlan

LOG = logging.getLogger(__name__)
METHODS = ("gradient", "hirescam")
N_FIGURE_SLICES = 5
DISPLAY_SIGMA_PX = 2.0  # figures only; the NIfTI maps are not smoothed
DISPLAY_FLOOR = 0.2  # overlay hidden below this fraction of the session's maximum


@dataclass
class ContrastSaliency:
    """Saliency of one contrast of one session, on the slices the model saw."""

    contrast: str
    image: np.ndarray  # (n, H, W) the MRI slices (cache values)
    indices: tuple[int, ...]  # their sagittal template indices
    maps: dict[str, np.ndarray]  # method → (n, H, W) in [0, 1]


# --------------------------------------------------------------------------- computing


def _target_layer(network: Any) -> Any:
    """The last ViT block's first LayerNorm: the usual HiResCAM/Grad-CAM layer for ViTs."""
    blocks = getattr(network.backbone.trunk, "blocks", None)
    if blocks is None or not hasattr(blocks[-1], "norm1"):
        raise ValueError("saliency needs a timm ViT backbone (blocks[-1].norm1)")
    return blocks[-1].norm1


def _reshape_transform(trunk: Any) -> Any:
    """pytorch-grad-cam's ViT reshape (tokens → channels × patch grid) for this trunk."""
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    prefix = int(getattr(trunk, "num_prefix_tokens", 1))
    if prefix != 1:
        raise ValueError(f"HiResCAM: ViT with {prefix} prefix tokens; only a single CLS token "
                         "is supported")
    height, width = trunk.patch_embed.grid_size
    return functools.partial(vit_reshape_transform, height=height, width=width)


def _upsample(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(cams, dtype=np.float32))[:, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def _scaled(values: dict[str, np.ndarray], quantile: float) -> dict[str, np.ndarray]:
    """Divide all contrasts' maps by one session-wide high quantile; clip to [0, 1]."""
    joint = np.concatenate([v.ravel() for v in values.values()])
    top = float(np.quantile(joint, quantile)) if joint.size else 0.0
    if top <= 0 or not np.isfinite(top):
        return {c: np.zeros_like(v, dtype=np.float32) for c, v in values.items()}
    return {c: np.clip(v / top, 0.0, 1.0).astype(np.float32) for c, v in values.items()}


def compute_saliency(plan: SessionPlan, model: PredictModel) -> dict[str, ContrastSaliency]:
    """Gradient and HiResCAM maps of every contrast of ``plan`` (one forward + backward)."""
    import torch
    from pytorch_grad_cam import HiResCAM

    from bids_amyloid.models import prepare_slices

    net, m = model.network.eval(), model.cfg.model
    n_slices = model.cfg.train.n_train_slices
    # in the network's contrast order: the ViT sees the real slices of each contrast in turn
    contrasts = [c for c in net.contrasts if c in plan.contrasts]
    items = {c: load_slices(plan.caches[c], n_slices) for c in contrasts}
    gray = {c: torch.tensor(items[c].slices, device=model.device, requires_grad=True)
            for c in contrasts}
    masks = {c: torch.from_numpy(items[c].mask)[None].to(model.device) for c in contrasts}
    cam = HiResCAM(model=net, target_layers=[_target_layer(net)],
                   reshape_transform=_reshape_transform(net.backbone.trunk))
    hooks = cam.activations_and_grads
    try:
        hooks.activations, hooks.gradients = [], []
        with torch.enable_grad():
            images = {c: prepare_slices(gray[c][None], mean=m.clip_mean, std=m.clip_std,
                                        size=m.image_size) for c in contrasts}
            logit = net(images, masks).logit.sum()
            logit.backward()
        acts = torch.cat(hooks.activations).numpy()
        grads = torch.cat(hooks.gradients).numpy()
        raw = cam.get_cam_image(None, None, None, acts, grads, False)  # (N_real, h, w)
    finally:
        hooks.release()
    size = tuple(items[contrasts[0]].slices.shape[1:])
    n_real = [int(items[c].mask.sum()) for c in contrasts]
    if raw.shape[0] != sum(n_real):
        raise RuntimeError(f"HiResCAM: {raw.shape[0]} activation rows for {sum(n_real)} slices")
    cams, grads_px, offset = {}, {}, 0
    for c, n in zip(contrasts, n_real, strict=True):
        cams[c] = _upsample(np.maximum(raw[offset:offset + n], 0.0), size)  # type: ignore[arg-type]
        grad = gray[c].grad
        grads_px[c] = np.abs(grad.detach().cpu().numpy()[:n]) if grad is not None else \
            np.zeros((n, *size), np.float32)
        offset += n
    scaled = {"gradient": _scaled(grads_px, 0.999), "hirescam": _scaled(cams, 1.0)}
    return {c: ContrastSaliency(c, items[c].slices[:n], items[c].indices,
                                {meth: scaled[meth][c] for meth in METHODS})
            for c, n in zip(contrasts, n_real, strict=True)}


# --------------------------------------------------------------------------- template grid


def _coordinate_volume(shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Voxel coordinate along ``axis`` (+1, /1000 so it stays inside [0, 1])."""
    ramp = (np.arange(shape[axis], dtype=np.float32) + 1.0) / 1000.0
    view = [1, 1, 1]
    view[axis] = shape[axis]
    return np.broadcast_to(ramp.reshape(view), shape).copy()


_GEOMETRY: dict[str, np.ndarray] = {}  # measured once per [preproc] configuration


def slice_geometry(preproc: PreprocConfig) -> np.ndarray:
    """3×3 affine: slice pixel ``(row, col, 1)`` → template plane voxel ``(j, k, 1)``.

    Measured by extracting slices of two coordinate volumes (the j and the k
    voxel coordinate as intensity) with the participant level's own slice
    code, then a least-squares fit on pixels away from padding and borders.
    """
    key = json.dumps(config_to_dict(preproc), sort_keys=True)
    if key not in _GEOMETRY:
        _GEOMETRY[key] = _measure_geometry(preproc)
    return _GEOMETRY[key]


def _measure_geometry(preproc: PreprocConfig) -> np.ndarray:
    from scipy import ndimage

    from bids_amyloid.preproc.slices import extract_mri_slices
    from bids_amyloid.preproc.template import load_template

    template = load_template(preproc)
    shape = template.shape[:3]

    def middle_slice(data: np.ndarray) -> np.ndarray:
        slices, _ = extract_mri_slices(nib.Nifti1Image(data, template.affine), preproc)
        return np.asarray(slices[len(slices) // 2], dtype=np.float64)

    j, k = (middle_slice(_coordinate_volume(shape, axis)) * 1000.0 - 1.0 for axis in (1, 2))
    # pixels not blended with padding or the border: a constant volume stays constant there
    flat = middle_slice(np.full(shape, 0.5, np.float32))
    inside = ndimage.binary_erosion(np.abs(flat - 0.5) < 1e-5, iterations=2)
    rows, cols = np.indices(j.shape)
    design = np.column_stack([rows[inside], cols[inside], np.ones(int(inside.sum()))])
    solution, *_ = np.linalg.lstsq(design, np.column_stack([j[inside], k[inside]]), rcond=None)
    geometry = np.vstack([solution.T, [0.0, 0.0, 1.0]])
    error = np.abs(design @ solution - np.column_stack([j[inside], k[inside]])).max()
    if error > 1.0:
        raise RuntimeError(f"slice extraction is not an affine map of the plane (fit error "
                           f"{error:.2f} voxels); saliency cannot be placed in template space")
    return geometry


def plane_from_slice(image: np.ndarray, geometry: np.ndarray,
                     plane_shape: tuple[int, int]) -> np.ndarray:
    """Resample a (H, W) slice onto its template plane (inverse of the slice extraction)."""
    from scipy import ndimage

    inverse = np.linalg.inv(geometry)
    jj, kk = np.indices(plane_shape, dtype=np.float64)
    pts = np.stack([jj.ravel(), kk.ravel(), np.ones(jj.size)])
    pixel = inverse @ pts
    values = ndimage.map_coordinates(np.asarray(image, np.float64), pixel[:2], order=1,
                                     mode="constant", cval=0.0)
    return values.reshape(plane_shape).astype(np.float32)


def to_template(maps: np.ndarray, indices: tuple[int, ...], preproc: PreprocConfig
                ) -> nib.Nifti1Image:
    """Slices ``(n, H, W)`` at sagittal ``indices`` → a float32 volume on the template grid."""
    from bids_amyloid.preproc.template import load_template

    template = load_template(preproc)
    shape = template.shape[:3]
    geometry = slice_geometry(preproc)
    volume = np.zeros(shape, dtype=np.float32)
    for plane, index in zip(maps, indices, strict=True):
        volume[index] = plane_from_slice(plane, geometry, (shape[1], shape[2]))
    img = nib.Nifti1Image(volume, template.affine)
    img.header.set_xyzt_units("mm")
    return img


# --------------------------------------------------------------------------- figures and pages


def overlay_png(sal: ContrastSaliency, preproc: PreprocConfig, title: str) -> bytes:
    """PNG: a few of the model's slices (rows: MRI, gradient, HiResCAM), superior up.

    Each slice is shown on its template plane (anterior right, superior up);
    the gradient map is smoothed for display.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    from bids_amyloid.preproc.template import load_template

    shape = load_template(preproc).shape
    geometry = slice_geometry(preproc)
    n = len(sal.indices)
    picks = sorted(set(np.linspace(0, n - 1, min(N_FIGURE_SLICES, n)).round().astype(int).tolist()))
    # pixel-wise gradients are speckled: smoothed for display, rescaled jointly over the
    # shown slices so their relative strength stays visible
    smooth = np.stack([ndimage.gaussian_filter(sal.maps["gradient"][row], DISPLAY_SIGMA_PX)
                       for row in picks])
    shown = {"gradient": dict(zip(picks, smooth / max(float(smooth.max()), 1e-12), strict=True)),
             "hirescam": {row: sal.maps["hirescam"][row] for row in picks}}
    fig, axes = plt.subplots(3, len(picks), figsize=(2.2 * len(picks), 6.6), squeeze=False)
    for col, row in enumerate(picks):
        mri = plane_from_slice(sal.image[row], geometry, (shape[1], shape[2]))
        for r, name in enumerate(("MRI", *METHODS)):
            ax = axes[r][col]
            ax.imshow(mri.T, cmap="gray", origin="lower", vmin=0, vmax=1)
            if name != "MRI":
                sal_plane = plane_from_slice(shown[name][row], geometry, (shape[1], shape[2]))
                ax.imshow(np.ma.masked_less(sal_plane.T, DISPLAY_FLOOR), cmap="hot",
                          origin="lower", vmin=0, vmax=1, alpha=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"x index {sal.indices[row]}", fontsize=8)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def _save(img: nib.Nifti1Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


PAGE_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
              "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
              "img{max-width:100%}.warn{color:#a00}")


PAGE_COLUMNS = ("session_id", "contrasts_used", "probability", "probability_calibrated",
                "positive_at_0.5", "positive_at_tau", "positive_at_rule_out",
                "positive_at_rule_in", "cohort_split", "note")


def subject_page(sub: str, rows: pd.DataFrame, sections: list[tuple[str, str, bytes, list[str]]],
                 model: PredictModel) -> str:
    """Self-contained HTML: the subject's predictions, reliability flags, the model's
    operating points and each session's saliency figures."""
    from bids_amyloid.predict.tables import model_operating_table, rates_source

    esc = html.escape
    shown = rows[[c for c in PAGE_COLUMNS if c in rows]]
    parts = [f"<h1>sub-{esc(sub)} — amyloid prediction from MRI</h1>",
             f"<p>Model <code>{esc(model.name)}</code> (SHA-256 {esc(model.sha256[:16])}…, "
             f"backbone {esc(model.network.backbone.info.name)}), τ = {model.tau:.3f}. "
             "<code>probability_calibrated</code> is the model's probability mapped so that it "
             "matches the observed frequency on the model's validation set; each "
             "<code>positive_at_*</code> is the decision at one operating point (table below). "
             "Saliency shows which pixels of the slices the model saw moved its logit "
             "(gradient) and which image regions its last ViT block used (HiResCAM); both "
             "scaled per session. They explain the model, not the biology.</p>",
             shown.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0,
                           na_rep="n/a")]
    for row in rows.itertuples(index=False):
        if str(row.reliability).startswith("flagged"):
            parts.append(f"<p class='warn'><b>{esc(row.session_id)}: unreliable</b> — "
                         f"{esc(str(row.reliability).removeprefix('flagged: '))}. The session "
                         "is unlike the model's training cohort: the prediction is written but "
                         "should not be trusted without review.</p>")
        elif str(row.reliability) != "ok":
            parts.append(f"<p>{esc(row.session_id)}: reliability {esc(str(row.reliability))}</p>")
    if rows["cohort_split"].isin(SEEN_SPLITS).any():
        parts.append("<p class='warn'>This subject was a train or val subject of the model: "
                     "its predictions are optimistic.</p>")
    parts.append("<h2>Operating points of the model</h2><p>Positive if the probability is "
                 "above the threshold. Rule-out: a session below it would skip amyloid PET "
                 "(chosen for high sensitivity); rule-in: above it, positive with high "
                 f"specificity. Thresholds on <code>probability</code>; "
                 f"{esc(rates_source(model))}.</p>"
                 + model_operating_table(model).to_html(
                     index=False, float_format=lambda v: f"{v:.3f}", border=0, na_rep="n/a"))
    for ses_label, contrast, png, files in sections:
        links = ", ".join(f"<code>{esc(f)}</code>" for f in files)
        parts.append(f"<h2>{esc(ses_label)} — {esc(contrast)}</h2>"
                     f"{png_img(png, f'saliency {ses_label} {contrast}')}<p>Maps: {links}</p>")
    return html_page(f"sub-{sub} saliency", "\n".join(parts), PAGE_STYLE)


def write_saliency(plans: list[SessionPlan], model: PredictModel, predictions: pd.DataFrame,
                   files: PredictRun) -> list[Path]:
    """Maps (NIfTI), overlays and one HTML page per subject in the predict folder; returns the
    pages (:func:`write_pages`)."""
    preproc = model.cfg.preproc
    by_subject: dict[str, list[tuple[str, str, bytes, list[str]]]] = {}
    for plan in plans:
        sub, ses = plan.key
        prob = predictions.loc[(predictions["participant_id"] == f"sub-{sub}")
                               & (predictions["session_id"] == session_label(ses)), "probability"]
        for contrast, sal in compute_saliency(plan, model).items():
            names = []
            for method in METHODS:
                path = files.saliency_map(sub, ses, contrast, method)
                _save(to_template(sal.maps[method], sal.indices, preproc), path)
                names.append(str(path.relative_to(files.folder)))
            title = (f"sub-{sub} {session_label(ses)} {contrast}: p = {float(prob.iloc[0]):.3f}"
                     if len(prob) else f"sub-{sub} {session_label(ses)} {contrast}")
            by_subject.setdefault(sub, []).append(
                (session_label(ses), contrast, overlay_png(sal, preproc, title), names))
        LOG.info("saliency maps of sub-%s %s written", sub, session_label(ses))
    return write_pages(predictions, model, files, by_subject)


def write_pages(predictions: pd.DataFrame, model: PredictModel, files: PredictRun,
                sections: dict[str, list[tuple[str, str, bytes, list[str]]]] | None = None
                ) -> list[Path]:
    """One HTML page per predicted subject (:func:`subject_page`), with its saliency
    ``sections`` where computed; returns the pages."""
    pages = []
    for pid in sorted(set(predictions["participant_id"])):
        sub = str(pid).removeprefix("sub-")
        rows = predictions[predictions["participant_id"] == pid]
        pages.append(write_text(files.page(sub),
                                subject_page(sub, rows, (sections or {}).get(sub, []), model)))
    return pages
