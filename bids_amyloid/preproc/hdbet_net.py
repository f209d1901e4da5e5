"""HD-BET's forward pass, recomputed lean on memory (used by :mod:`.skullstrip`).

The same operations as the package's ``Network.forward`` (deep supervision
off), in the same order. Normalisations and activations work in place and
each skip connection is dropped once used. At full resolution the decoder
does not hold the package's four large tensors at once (skip, upsampled
copy, concatenation, convolution output): the skip is copied into one
buffer of twice its channels, the upsampled branch is convolved slab by slab
(planes along the first axis, the upsampling itself slab by slab) into the
other half, and the last two convolutions overwrite that concatenation slab
by slab, each slab written once no later slab reads its planes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SLAB_BYTES = 30 << 20  # a slab's input planes, at most (its temporaries stay small)
INNER_SLOPE = 1e-2  # HD-BET's modules hard-code this slope; the network's own is net.leakiness

Planes = Callable[[int, int], Any]  # planes a:b of a (1, c, z, y, x) input, channels-last


def _slabs(depth: int, channels: int, like: Any) -> list[tuple[int, int]]:
    """Slabs of planes ``(z0, z1)`` covering ``depth``, for ``channels`` on ``like``'s planes."""
    plane = channels * like.shape[3] * like.shape[4] * like.element_size()
    size = max(1, SLAB_BYTES // plane - 2)  # the input has a plane more on each side
    return [(z, min(z + size, depth)) for z in range(0, depth, size)]


def norm_lrelu_(x: Any, norm: Any, slope: float) -> Any:
    """Instance norm (the input's own statistics, as HD-BET runs) + leaky ReLU, in place.

    For one image, instance norm is batch norm with batch statistics; torch's
    batch-norm kernel writes its output over its input (statistics first, in
    float), several times faster than ``var_mean`` on bfloat16 channels-last.
    A strided view (channels of a larger buffer), which that kernel cannot
    write over, is done slab by slab: statistics (float64 sums) first, then
    the kernel with those statistics on a contiguous copy of each slab.
    """
    import torch

    if x.shape[0] != 1:
        raise ValueError(f"one image at a time, got a batch of {x.shape[0]}")
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last_3d):
        mean, invstd = x.new_empty(0, dtype=torch.float32), x.new_empty(0, dtype=torch.float32)
        torch.native_batch_norm(x, norm.weight, norm.bias, None, None, True, 0.0, norm.eps,
                                out=(x, mean, invstd))
        return torch.nn.functional.leaky_relu_(x, slope)
    slabs = _slabs(x.shape[2], 2 * x.shape[1], x)
    size = (1, x.shape[1], slabs[0][1] - slabs[0][0], *x.shape[3:])
    # one work slab of each kind, reused: fresh pages for every slab cost more than the arithmetic
    wide = torch.empty(size, dtype=torch.float32).contiguous(memory_format=torch.channels_last_3d)
    work = torch.empty(size, dtype=x.dtype).contiguous(memory_format=torch.channels_last_3d)
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    for z0, z1 in slabs:
        part = wide[:, :, : z1 - z0].copy_(x[:, :, z0:z1])
        total += part.sum(dim=(0, 2, 3, 4), dtype=torch.float64)
        squares += part.mul_(part).sum(dim=(0, 2, 3, 4), dtype=torch.float64)
    count = x.numel() // x.shape[1]
    mean64 = total / count
    mean, var = mean64.float(), (squares / count - mean64 * mean64).clamp_(min=0.0).float()
    unused = x.new_empty(0, dtype=torch.float32)
    for z0, z1 in slabs:
        part = work[:, :, : z1 - z0].copy_(x[:, :, z0:z1])
        torch.native_batch_norm(part, norm.weight, norm.bias, mean, var, False, 0.0, norm.eps,
                                out=(part, unused, unused))
        x[:, :, z0:z1].copy_(torch.nn.functional.leaky_relu_(part, slope))
    return x


def _planes(x: Any) -> Planes:
    """Planes ``a:b`` of ``x`` (a view when ``x`` is channels-last contiguous)."""
    import torch

    return lambda a, b: x[:, :, a:b].contiguous(memory_format=torch.channels_last_3d)


def _upsampled_planes(x: Any) -> Planes:
    """Planes ``a:b`` of ``interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)``.

    Each slab is interpolated along the first axis with torch's own source
    positions and weights (in float32), then within its planes, so the whole
    upsampled volume never exists; in bfloat16 that rounds twice instead of
    once. The planes returned are overwritten by the next call.
    """
    import torch

    depth, size = x.shape[2], (2 * x.shape[3], 2 * x.shape[4])
    scale = torch.tensor(depth - 1, dtype=torch.float32) / (2 * depth - 1)
    out: list[Any] = [None]

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
        if out[0] is None or out[0].shape[2] < b - a:
            out[0] = torch.empty((1, x.shape[1], b - a, *size), dtype=x.dtype,
                                 device=x.device).contiguous(memory_format=torch.channels_last_3d)
        # in-plane (identity along z), into one buffer reused slab after slab
        return torch.ops.aten.upsample_trilinear3d.out(along, [b - a, *size], True,
                                                       out=out[0][:, :, : b - a])

    return planes


