"""Fake (meta) kernels of lc_cuda's operators, for torch.compile, torch.export and other tracing.

They run the C++ checks' conditions (csrc/geometry.cpp) with torch._check, so that meta and
fake tensors fail where real ones would instead of taking a wrong shape, and return the outputs'
shapes. The batch may be symbolic (a dynamic batch in torch.export); every other size is fixed
by the weight's shape, as the operators fix it.
"""

from __future__ import annotations

import torch

from . import _extension  # noqa: F401  (registers torch.ops.lc_cuda)
from ._arguments import Sharing
from ._arguments import regions as weight_regions


def _check_tensors(input, weight, bias, weight_layout: str) -> int:
    """The spatial dimensions of the call; dtypes and devices agree."""
    torch._check(
        3 <= input.dim() <= 5,
        lambda: (
            "input must be 3-D (N, C_in, L), 4-D (N, C_in, H, W) or 5-D (N, C_in, D, H, W), "
            f"got {input.dim()}-D"
        ),
    )
    dims = input.dim() - 2
    torch._check(
        weight.dim() == 2 * dims + 2,
        lambda: (
            f"weight must be {2 * dims + 2}-D {weight_layout} for {input.dim()}-D input, "
            f"got {weight.dim()}-D"
        ),
    )
    for name, tensor in (("input", input), ("weight", weight), ("bias", bias)):
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
    return dims


def _output_sizes(in_sizes, kernel, stride, padding, dilation):
    sizes = []
    for n, k, s, before, after, d in zip(
        in_sizes, kernel, stride, padding[0::2], padding[1::2], dilation
    ):
        span = d * (k - 1) + 1
        torch._check(
            span <= n + before + after,
            lambda span=span, n=n, b=before, a=after: (
                f"kernel does not fit the padded input: "
                f"dilated kernel {span} > padded input {n + b + a}"
            ),
        )
        sizes.append((n + before + after - span) // s + 1)
    return sizes


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
    dims = _check_tensors(input, weight, bias, "(*O, C_out, C_in / groups, *K)")
    out_channels, group_channels = weight.shape[dims], weight.shape[dims + 1]
    torch._check(
        input.shape[1] == group_channels * groups,
        lambda: (
            f"input.shape[1] is not valid: got {input.shape[1]}, expected "
            f"{group_channels * groups} input channels"
        ),
    )
    torch._check(
        out_channels % groups == 0,
        lambda: (
            f"groups must divide both C_in and C_out: got groups {groups}, C_out {out_channels}"
        ),
    )
    kernel = list(weight.shape[dims + 2 :])
    out = _output_sizes(input.shape[2:], kernel, stride, padding, dilation)
    regions = list(weight_regions(out, Sharing(tuple(share), share_mode)))
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
    dims = _check_tensors(input, weight, bias, "(*I, C_in, C_out / groups, *K)")
    torch._check(
        input.shape[1] == weight.shape[dims],
        lambda: (
            f"input.shape[1] is not valid: got {input.shape[1]}, expected "
            f"{weight.shape[dims]} input channels"
        ),
    )
    kernel = list(weight.shape[dims + 2 :])
    sizes = []
    for o, k, s, before, after, extra, d in zip(
        input.shape[2:], kernel, stride, padding[0::2], padding[1::2], output_padding, dilation
    ):
        sizes.append((o - 1) * s - before - after + d * (k - 1) + 1 + extra)
    out_channels = weight.shape[dims + 1] * groups
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
    out_shape = forward_shape(
        input, weight, None, stride, padding, dilation, groups, share, share_mode
    )
    torch._check(
        tuple(grad_output.shape) == out_shape and grad_output.dtype == input.dtype,
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
