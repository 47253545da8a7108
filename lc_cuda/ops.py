"""The functional API, and the fake and autograd rules of the lc_cuda operators.

The operators' schemas, argument checks and kernels live in csrc/. This module normalises the
Python arguments (ints or pairs, 'valid' and 'same'), and registers with torch.library:
  - fake kernels, for torch.compile and other tracing;
  - autograd for the forward op, whose backward is the lc_cuda backward op;
  - autograd for the backward op. The op is bilinear, so the derivatives of its gradients are
    again forward and backward ops: double backward (and higher) needs no other kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _extension  # noqa: F401  (registers torch.ops.lc_cuda)

_forward_op = torch.ops.lc_cuda.local_conv2d.default
_backward_op = torch.ops.lc_cuda.local_conv2d_backward.default

IntOrSeq = int | Sequence[int]


def ntuple(value: IntOrSeq, n: int, name: str) -> tuple[int, ...]:
    """An int, or a sequence of n ints, as an n-tuple; `name` goes into the error message."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    if (
        isinstance(value, Sequence)
        and len(value) == n
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return tuple(value)
    expected = "an int" if n == 1 else f"an int or a sequence of {n} ints"
    raise TypeError(f"{name} must be {expected}, got {value!r}")


def same_padding(kernel_size: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding that keeps the size at stride 1. For an even span the extra
    element goes after, as Conv2d does."""
    total = dilation * (kernel_size - 1)
    return total // 2, total - total // 2


def operator_padding(
    padding: Sequence[int] | str, kernel_size: Sequence[int], dilation: Sequence[int]
) -> tuple[list[int], list[int]]:
    """The operator's padding (top, left) for two spatial dims, and the F.pad argument
    (left, right, top, bottom) applied before the operator: all zeros except where 'same' has
    an odd total padding, whose extra row and column go after the input, as Conv2d does."""
    if padding == "valid":
        return [0, 0], [0, 0, 0, 0]
    if padding != "same":
        return list(padding), [0, 0, 0, 0]
    (top, bottom), (left, right) = (same_padding(k, d) for k, d in zip(kernel_size, dilation))
    return [top, left], [0, right - left, 0, bottom - top]


def output_size(
    input_size: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int] | str,
    dilation: Sequence[int],
) -> tuple[int, ...]:
    """Output extent per spatial dimension: (in + 2*pad - dilation*(kernel-1) - 1) // stride + 1.

    Raises ValueError, naming the dimension, where the dilated kernel is wider than the padded
    input or a value is out of range.
    """
    for name, values, minimum in (
        ("input_size", input_size, 1),
        ("kernel_size", kernel_size, 1),
        ("stride", stride, 1),
        ("dilation", dilation, 1),
    ):
        if min(values) < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {tuple(values)}")
    if padding == "same":
        if max(stride) != 1:
            raise ValueError(f"padding='same' needs stride 1, got stride={tuple(stride)}")
        return tuple(input_size)
    if padding == "valid":
        padding = (0,) * len(input_size)
    if min(padding) < 0:
        raise ValueError(f"padding must be non-negative, got {tuple(padding)}")
    sizes = []
    for dim, (n, k, s, p, d) in enumerate(zip(input_size, kernel_size, stride, padding, dilation)):
        span = d * (k - 1) + 1
        if span > n + 2 * p:
            raise ValueError(
                f"kernel does not fit the padded input in spatial dim {dim}: dilated kernel {span} "
                f"(dilation * (kernel - 1) + 1) > padded input {n + 2 * p} "
                f"(input {n} + 2 * padding {p})"
            )
        sizes.append((n + 2 * p - span) // s + 1)
    return tuple(sizes)


def padding_arg(padding: IntOrSeq | str, n: int) -> tuple[int, ...] | str:
    """'valid', 'same', or an int or n ints as an n-tuple, for n spatial dims."""
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            forms = "an int, 'valid' or 'same'" if n == 1 else "an int, a pair, 'valid' or 'same'"
            raise ValueError(f"padding must be {forms}, got {padding!r}")
        return padding
    return ntuple(padding, n, "padding")


def _local_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: IntOrSeq,
    padding: IntOrSeq | str,
    dilation: IntOrSeq,
    force_unfold: bool,
) -> Tensor:
    stride = ntuple(stride, 2, "stride")
    dilation = ntuple(dilation, 2, "dilation")
    padding = padding_arg(padding, 2)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
        if weight.dim() != 6 or min(dilation) < 1:
            padding = "valid"  # malformed weight or dilation: the operator reports it
    padding, extra_padding = operator_padding(padding, weight.shape[-2:], dilation)
    if any(extra_padding):
        input = F.pad(input, extra_padding)
    return _forward_op(input, weight, bias, stride, padding, dilation, force_unfold)


def local_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrSeq = 1,
    padding: IntOrSeq | str = 0,
    dilation: IntOrSeq = 1,
) -> Tensor:
    r"""Locally-connected 2D convolution: a conv2d whose filters differ at every output location.

    .. code-block:: text

        out[n, o, i, j] = bias + sum_{c, p, q} weight[i, j, o, c, p, q]
                          * input_padded[n, c, i * stride_h + p * dilation_h,
                                               j * stride_w + q * dilation_w]

    Args:
        input (Tensor): (N, C_in, H, W), any strides (channels_last is read in place).
        weight (Tensor): (OH, OW, C_out, C_in, KH, KW): ``weight[i, j]`` is the conv2d weight
            (C_out, C_in, KH, KW) of output location (i, j).
        bias (Tensor, optional): (C_out, OH, OW), one per location, or (C_out,), shared by all
            locations. Default: None.
        stride (int or (int, int)): step between neighbouring locations' windows. Default: 1.
        padding (int, (int, int), 'valid' or 'same'): zeros added on both sides, none
            ('valid'), or as much as keeps the input's size ('same', stride 1 only; where the
            total is odd the extra row or column goes after, as in conv2d). Default: 0.
        dilation (int or (int, int)): spacing between a filter's taps. Default: 1.

    input, weight and bias must have the same floating dtype (float64, float32, float16 or
    bfloat16) and device. The weight's (OH, OW) must match the geometry:
    OH = (H + 2 * padding_h - dilation_h * (KH - 1) - 1) // stride_h + 1, likewise OW.

    Returns:
        Tensor: (N, C_out, OH, OW), contiguous. Differentiable in input, weight and bias (to any
        order), traceable by torch.compile, and run in the autocast dtype under autocast.

    Example::

        >>> x = torch.randn(8, 3, 32, 32)
        >>> w = torch.randn(15, 15, 16, 3, 3, 3)  # (OH, OW, C_out, C_in, KH, KW)
        >>> lc_cuda.local_conv2d(x, w, torch.randn(16), stride=2).shape
        torch.Size([8, 16, 15, 15])
    """
    return _local_conv2d(input, weight, bias, stride, padding, dilation, force_unfold=False)


def unfold_local_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrSeq = 1,
    padding: IntOrSeq | str = 0,
    dilation: IntOrSeq = 1,
) -> Tensor:
    """local_conv2d computed by the unfold + batched-matmul fallback on every device.

    The same operator, autograd, compile and autocast behaviour as local_conv2d; only the
    kernels differ. It is the baseline the CUDA kernels are measured against.
    """
    return _local_conv2d(input, weight, bias, stride, padding, dilation, force_unfold=True)


def local_conv1d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    r"""Locally-connected 1D convolution: a conv1d whose filters differ at every output position.

    .. code-block:: text

        out[n, o, i] = bias + sum_{c, q} weight[i, o, c, q]
                       * input_padded[n, c, i * stride + q * dilation]

    Computed by local_conv2d on views (no copies).

    Args:
        input (Tensor): (N, C_in, L).
        weight (Tensor): (OL, C_out, C_in, K): ``weight[i]`` is the conv1d weight of position i.
        bias (Tensor, optional): (C_out, OL), one per position, or (C_out,) shared. Default: None.
        stride (int): step between neighbouring positions' windows. Default: 1.
        padding (int, 'valid' or 'same'): zeros added at both ends, none ('valid'), or as many
            as keep the length ('same', stride 1 only). Default: 0.
        dilation (int): spacing between a filter's taps. Default: 1.

    Returns:
        Tensor: (N, C_out, OL), OL = (L + 2 * padding - dilation * (K - 1) - 1) // stride + 1.

    Example::

        >>> x = torch.randn(2, 4, 100)
        >>> w = torch.randn(48, 8, 4, 5)  # (OL, C_out, C_in, K) for stride 2
        >>> lc_cuda.local_conv1d(x, w, stride=2).shape
        torch.Size([2, 8, 48])
    """
    if input.dim() != 3:
        raise ValueError(
            f"input must be 3-D (N, C_in, L), got {input.dim()}-D of shape {tuple(input.shape)}"
        )
    if weight.dim() != 4:
        raise ValueError(
            "weight must be 4-D (OL, C_out, C_in, K), "
            f"got {weight.dim()}-D of shape {tuple(weight.shape)}"
        )
    if bias is not None and bias.dim() not in (1, 2):
        raise ValueError(
            f"bias must be (C_out, OL) or (C_out,), got {bias.dim()}-D of shape {tuple(bias.shape)}"
        )
    (stride,) = ntuple(stride, 1, "stride")
    (dilation,) = ntuple(dilation, 1, "dilation")
    padding = padding_arg(padding, 1)
    out = local_conv2d(
        input.unsqueeze(2),
        weight.unsqueeze(0).unsqueeze(4),
        bias.unsqueeze(1) if bias is not None and bias.dim() == 2 else bias,
        (1, stride),
        padding if isinstance(padding, str) else (0, padding[0]),
        (1, dilation),
    )
    return out.squeeze(2)


def _fake_output_shape(input, weight, bias, stride, padding, dilation) -> tuple:
    """The meta kernel's checks: the C++ checks' conditions, so that meta and fake tensors
    (torch.compile, deferred init) fail where real ones would, instead of taking a wrong shape."""
    torch._check(
        input.dim() == 4, lambda: f"input must be 4-D (N, C_in, H, W), got {input.dim()}-D"
    )
    torch._check(
        weight.dim() == 6,
        lambda: f"weight must be 6-D (OH, OW, C_out, C_in, KH, KW), got {weight.dim()}-D",
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
    torch._check(
        weight.shape[3] == input.shape[1],
        lambda: (
            f"input.shape[1] is not valid: got {input.shape[1]}, expected {weight.shape[3]} "
            "input channels (C_in, weight.shape[3])"
        ),
    )
    out_hw = output_size(input.shape[2:], weight.shape[4:], stride, padding, dilation)
    expected = (*out_hw, weight.shape[2], input.shape[1], *weight.shape[4:])
    torch._check(
        tuple(weight.shape) == expected,
        lambda: f"weight.shape is not valid: got {list(weight.shape)}, expected {list(expected)}",
    )
    out_channels = weight.shape[2]
    if bias is not None:
        torch._check(
            tuple(bias.shape) in ((out_channels,), (out_channels, *out_hw)),
            lambda: (
                f"bias.shape is not valid: got {list(bias.shape)}, expected "
                f"{[out_channels, *out_hw]} (C_out, OH, OW) or [{out_channels}] (C_out,)"
            ),
        )
    return (input.shape[0], out_channels, *out_hw)


@torch.library.register_fake("lc_cuda::local_conv2d")
def _local_conv2d_fake(input, weight, bias, stride, padding, dilation, force_unfold=False):
    return input.new_empty(_fake_output_shape(input, weight, bias, stride, padding, dilation))


@torch.library.register_fake("lc_cuda::local_conv2d_backward")
def _local_conv2d_backward_fake(
    grad_output,
    input,
    weight,
    stride,
    padding,
    dilation,
    shared_bias,
    output_mask,
    force_unfold=False,
):
    out_shape = _fake_output_shape(input, weight, None, stride, padding, dilation)
    torch._check(
        tuple(grad_output.shape) == out_shape and grad_output.dtype == input.dtype,
        lambda: (
            f"grad_output.shape is not valid: got {list(grad_output.shape)}, expected "
            f"{list(out_shape)} (N, C_out, OH, OW)"
        ),
    )
    bias_shape = out_shape[1:2] if shared_bias else out_shape[1:]
    return (
        input.new_empty(input.shape if output_mask[0] else (0,)),
        weight.new_empty(weight.shape if output_mask[1] else (0,)),
        grad_output.new_empty(bias_shape if output_mask[2] else (0,)),
    )


def _forward_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, force_unfold = inputs
    ctx.save_for_backward(input, weight)
    ctx.geometry = (stride, padding, dilation)
    ctx.shared_bias = bias is not None and bias.dim() == 1
    ctx.force_unfold = force_unfold


def _forward_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    output_mask = list(ctx.needs_input_grad[:3])
    grads = _backward_op(
        grad_output, input, weight, *ctx.geometry, ctx.shared_bias, output_mask, ctx.force_unfold
    )
    grads = [grad if needed else None for grad, needed in zip(grads, output_mask)]
    return *grads, None, None, None, None


def _backward_setup_context(ctx, inputs, output):
    grad_output, input, weight, stride, padding, dilation, shared_bias, output_mask, force = inputs
    ctx.save_for_backward(grad_output, input, weight)
    ctx.geometry = (stride, padding, dilation)
    ctx.shared_bias = shared_bias
    ctx.output_mask = output_mask
    ctx.force_unfold = force


def _backward_backward(ctx, grad_grad_input, grad_grad_weight, grad_grad_bias):
    """Derivatives of (grad_input, grad_weight, grad_bias) = backward(grad_output, input, weight).

    grad_input is linear in (grad_output, weight), grad_weight in (grad_output, input), and
    grad_bias in grad_output, so with g* the incoming gradients:
      d/d grad_output = forward(g_input, weight) + forward(input, g_weight) + broadcast(g_bias)
      d/d input       = grad_input computed with weight := g_weight
      d/d weight      = grad_weight computed with input := g_input
    """
    grad_output, input, weight = ctx.saved_tensors
    geometry, force = ctx.geometry, ctx.force_unfold
    g_input, g_weight, g_bias = (
        grad if produced else None
        for grad, produced in zip(
            (grad_grad_input, grad_grad_weight, grad_grad_bias), ctx.output_mask
        )
    )
    needs_grad_output, needs_input, needs_weight = ctx.needs_input_grad[:3]

    grad_grad_output = None
    if needs_grad_output:
        terms = []
        if g_input is not None:
            terms.append(_forward_op(g_input, weight, None, *geometry, force))
        if g_weight is not None:
            terms.append(_forward_op(input, g_weight, None, *geometry, force))
        if g_bias is not None:
            per_sample = g_bias.view(-1, 1, 1) if ctx.shared_bias else g_bias
            terms.append(per_sample.expand_as(grad_output))
        grad_grad_output = sum(terms) if terms else None

    grad_input = None
    if needs_input and g_weight is not None:
        grad_input = _backward_op(
            grad_output, input, g_weight, *geometry, False, [True, False, False], force
        )[0]
    grad_weight = None
    if needs_weight and g_input is not None:
        grad_weight = _backward_op(
            grad_output, g_input, weight, *geometry, False, [False, True, False], force
        )[1]
    return grad_grad_output, grad_input, grad_weight, None, None, None, None, None, None


torch.library.register_autograd(
    "lc_cuda::local_conv2d", _forward_backward, setup_context=_forward_setup_context
)
torch.library.register_autograd(
    "lc_cuda::local_conv2d_backward", _backward_backward, setup_context=_backward_setup_context
)
