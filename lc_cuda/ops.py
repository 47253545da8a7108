"""The functional API: local_conv1d/2d/3d, their transposes, and the fallback's versions.

Each function turns its Python arguments into the operator's (lc_cuda._arguments) and calls the
operator through lc_cuda._autograd, which makes it differentiable by autograd and by every
torch.func transform. Unbatched input (without N) is taken as a batch of one, as Conv does.
"""

from __future__ import annotations

from . import _fake  # noqa: F401  (registers the fake kernels)
from ._arguments import (
    IntOrSeq,
    Padding,
    as_int,
    extent,
    flat_padding,
    ntuple,
    padding_pairs,
    sharing,
)
from ._autograd import conv, conv_transpose

_WEIGHT_LAYOUT = {
    1: "(OL, C_out, C_in / groups, K)",
    2: "(OH, OW, C_out, C_in / groups, KH, KW)",
    3: "(OD, OH, OW, C_out, C_in / groups, KD, KH, KW)",
}
_INPUT_LAYOUT = {1: "(N, C_in, L)", 2: "(N, C_in, H, W)", 3: "(N, C_in, D, H, W)"}


def _batched(input, dims: int, function: str):
    """(input with a batch dimension, whether one was added): unbatched (C_in, *size) input is
    a batch of one, as for Conv."""
    if input.dim() == dims + 1:
        return input.unsqueeze(0), True
    if input.dim() != dims + 2:
        raise RuntimeError(
            f"{function}: input must be {dims + 2}-D {_INPUT_LAYOUT[dims]} or "
            f"{dims + 1}-D without the batch, got {input.dim()}-D of shape {tuple(input.shape)}"
        )
    return input, False


def _local_conv(
    dims, function, input, weight, bias, stride, padding, dilation, groups, share_block,
    share_period, force_unfold,
):  # fmt: skip
    stride = ntuple(stride, dims, "stride")
    dilation = ntuple(dilation, dims, "dilation")
    if isinstance(padding, str) and padding == "same" and max(stride) != 1:
        raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
    if weight.dim() != 2 * dims + 2:
        raise RuntimeError(
            f"{function}: weight must be {2 * dims + 2}-D {_WEIGHT_LAYOUT[dims]}, got "
            f"{weight.dim()}-D of shape {tuple(weight.shape)}"
        )
    groups = as_int(groups, "groups")
    pairs = padding_pairs(padding, dims, weight.shape[-dims:], dilation)
    share = sharing(share_block, share_period, dims)
    input, added_batch = _batched(input, dims, function)
    if share.mode == "tile":
        # The operator would name it share; the output size follows from the shapes.
        out_size = [
            extent(n, k, s, before, after, d)
            for n, k, s, (before, after), d in zip(
                input.shape[2:], weight.shape[-dims:], stride, pairs, dilation
            )
        ]
        if any(period > out for period, out in zip(share.share, out_size)):
            raise RuntimeError(
                "share_period must be at most the output size along each dimension: got "
                f"share_period {share.share}, output size {tuple(out_size)}"
            )
    out = conv(
        input, weight, bias, stride, flat_padding(pairs), dilation, groups, share.share,
        share.mode, force_unfold,
    )  # fmt: skip
    return out.squeeze(0) if added_batch else out


def _local_conv_transpose(
    dims, function, input, weight, bias, stride, padding, output_padding, dilation, groups,
    share_block, share_period, force_unfold,
):  # fmt: skip
    stride = ntuple(stride, dims, "stride")
    dilation = ntuple(dilation, dims, "dilation")
    output_padding = ntuple(output_padding, dims, "output_padding")
    if isinstance(padding, str):
        raise ValueError(
            f"{function}: padding must be an int, {dims} ints or {dims} (before, after) pairs, "
            f"got {padding!r}"
        )
    groups = as_int(groups, "groups")
    if weight.dim() != 2 * dims + 2:
        raise RuntimeError(
            f"{function}: weight must be {2 * dims + 2}-D "
            f"{_WEIGHT_LAYOUT[dims].replace('C_out, C_in', 'C_in, C_out')}, got "
            f"{weight.dim()}-D of shape {tuple(weight.shape)}"
        )
    pairs = padding_pairs(padding, dims, weight.shape[-dims:], dilation)
    share = sharing(share_block, share_period, dims)
    input, added_batch = _batched(input, dims, function)
    out = conv_transpose(
        input, weight, bias, stride, flat_padding(pairs), output_padding, dilation, groups,
        share.share, share.mode, force_unfold,
    )  # fmt: skip
    return out.squeeze(0) if added_batch else out


