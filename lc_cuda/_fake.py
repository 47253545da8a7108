"""Fake (meta) kernels of lc_cuda's operators, for torch.compile, torch.export and other tracing.

They run the C++ checks (csrc/geometry.cpp) with torch._check, with the same conditions and the
same opening words, so that meta and fake tensors fail where real ones would, instead of taking a
wrong shape; and they return the outputs' shapes, computed by the formulas the functions and
layers use (lc_cuda/_arguments.py). The batch may be symbolic (a dynamic batch in torch.export);
every other size is fixed by the weight's shape, as the operators fix it.
"""

from __future__ import annotations

import torch

from . import _extension  # noqa: F401  (registers torch.ops.lc_cuda)
from ._arguments import extent, region_count, transposed_extent


def _check_tensors(input, weight, bias, grad_output=None) -> int:
    """The call's spatial dimensions; ranks, dtypes and devices agree."""
    torch._check(
        3 <= input.dim() <= 5,
        lambda: (
            "input must be 3-D (N, C_in, L), 4-D (N, C_in, H, W) or 5-D (N, C_in, D, H, W), "
            f"got {input.dim()}-D of shape {list(input.shape)}"
        ),
    )
    dims = input.dim() - 2
    torch._check(
        weight.dim() == 2 * dims + 2,
        lambda: (
            f"weight must be {2 * dims + 2}-D for {input.dim()}-D input, got "
            f"{weight.dim()}-D of shape {list(weight.shape)}"
        ),
    )
    for name, tensor in (("weight", weight), ("bias", bias), ("grad_output", grad_output)):
        if tensor is None:
            continue
        message = (
            f"{name} dtype/device must match input and be floating-point: got {tensor.dtype} "
            f"on {tensor.device}, expected {input.dtype} on {input.device}"
        )
        torch._check(
            tensor.dtype.is_floating_point
            and tensor.dtype == input.dtype
            and tensor.device == input.device,
            lambda message=message: message,
        )
    torch._check(
        input.dtype.is_floating_point,
        lambda: f"input must be a floating-point tensor, got dtype {input.dtype}",
    )
    return dims


def _check_arguments(dims, stride, padding, dilation, groups, share, share_mode):
    for name, values, count, minimum in (
        ("stride", stride, dims, 1),
        ("dilation", dilation, dims, 1),
        ("padding", padding, 2 * dims, 0),
        ("share", share, dims, 1),
    ):
        torch._check(
            len(values) == count,
            lambda name=name, values=values, count=count: (
                f"{name} must have {count} values, got {list(values)}"
            ),
        )
        torch._check(
            min(values) >= minimum,
            lambda name=name, values=values, minimum=minimum: (
                f"{name} must be "
                f"{'non-negative' if minimum == 0 else 'positive'}, got {list(values)}"
            ),
        )
    torch._check(groups >= 1, lambda: f"groups must be positive, got {groups}")
    torch._check(
        share_mode in ("block", "tile"),
        lambda: f"share_mode must be 'block' or 'tile', got '{share_mode}'",
    )


def _check_groups(groups, in_channels, out_channels):
    torch._check(
        in_channels % groups == 0 and out_channels % groups == 0,
        lambda: (
            f"groups must divide both C_in and C_out: got groups {groups}, C_in "
            f"{in_channels}, C_out {out_channels}"
        ),
    )


def _regions(out, share, share_mode):
    if share_mode == "tile":
        torch._check(
            all(s <= o for s, o in zip(share, out)),
            lambda: (
                "share (a period, share_mode 'tile') must be at most the output size along "
                f"each dimension: got share {list(share)}, output size {list(out)}"
            ),
        )
    return [region_count(o, s, share_mode) for o, s in zip(out, share)]


def _check_bias(bias, channels: int, per_position: list[int], what: str) -> None:
    if bias is None:
        return
    torch._check(
        tuple(bias.shape) in ((channels,), (channels, *per_position)),
        lambda: (
            f"bias.shape is not valid: got {list(bias.shape)}, expected "
            f"{[channels, *per_position]} (C_out, {what}) or [{channels}] (C_out,)"
        ),
    )