def conv_into(conv: Any, planes: Planes, depth: int, out: Any) -> Any:
    """Write ``conv`` of an input of ``depth`` planes into ``out``, slab by slab; return ``out``.

    ``conv``: cubic kernel, padding ``(k - 1) / 2``, stride 1 or 2;
    ``planes(a, b)`` gives input planes ``a:b``. Each output voxel is the same
    sum as in the whole-volume call. Each slab is written one slab late, so
    ``out`` may be the input itself.
    """
    import torch

    k, p, s = conv.kernel_size[0], conv.padding[0], conv.stride[0]
    if (conv.kernel_size != (k,) * 3 or conv.padding != (p,) * 3 or 2 * p + 1 != k
            or conv.stride != (s,) * 3 or s not in (1, 2)):
        raise ValueError(f"slab-wise convolution needs a cubic kernel, 'same' padding: {conv}")
    pending = None
    for z0, z1 in _slabs(out.shape[2], max(conv.in_channels, conv.out_channels), out):
        lo, hi = s * z0 - p, s * (z1 - 1) - p + k  # input planes the slab reads
        a, b = max(lo, 0), min(hi, depth)
        pad = p if (a, b) != (lo, hi) else 0  # zero padding at a volume face
        first = (s * z0 - p - a + pad) // s  # drop planes computed beyond the slab
        part = torch.nn.functional.conv3d(planes(a, b), conv.weight, conv.bias, stride=s,
                                          padding=(pad, p, p))[:, :, first: first + z1 - z0]
        if pending is not None:
            out[:, :, pending[0]:pending[1]].copy_(pending[2])
        pending = (z0, z1, part)
    if pending is not None:
        out[:, :, pending[0]:pending[1]].copy_(pending[2])
    return out


def _encode(block: Any, x: Any, slope: float) -> Any:
    """HD-BET EncodingModule (dropout off at inference): x + conv(norm(conv(norm(x))))."""
    out = block.conv1(norm_lrelu_(x.clone(), block.bn_1, slope))
    out = block.conv2(norm_lrelu_(out, block.bn_2, slope))
    return out.add_(x)


def forward(net: Any, x: Any) -> Any:
    """HD-BET's forward pass (its ``Network.forward``, deep supervision off), lean on memory.

    ``x``: one image, (1, 1, z, y, x), channels-last, each side a multiple of
    16, in the convolutions' dtype. Returns the brain probability (float32,
    the input's spatial shape).

    Whole-volume operations except at full resolution in the decoder: there
    the skip is copied into one buffer of twice its channels, the upsampled
    branch is convolved slab by slab into the other half (the whole upsampled
    volume never exists), and the last two convolutions overwrite that
    concatenation slab by slab.
    """
    import torch

    x = _encode(net.context1, net.init_conv(x), INNER_SLOPE)
    skips = []
    for down, context in ((net.down1, net.context2), (net.down2, net.context3),
                          (net.down3, net.context4), (net.down4, net.context5)):
        x = norm_lrelu_(x, down.bn, INNER_SLOPE)
        skips.append(x)
        x = _encode(context, down.downsample(x), INNER_SLOPE)
    x = norm_lrelu_(x, net.bn_after_context5, net.leakiness)
    for up, local in ((net.up1, net.loc1), (net.up2, net.loc2), (net.up3, net.loc3)):
        x = norm_lrelu_(up.upsample_conv(up.upsample(x)), up.bn, INNER_SLOPE)
        x = torch.cat((skips.pop(), x), dim=1)
        x = norm_lrelu_(local.conv1(x), local.bn_1, INNER_SLOPE)
        x = norm_lrelu_(local.conv2(x), local.bn_2, INNER_SLOPE)
    skip = skips.pop()
    c = skip.shape[1]
    buf = torch.empty((1, 2 * c, *skip.shape[2:]), dtype=skip.dtype, device=skip.device,
                      memory_format=torch.channels_last_3d)
    buf[:, :c].copy_(skip)
    del skip
    conv_into(net.up4.upsample_conv, _upsampled_planes(x), buf.shape[2], buf[:, c:])
    del x
    norm_lrelu_(buf[:, c:], net.up4.bn, INNER_SLOPE)
    for conv, norm in ((net.end_conv_1, net.end_conv_1_bn), (net.end_conv_2, net.end_conv_2_bn)):
        norm_lrelu_(conv_into(conv, _planes(buf), buf.shape[2], buf), norm, net.leakiness)
    logits = net.seg_layer(buf).float()
    del buf
    return torch.softmax(logits, dim=1)[0, 1]


def set_conv_dtype(net: Any, dtype: Any) -> None:
    """Convolutions in ``dtype`` and channels-last layout (oneDNN's own: no reordered copies)."""
    import torch

    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.to(dtype=dtype, memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # runtime accepts both