_ARGUMENTS = """stride (int or tuple): step between neighbouring windows, per dimension. Default: 1.
        padding (int, tuple, tuple of (before, after) pairs, 'valid' or 'same'): zeros added
            to both sides (an int, or one per dimension), per side (a (before, after) pair per
            dimension, e.g. ((2, 0),) for a causal 1D layer), none ('valid'), or as many as
            keep the size ('same', stride 1 only; an odd total puts the extra zero after, as
            Conv does). The kernels skip the taps that fall on it (no padded copy of the
            input); the unfold fallback pads a copy. Default: 0.
        dilation (int or tuple): spacing between a filter's taps. Default: 1.
        groups (int): input and output channels split into this many groups, each output
            channel reading its group's inputs only, as in Conv; groups = C_in is depthwise.
            Default: 1.
        share_block (int or tuple, optional): neighbouring output positions in blocks of this
            size (per dimension) share one filter bank: a locally-shared convolution (DeepID).
            The weight then has ceil(out / share_block) regions per dimension instead of one
            bank per position; the last block may be partial. A block covering the whole output
            is an ordinary convolution. Default: None (a bank per position).
        share_period (int or tuple, optional): output positions this far apart share one
            filter bank, position i using bank i % share_period: a tiled convolution (Ngiam et
            al.). The weight has share_period regions per dimension (at most the output size).
            Not with share_block. Default: None."""


def local_conv1d(
    input, weight, bias=None, stride: IntOrSeq = 1, padding: Padding = 0,
    dilation: IntOrSeq = 1, groups: int = 1, share_block: IntOrSeq | None = None,
    share_period: IntOrSeq | None = None,
):  # fmt: skip
    r"""Locally-connected 1D convolution: a conv1d whose filters differ at every output
    position (or region of positions, with share_block or share_period).

    .. code-block:: text

        out[n, o, i] = bias[o, r(i)] + sum_{c in o's group, q} weight[r(i), o, c, q]
                       * input_padded[n, c, i * stride + q * dilation]

    with r(i) = i without sharing, i // share_block or i % share_period.

    Args:
        input (Tensor): (N, C_in, L), or (C_in, L). Any strides.
        weight (Tensor): (R, C_out, C_in / groups, K): ``weight[r]`` is the conv1d weight of
            region r; without sharing, R = OL, a bank per output position.
        bias (Tensor, optional): (C_out, R), one per region, or (C_out,) shared. Default: None.
        <shared arguments>

    Returns:
        Tensor: (N, C_out, OL) (or (C_out, OL)), contiguous, with
        OL = (L + before + after - dilation * (K - 1) - 1) // stride + 1.

    Example::

        >>> x = torch.randn(2, 4, 100)
        >>> w = torch.randn(48, 8, 4, 5)  # (OL, C_out, C_in, K) for stride 2
        >>> lc_cuda.local_conv1d(x, w, stride=2).shape
        torch.Size([2, 8, 48])
        >>> causal = torch.randn(100, 8, 4, 5)  # pads 4 before: the output keeps L
        >>> lc_cuda.local_conv1d(x, causal, padding=((4, 0),)).shape
        torch.Size([2, 8, 100])
    """
    return _local_conv(
        1, "local_conv1d", input, weight, bias, stride, padding, dilation, groups, share_block,
        share_period, False,
    )  # fmt: skip


