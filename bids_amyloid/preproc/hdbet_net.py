"""HD-BET's forward pass, recomputed lean on memory (used by :mod:`.skullstrip`).

The same operations as the package's ``Network.forward`` (deep supervision
off), in the same order, with three changes to where tensors live:

- normalisations and activations work in place;
- every convolution is computed in slabs of planes along the first spatial
  axis (each output voxel the same sum as the whole-volume call, which in
  oneDNN also allocates twice its output) and written one slab late, so a
  convolution that keeps its channel count overwrites its own input;
- each resolution level holds its skip connection and the decoder's
  upsampled branch as the two halves of one allocation (the concatenation,
  never assembled: convolutions read slabs of both halves, and write their
  output back split over them), and the upsampling is done slab by slab.

At full resolution the network thus holds one buffer of twice the first
level's channels, where the package holds the upsampled copy, the
concatenation, a skip and convolution outputs at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# A slab's temporaries (its input planes, its output) stay under this size, so that glibc
# serves them from its heap and reuses them slab after slab when blocks of up to
# 32 MiB are kept there (skullstrip._slab_heap): fresh pages for each slab cost ~25 % more time.
SLAB_BYTES = 30 << 20
INNER_SLOPE = 1e-2  # HD-BET's modules hard-code this slope; the network's own is net.leakiness

Planes = Callable[[int, int], Any]  # planes a:b of a (1, c, z, y, x) input, channels-last


def _slabs(depth: int, channels: int, like: Any) -> list[tuple[int, int]]:
    """Slabs of planes ``(z0, z1)`` covering ``depth``, for ``channels`` on ``like``'s planes."""
    plane = channels * like.shape[3] * like.shape[4] * like.element_size()
    size = max(1, SLAB_BYTES // plane - 2)  # the input has a plane more on each side
    return [(z, min(z + size, depth)) for z in range(0, depth, size)]


def norm_lrelu_(x: Any, norm: Any, slope: float, channels: slice = slice(None)) -> Any:
    """Instance norm (the input's own statistics, as HD-BET runs) + leaky ReLU, in place.

    For one image, instance norm is batch norm with batch statistics; torch's
    batch-norm kernel writes its output over its input (statistics first, in
    float), several times faster than ``var_mean`` on bfloat16 channels-last.
    ``channels``: the part of ``norm``'s channels that ``x`` holds.
    """
    import torch

    if x.shape[0] != 1:
        raise ValueError(f"one image at a time, got a batch of {x.shape[0]}")
    weight, bias = norm.weight[channels], norm.bias[channels]
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last_3d):
        mean, invstd = x.new_empty(0, dtype=torch.float32), x.new_empty(0, dtype=torch.float32)
        torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, norm.eps,
                                out=(x, mean, invstd))
    else:  # a strided view: the kernel cannot write over it (wrong values, no error)
        x.copy_(torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, norm.eps)[0])
    return torch.nn.functional.leaky_relu_(x, slope)


def _planes(*parts: Any) -> Planes:
    """Planes ``a:b`` of the channel concatenation of ``parts`` (a view for one part)."""
    import torch

    if len(parts) == 1:
        return lambda a, b: parts[0][:, :, a:b].contiguous(memory_format=torch.channels_last_3d)
    return lambda a, b: torch.cat([p[:, :, a:b] for p in parts], 1).contiguous(
        memory_format=torch.channels_last_3d)


def _upsampled_planes(x: Any) -> Planes:
    """Planes ``a:b`` of ``interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)``.

    Each slab is interpolated along the first axis with torch's own source
    positions and weights, then within its planes (float32, one rounding to
    ``x``'s dtype), so the whole upsampled volume never exists.
    """
    import torch

    depth, size = x.shape[2], (2 * x.shape[3], 2 * x.shape[4])
    scale = torch.tensor(depth - 1, dtype=torch.float32) / (2 * depth - 1)

    def planes(a: int, b: int) -> Any:
        src = torch.arange(a, b, dtype=torch.float32) * scale
        i0 = src.floor().long().clamp_(max=depth - 1)
        lam = (src - i0).clamp_(0.0, 1.0)
        i1 = (i0 + 1).clamp_(max=depth - 1)
        lo = int(i0.min())
        part = x[:, :, lo: int(i1.max()) + 1].float()
        along = torch.lerp(part[:, :, i0 - lo], part[:, :, i1 - lo], lam.view(1, 1, -1, 1, 1))
        # x's dtype and channels-last: interpolate's fast path
        along = along.to(dtype=x.dtype, memory_format=torch.channels_last_3d)
        return torch.nn.functional.interpolate(along, size=(b - a, *size), mode="trilinear",
                                               align_corners=True)  # in-plane; identity along z

    return planes