def forward_shape(input, weight, bias, stride, padding, dilation, groups, share, share_mode):
    """The output's shape: (N, C_out, *out)."""
    dims = _check_tensors(input, weight, bias)
    _check_arguments(dims, stride, padding, dilation, groups, share, share_mode)
    out_channels, group_channels = weight.shape[dims], weight.shape[dims + 1]
    _check_groups(groups, input.shape[1], out_channels)
    torch._check(
        input.shape[1] == group_channels * groups,
        lambda: (
            f"input.shape[1] is not valid: got {input.shape[1]}, expected "
            f"{group_channels * groups} input channels"
        ),
    )
    kernel = list(weight.shape[dims + 2 :])
    out = []
    for n, k, s, before, after, d in zip(
        input.shape[2:], kernel, stride, padding[0::2], padding[1::2], dilation
    ):
        span = d * (k - 1) + 1
        torch._check(
            span <= n + before + after,
            lambda span=span, n=n, b=before, a=after: (
                f"kernel does not fit the padded input: "
                f"dilated kernel {span} > padded input {n + b + a}"
            ),
        )
        out.append(extent(n, k, s, before, after, d))
    regions = _regions(out, share, share_mode)
    expected = (*regions, out_channels, group_channels, *kernel)
    torch._check(
        tuple(weight.shape) == expected,
        lambda: f"weight.shape is not valid: got {list(weight.shape)}, expected {list(expected)}",
    )
    _check_bias(bias, out_channels, regions, "one per weight region")
    return (input.shape[0], out_channels, *out)


def transpose_shape(
    input, weight, bias, stride, padding, output_padding, dilation, groups, share, share_mode
):
    """The transposed op's output shape: (N, C_out, *in), the forward op's input."""
    dims = _check_tensors(input, weight, bias)
    _check_arguments(dims, stride, padding, dilation, groups, share, share_mode)
    torch._check(
        len(output_padding) == dims and min(output_padding) >= 0,
        lambda: f"output_padding must have {dims} non-negative values, got {list(output_padding)}",
    )
    torch._check(
        all(e < max(s, d) for e, s, d in zip(output_padding, stride, dilation)),
        lambda: (
            "output_padding must be smaller than stride or dilation along each dimension (as "
            f"in ConvTranspose), got output_padding {list(output_padding)}, stride {list(stride)}, "
            f"dilation {list(dilation)}"
        ),
    )
    in_channels, group_out = weight.shape[dims], weight.shape[dims + 1]
    torch._check(
        input.shape[1] == in_channels,
        lambda: (
            f"input.shape[1] is not valid: got {input.shape[1]}, expected {in_channels} "
            "input channels"
        ),
    )
    out_channels = group_out * groups
    _check_groups(groups, out_channels, in_channels)
    kernel = list(weight.shape[dims + 2 :])
    sizes = [
        transposed_extent(o, k, s, before, after, e, d)
        for o, k, s, before, after, e, d in zip(
            input.shape[2:], kernel, stride, padding[0::2], padding[1::2], output_padding,
            dilation,
        )
    ]  # fmt: skip
    torch._check(
        all(size >= 1 for size in sizes),
        lambda: (
            f"the output would be empty: sizes {sizes} for input of shape "
            f"{list(input.shape)}, padding {list(padding)}"
        ),
    )
    regions = _regions(list(input.shape[2:]), share, share_mode)
    expected = (*regions, in_channels, group_out, *kernel)
    torch._check(
        tuple(weight.shape) == expected,
        lambda: f"weight.shape is not valid: got {list(weight.shape)}, expected {list(expected)}",
    )
    _check_bias(bias, out_channels, sizes, "one per output location")
    return (input.shape[0], out_channels, *sizes)


@torch.library.register_fake("lc_cuda::local_conv")
def _local_conv_fake(
    input, weight, bias, stride, padding, dilation, groups, share, share_mode, force_unfold=False
):
    shape = forward_shape(input, weight, bias, stride, padding, dilation, groups, share, share_mode)
    return input.new_empty(shape)


@torch.library.register_fake("lc_cuda::local_conv_backward")
def _local_conv_backward_fake(
    grad_output, input, weight, stride, padding, dilation, groups, share, share_mode,
    shared_bias, output_mask, force_unfold=False,
):  # fmt: skip
    _check_tensors(input, weight, None, grad_output)
    out_shape = forward_shape(
        input, weight, None, stride, padding, dilation, groups, share, share_mode
    )
    torch._check(
        tuple(grad_output.shape) == out_shape,
        lambda: (
            f"grad_output.shape is not valid: got {list(grad_output.shape)}, expected "
            f"{list(out_shape)}"
        ),
    )
    dims = input.dim() - 2
    bias_shape = out_shape[1:2] if shared_bias else (out_shape[1], *weight.shape[:dims])
    return (
        input.new_empty(input.shape if output_mask[0] else (0,)),
        weight.new_empty(weight.shape if output_mask[1] else (0,)),
        grad_output.new_empty(bias_shape if output_mask[2] else (0,)),
    )


@torch.library.register_fake("lc_cuda::local_conv_transpose")
def _local_conv_transpose_fake(
    input, weight, bias, stride, padding, output_padding, dilation, groups, share, share_mode,
    force_unfold=False,
):  # fmt: skip
    shape = transpose_shape(
        input, weight, bias, stride, padding, output_padding, dilation, groups, share, share_mode
    )
    return input.new_empty(shape)