def local_conv2d(
    input, weight, bias=None, stride: IntOrSeq = 1, padding: Padding = 0,
    dilation: IntOrSeq = 1, groups: int = 1, share_block: IntOrSeq | None = None,
    share_period: IntOrSeq | None = None,
):  # fmt: skip
    r"""Locally-connected 2D convolution: a conv2d whose filters differ at every output
    location (or region of locations, with share_block or share_period).

    .. code-block:: text

        out[n, o, i, j] = bias[o, r(i, j)] + sum_{c in o's group, p, q} weight[r(i, j), o, c, p, q]
                          * input_padded[n, c, i * stride_h + p * dilation_h,
                                               j * stride_w + q * dilation_w]

    with r(i, j) = (i, j) without sharing, (i // block_h, j // block_w) with share_block,
    (i % period_h, j % period_w) with share_period.

    Args:
        input (Tensor): (N, C_in, H, W), or (C_in, H, W). Any strides (channels_last is read in
            place).
        weight (Tensor): (RH, RW, C_out, C_in / groups, KH, KW): ``weight[i, j]`` is the conv2d
            weight (C_out, C_in / groups, KH, KW) of region (i, j); without sharing
            (RH, RW) = (OH, OW), a bank per output location.
        bias (Tensor, optional): (C_out, RH, RW), one per region, or (C_out,) shared.
            Default: None.
        <shared arguments>

    input, weight and bias must have the same floating dtype (float64, float32, float16 or
    bfloat16) and device.

    Returns:
        Tensor: (N, C_out, OH, OW) (or (C_out, OH, OW)), contiguous, with
        OH = (H + top + bottom - dilation_h * (KH - 1) - 1) // stride_h + 1, likewise OW.
        Differentiable in input, weight and bias (to any order, and by torch.func's grad, jvp,
        vmap and jacrev), traceable by torch.compile, and run in the autocast dtype under
        autocast.

    Example::

        >>> x = torch.randn(8, 3, 32, 32)
        >>> w = torch.randn(15, 15, 16, 3, 3, 3)  # (OH, OW, C_out, C_in, KH, KW)
        >>> lc_cuda.local_conv2d(x, w, torch.randn(16), stride=2).shape
        torch.Size([8, 16, 15, 15])
        >>> shared = torch.randn(2, 2, 16, 3, 3, 3)  # 2x2 regions of 8x8 locations (DeepID)
        >>> lc_cuda.local_conv2d(x, shared, stride=2, padding=1, share_block=8).shape
        torch.Size([8, 16, 16, 16])
    """
    return _local_conv(
        2, "local_conv2d", input, weight, bias, stride, padding, dilation, groups, share_block,
        share_period, False,
    )  # fmt: skip


def local_conv3d(
    input, weight, bias=None, stride: IntOrSeq = 1, padding: Padding = 0,
    dilation: IntOrSeq = 1, groups: int = 1, share_block: IntOrSeq | None = None,
    share_period: IntOrSeq | None = None,
):  # fmt: skip
    r"""Locally-connected 3D convolution: a conv3d whose filters differ at every output
    position of a volume (or region of positions, with share_block or share_period).

    .. code-block:: text

        out[n, o, z, y, x] = bias[o, r(z, y, x)]
            + sum_{c in o's group, a, p, q} weight[r(z, y, x), o, c, a, p, q]
              * input_padded[n, c, z * stride_d + a * dilation_d,
                                   y * stride_h + p * dilation_h, x * stride_w + q * dilation_w]

    Args:
        input (Tensor): (N, C_in, D, H, W), or (C_in, D, H, W). Any strides
            (channels_last_3d is read in place).
        weight (Tensor): (RD, RH, RW, C_out, C_in / groups, KD, KH, KW): ``weight[z, y, x]`` is
            the conv3d weight of region (z, y, x); without sharing (RD, RH, RW) =
            (OD, OH, OW), a bank per output position.
        bias (Tensor, optional): (C_out, RD, RH, RW), one per region, or (C_out,) shared.
            Default: None.
        <shared arguments>

    Returns:
        Tensor: (N, C_out, OD, OH, OW) (or (C_out, OD, OH, OW)), contiguous, with
        OD = (D + front + back - dilation_d * (KD - 1) - 1) // stride_d + 1, likewise OH, OW.

    Example::

        >>> x = torch.randn(2, 1, 16, 16, 16)
        >>> w = torch.randn(14, 14, 14, 4, 1, 3, 3, 3)  # (OD, OH, OW, C_out, C_in, KD, KH, KW)
        >>> lc_cuda.local_conv3d(x, w).shape
        torch.Size([2, 4, 14, 14, 14])
    """
    return _local_conv(
        3, "local_conv3d", input, weight, bias, stride, padding, dilation, groups, share_block,
        share_period, False,
    )  # fmt: skip


def _unfold_doc(dims: int) -> str:
    return (
        f"local_conv{dims}d computed by the unfold + batched-matmul fallback on every device.\n\n"
        f"    The same operator, autograd, compile and autocast behaviour as local_conv{dims}d;"
        " only\n    the kernels differ. It is the baseline the kernels are measured against.\n"
    )


def unfold_local_conv1d(
    input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, share_block=None,
    share_period=None,
):  # fmt: skip
    return _local_conv(
        1, "unfold_local_conv1d", input, weight, bias, stride, padding, dilation, groups,
        share_block, share_period, True,
    )  # fmt: skip


def unfold_local_conv2d(
    input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, share_block=None,
    share_period=None,
):  # fmt: skip
    return _local_conv(
        2, "unfold_local_conv2d", input, weight, bias, stride, padding, dilation, groups,
        share_block, share_period, True,
    )  # fmt: skip