def conv_into(conv: Any, planes: Planes, depth: int, out: Sequence[Any]) -> Sequence[Any]:
    """Write ``conv`` of an input of ``depth`` planes into ``out``, slab by slab.

    ``conv``: cubic kernel, padding ``(k - 1) / 2``, stride 1 or 2.
    ``planes(a, b)`` gives input planes ``a:b``; ``out`` is one tensor or
    several whose channels, in order, make up the output. Each slab is written
    one slab late, so ``out`` may be the input itself (same planes).
    """
    import torch

    k, p, s = conv.kernel_size[0], conv.padding[0], conv.stride[0]
    if (conv.kernel_size != (k,) * 3 or conv.padding != (p,) * 3 or 2 * p + 1 != k
            or conv.stride != (s,) * 3 or s not in (1, 2)):
        raise ValueError(f"slab-wise convolution needs a cubic kernel, 'same' padding: {conv}")
    bounds = [0]
    for o in out:
        bounds.append(bounds[-1] + o.shape[1])
    pending = None
    for z0, z1 in _slabs(out[0].shape[2], max(conv.in_channels, conv.out_channels), out[0]):
        lo, hi = s * z0 - p, s * (z1 - 1) - p + k  # input planes the slab reads
        a, b = max(lo, 0), min(hi, depth)
        pad = p if (a, b) != (lo, hi) else 0  # zero padding at a volume face
        first = (s * z0 - p - a + pad) // s  # drop planes computed beyond the slab
        part = torch.nn.functional.conv3d(planes(a, b), conv.weight, conv.bias, stride=s,
                                          padding=(pad, p, p))[:, :, first: first + z1 - z0]
        if pending is not None:
            _write(out, bounds, *pending)
        pending = (z0, z1, part)
    if pending is not None:
        _write(out, bounds, *pending)
    return out


def _write(out: Sequence[Any], bounds: list[int], z0: int, z1: int, part: Any) -> None:
    for o, c0, c1 in zip(out, bounds[:-1], bounds[1:], strict=True):
        o[:, :, z0:z1].copy_(part[:, c0:c1])


def _encode_(block: Any, x: Any, slope: float, work: Any = None) -> Any:
    """HD-BET EncodingModule (dropout off at inference): x + conv(norm(conv(norm(x)))).

    With ``work`` (shaped like ``x``), computed there with the convolutions
    slab by slab in place (:func:`conv_into`); else in a copy of ``x``, each
    convolution into a new tensor.
    """
    slabs = work is not None
    work = work.copy_(x) if slabs else x.clone()
    for conv, norm in ((block.conv1, block.bn_1), (block.conv2, block.bn_2)):
        norm_lrelu_(work, norm, slope)
        work = conv_into(conv, _planes(work), work.shape[2], [work])[0] if slabs else conv(work)
    return work.add_(x)


def _norm_halves(halves: Sequence[Any], norm: Any, slope: float) -> None:
    n = halves[0].shape[1]
    for i, half in enumerate(halves):
        norm_lrelu_(half, norm, slope, slice(i * n, (i + 1) * n))


def forward(net: Any, x: Any) -> Any:
    """HD-BET's forward pass (its ``Network.forward``, deep supervision off), lean on memory.

    ``x``: one image, (1, 1, z, y, x), channels-last, each side a multiple of
    16, in the convolutions' dtype. Returns the brain probability (float32,
    the input's spatial shape).

    At full resolution at most two tensors of the first level's channels live
    (the residual block's input and work copy; then the skip and the upsampled
    branch, which the last convolutions overwrite) plus slab temporaries; the
    coarser levels, an eighth of the size each, run whole-volume.
    """
    import torch

    x = net.init_conv(x)
    skip = _encode_(net.context1, x, INNER_SLOPE, torch.empty_like(x))
    del x
    x = norm_lrelu_(skip, net.down1.bn, INNER_SLOPE)
    x = _encode_(net.context2, net.down1.downsample(x), INNER_SLOPE)
    skips = []
    for down, context in ((net.down2, net.context3), (net.down3, net.context4),
                          (net.down4, net.context5)):
        x = norm_lrelu_(x, down.bn, INNER_SLOPE)
        skips.append(x)
        x = _encode_(context, down.downsample(x), INNER_SLOPE)
    x = norm_lrelu_(x, net.bn_after_context5, net.leakiness)
    for up, local in ((net.up1, net.loc1), (net.up2, net.loc2), (net.up3, net.loc3)):
        x = norm_lrelu_(up.upsample_conv(up.upsample(x)), up.bn, INNER_SLOPE)
        x = torch.cat((skips.pop(), x), dim=1)
        x = norm_lrelu_(local.conv1(x), local.bn_1, INNER_SLOPE)
        x = norm_lrelu_(local.conv2(x), local.bn_2, INNER_SLOPE)
    # full resolution: cat((skip, branch)) is never assembled; convolutions read slabs of both
    depth = skip.shape[2]
    branch = conv_into(net.up4.upsample_conv, _upsampled_planes(x), depth,
                       [torch.empty_like(skip)])[0]
    del x
    norm_lrelu_(branch, net.up4.bn, INNER_SLOPE)
    for conv, norm in ((net.end_conv_1, net.end_conv_1_bn), (net.end_conv_2, net.end_conv_2_bn)):
        conv_into(conv, _planes(skip, branch), depth, [skip, branch])
        _norm_halves((skip, branch), norm, net.leakiness)
    brain = torch.empty(skip.shape[2:], dtype=torch.float32, device=skip.device)
    for z0, z1 in _slabs(depth, 2 * skip.shape[1], skip):
        logits = net.seg_layer(_planes(skip, branch)(z0, z1)).float()
        brain[z0:z1] = torch.softmax(logits, dim=1)[0, 1]
    return brain


def set_conv_dtype(net: Any, dtype: Any) -> None:
    """Convolutions in ``dtype`` and channels-last layout (oneDNN's own: no reordered copies)."""
    import torch

    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.to(dtype=dtype, memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # runtime accepts both
