"""HD-BET's lean forward pass (preproc/hdbet_net.py): slab-wise pieces against torch's own.

The slab size follows ``SLAB_BYTES``; the tests shrink it so that volumes of a
few dozen planes are cut into many slabs (first, interior and last ones).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bids_amyloid.preproc import hdbet_net, skullstrip  # noqa: E402

CL = torch.channels_last_3d


def _volume(channels: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, channels, *shape, generator=gen).contiguous(memory_format=CL)


@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (3, 2), (1, 1)])
def test_conv_into_equals_the_whole_volume_convolution(monkeypatch, kernel: int,
                                                       stride: int) -> None:
    conv = torch.nn.Conv3d(4, 6, kernel, stride, kernel // 2)
    x = _volume(4, (20, 6, 8))
    with torch.inference_mode():
        expected = conv(x)
        out = torch.empty_like(expected, memory_format=CL)
        plane = 6 * out.shape[3] * out.shape[4] * 4
        monkeypatch.setattr(hdbet_net, "SLAB_BYTES", (3 + 2) * plane)  # 3-plane slabs
        assert len(hdbet_net._slabs(out.shape[2], 6, out)) >= 3
        hdbet_net.conv_into(conv, hdbet_net._planes(x), x.shape[2], out)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_conv_into_in_place_over_a_channel_slice(monkeypatch) -> None:
    """Output written over its own input, one slab late: here the second half of a buffer."""
    monkeypatch.setattr(hdbet_net, "SLAB_BYTES", (4 + 2) * 6 * 6 * 8 * 4)  # 4-plane slabs
    conv = torch.nn.Conv3d(6, 6, 3, 1, 1)
    buf = _volume(12, (17, 6, 8), 1)
    with torch.inference_mode():
        expected = conv(buf[:, 6:].contiguous())
        first = buf[:, :6].clone()
        hdbet_net.conv_into(conv, hdbet_net._planes(buf[:, 6:]), 17, buf[:, 6:])
    torch.testing.assert_close(buf[:, 6:], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(buf[:, :6], first)  # the other half untouched


def test_conv_into_refuses_a_kernel_it_cannot_slice() -> None:
    with pytest.raises(ValueError, match="cubic kernel"):
        hdbet_net.conv_into(torch.nn.Conv3d(2, 2, 3, 1, 0), lambda a, b: None, 8,
                            torch.empty(1, 2, 6, 4, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_upsampled_planes_equal_torch_trilinear_upsampling(dtype: torch.dtype) -> None:
    x = _volume(5, (11, 7, 6), 3).to(dtype)
    expected = torch.nn.functional.interpolate(x, scale_factor=2, mode="trilinear",
                                               align_corners=True)
    planes = hdbet_net._upsampled_planes(x)
    got = torch.cat([planes(a, min(a + 5, 22)).clone() for a in range(0, 22, 5)], 2)  # reused
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    else:  # rounded to bfloat16 twice instead of once: within its resolution at x's magnitude
        resolution = 2.0 ** -7 * float(x.abs().max())
        torch.testing.assert_close(got.float(), expected.float(), atol=resolution, rtol=0.0)


def _package_probability(net, x: torch.Tensor) -> torch.Tensor:
    """HD-BET's own ``Network.forward`` (deep supervision off): brain probability."""
    return net(x.contiguous())[0, 1]


def _head(shape: tuple[int, int, int]) -> np.ndarray:
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    c = [n / 2 for n in shape]
    head = (((z - c[0]) / (0.42 * shape[0])) ** 2 + ((y - c[1]) / (0.42 * shape[1])) ** 2
            + ((x - c[2]) / (0.4 * shape[2])) ** 2) < 1
    core = (((z - c[0]) / (0.3 * shape[0])) ** 2 + ((y - c[1]) / (0.3 * shape[1])) ** 2
            + ((x - c[2]) / (0.27 * shape[2])) ** 2) < 1
    vol = 2.0 * head - 0.8 * core + np.random.default_rng(0).normal(0, 0.1, shape)
    return ((vol - vol.mean()) / vol.std()).astype(np.float32)


def test_lean_forward_in_many_slabs_equals_the_packages_forward(monkeypatch) -> None:
    """float32; the slab-wise convolutions and norms cut into first, interior and last slabs."""
    net, params = skullstrip._hdbet_networks("fast", "cpu")
    hdbet_net.set_conv_dtype(net, torch.float32)
    net.load_state_dict(params[0])
    monkeypatch.setattr(hdbet_net, "SLAB_BYTES", (4 + 2) * 42 * 48 * 48 * 4)  # 4-plane slabs
    inp = torch.from_numpy(_head((48, 48, 48)))[None, None].contiguous(memory_format=CL)
    with torch.inference_mode():
        theirs = _package_probability(net, inp).numpy()
        ours = hdbet_net.forward(net, inp).numpy()
    assert 0.05 < (theirs > 0.5).mean() < 0.95  # a non-trivial output to compare
    np.testing.assert_allclose(ours, theirs, atol=2e-3)  # float32 rounding, batch-norm kernel
    decided = np.abs(theirs - 0.5) > 2e-3
    assert np.array_equal((ours > 0.5)[decided], (theirs > 0.5)[decided])


@pytest.mark.slow
def test_hdbet_mask_matches_the_packages_forward_on_a_simulated_head(tmp_path,
                                                                     monkeypatch) -> None:
    """The default mask (bfloat16, lean forward) vs the package's float32 forward: Dice ≥ 0.999."""
    from bids_amyloid.preproc.mri import load_mri
    from bids_amyloid.simulate import simulate_cohort

    root = simulate_cohort(tmp_path / "bids", 1, seed=5, size="small")
    image = load_mri(sorted(root.glob("sub-*/ses-*/anat/*_T1w.nii.gz"))[0])
    ours = np.asarray(skullstrip.hdbet_mask(image, tta=False, threads=2).dataobj) > 0
    monkeypatch.setattr(skullstrip, "forward", _package_probability)
    theirs = np.asarray(skullstrip.hdbet_mask(image, tta=False, threads=2,
                                              bf16=False).dataobj) > 0
    dice = 2 * (ours & theirs).sum() / (ours.sum() + theirs.sum())
    assert theirs.sum() > 1000
    assert dice >= 0.999


def test_norm_on_a_channel_slice_in_slabs_equals_instance_norm(monkeypatch) -> None:
    """The strided path (statistics first, then slab by slab) against torch's instance norm."""
    monkeypatch.setattr(hdbet_net, "SLAB_BYTES", (3 + 2) * 10 * 7 * 9 * 4)  # 3-plane slabs
    norm = torch.nn.InstanceNorm3d(5, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    buf = _volume(10, (16, 7, 9), 4) * 3 + 2
    part = buf[:, 5:]
    assert len(hdbet_net._slabs(16, 10, part)) >= 3
    expected = torch.nn.functional.leaky_relu(torch.nn.functional.instance_norm(
        part.contiguous(), weight=norm.weight, bias=norm.bias), 0.1)
    first = buf[:, :5].clone()
    with torch.inference_mode():
        hdbet_net.norm_lrelu_(part, norm, 0.1)
    torch.testing.assert_close(part, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(buf[:, :5], first)