def unfold_local_conv3d(
    input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, share_block=None,
    share_period=None,
):  # fmt: skip
    return _local_conv(
        3, "unfold_local_conv3d", input, weight, bias, stride, padding, dilation, groups,
        share_block, share_period, True,
    )  # fmt: skip


for _function in (local_conv1d, local_conv2d, local_conv3d):
    _function.__doc__ = _function.__doc__.replace("<shared arguments>", _ARGUMENTS)
unfold_local_conv1d.__doc__ = _unfold_doc(1)
unfold_local_conv2d.__doc__ = _unfold_doc(2)
unfold_local_conv3d.__doc__ = _unfold_doc(3)

_TRANSPOSE_DOC = r"""The transpose of local_conv{dims}d: its adjoint in the input, as
    ConvTranspose{dims}d is to Conv{dims}d, for decoders and autoencoders.

    With y = local_conv{dims}d(x, weight, ...), local_conv_transpose{dims}d(g, weight, ...) with
    the same geometry is the gradient of <y, g> in x: every output position sums what the
    positions whose windows read it contribute. The result's size along each dimension is
    (in - 1) * stride - before - after + dilation * (kernel - 1) + 1 + output_padding.

    Args:
        input (Tensor): {input_layout}, shaped like local_conv{dims}d's output (or without N).
        weight (Tensor): {weight_layout}: local_conv{dims}d's weight, whose C_out is this op's
            input channels (the layout ConvTranspose{dims}d uses per location).
        bias (Tensor, optional): (C_out, *size), one per output position, or (C_out,) shared.
            Default: None.
        stride, padding, dilation, groups, share_block, share_period: local_conv{dims}d's, the
            padding as an int, one per dimension or (before, after) pairs. Defaults: 1, 0, 1,
            1, None, None.
        output_padding (int or tuple): extra size after each dimension (smaller than the
            stride or the dilation), where several sizes map to the same input size. Default: 0.

    Returns:
        Tensor: (N, C_out, *size), contiguous.
"""


def local_conv_transpose1d(
    input, weight, bias=None, stride: IntOrSeq = 1, padding: Padding = 0,
    output_padding: IntOrSeq = 0, dilation: IntOrSeq = 1, groups: int = 1,
    share_block: IntOrSeq | None = None, share_period: IntOrSeq | None = None,
):  # fmt: skip
    return _local_conv_transpose(
        1, "local_conv_transpose1d", input, weight, bias, stride, padding, output_padding,
        dilation, groups, share_block, share_period, False,
    )  # fmt: skip


def local_conv_transpose2d(
    input, weight, bias=None, stride: IntOrSeq = 1, padding: Padding = 0,
    output_padding: IntOrSeq = 0, dilation: IntOrSeq = 1, groups: int = 1,
    share_block: IntOrSeq | None = None, share_period: IntOrSeq | None = None,
):  # fmt: skip
    return _local_conv_transpose(
        2, "local_conv_transpose2d", input, weight, bias, stride, padding, output_padding,
        dilation, groups, share_block, share_period, False,
    )  # fmt: skip


def local_conv_transpose3d(
    input, weight, bias=None, stride: IntOrSeq = 1, padding: Padding = 0,
    output_padding: IntOrSeq = 0, dilation: IntOrSeq = 1, groups: int = 1,
    share_block: IntOrSeq | None = None, share_period: IntOrSeq | None = None,
):  # fmt: skip
    return _local_conv_transpose(
        3, "local_conv_transpose3d", input, weight, bias, stride, padding, output_padding,
        dilation, groups, share_block, share_period, False,
    )  # fmt: skip


for _dims, _function in ((1, local_conv_transpose1d), (2, local_conv_transpose2d),
                         (3, local_conv_transpose3d)):  # fmt: skip
    _function.__doc__ = _TRANSPOSE_DOC.format(
        dims=_dims,
        input_layout=_INPUT_LAYOUT[_dims],
        weight_layout=_WEIGHT_LAYOUT[_dims].replace("C_out, C_in", "C_in, C_out"),
    )
_TRANSPOSE_EXAMPLE = """
    Example::

        >>> y = torch.randn(2, 8, 15, 15)
        >>> w = torch.randn(15, 15, 8, 3, 3, 3)  # local_conv2d's: (OH, OW, C_out=8, C_in=3, 3, 3)
        >>> lc_cuda.local_conv_transpose2d(y, w, stride=2, output_padding=1).shape
        torch.Size([2, 3, 32, 32])
"""
local_conv_transpose2d.__doc__ += _TRANSPOSE_EXAMPLE
