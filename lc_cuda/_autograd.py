"""The autograd, torch.func and tracing rules of lc_cuda's operators.

The operators (csrc/op_registration.cpp) are

    local_conv(input, weight, bias, stride, padding, dilation, groups, share, share_mode, ...)
    local_conv_backward(grad_output, input, weight, ..., shared_bias, output_mask, ...)
    local_conv_transpose(input, weight, bias, stride, padding, output_padding, dilation, ...)

local_conv is bilinear in (input, weight) plus the bias, so every derivative of every order is
again one of these operators: grad_input is linear in (grad_output, weight), grad_weight in
(grad_output, input), the transposed op is grad_input with its input as grad_output.

Each operator has an autograd.Function here (LocalConv, LocalConvBackward, LocalConvTranspose)
with backward, jvp (forward mode) and vmap rules, which is what torch.func needs: grad, jacrev,
jvp, vmap and their compositions (per-sample gradients: vmap(grad(f))). The functions and layers
call them in eager mode, inference included: a C++ warning raised inside an operator called
straight through torch.ops (the first-use check's) does not become a Python warning, while one
raised under Function.apply does. Traced code (torch.compile, torch.export, TorchScript) calls the
operators themselves, for which this module registers fake kernels and the same backward rules
through torch.library.

vmap rules: a batch of inputs folds into the operator's own batch; a batch of weights (or
biases) becomes groups of the operator, one set of groups per batch element, so a batch of
per-sample filters is still one call.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from . import _extension  # noqa: F401  (registers torch.ops.lc_cuda)
from ._arguments import region_index

_forward_op = torch.ops.lc_cuda.local_conv.default
_backward_op = torch.ops.lc_cuda.local_conv_backward.default
_transpose_op = torch.ops.lc_cuda.local_conv_transpose.default

# The non-tensor arguments every call carries, in the operators' order:
# stride, padding (before, after per dimension), dilation, groups, share, share_mode, force_unfold.
GEOMETRY_ARGS = 7


def _op_args(stride, padding, dilation, groups, share, share_mode, force_unfold):
    return (
        list(stride),
        list(padding),
        list(dilation),
        groups,
        list(share),
        share_mode,
        force_unfold,
    )


def _call_below_autograd(op, *args):
    """op(*args) inside a Function's forward, where the Function is the autograd: below the
    Autograd dispatch keys, past the Python autograd kernel that register_autograd (below) gives
    the operator for traced code, which would only find grad mode off and redispatch (6 to 15 us
    of each eager call)."""
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _traced() -> bool:
    """Inside torch.compile, torch.export or TorchScript, where the operators are called
    directly (their fake kernels and registered autograd serve the tracer)."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def _autocast(*tensors):
    """The tensors in the autocast dtype where autocast is on for their device, as the
    operators' own autocast kernels would cast them (so that the Functions save what the
    operators compute with)."""
    device = tensors[0].device.type
    # The operators' autocast kernels are registered for these two (as for Conv).
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    # ATen's rule (cached_cast): floating tensors other than float64 take the autocast dtype.
    return tuple(
        t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
        for t in tensors
    )


def conv(input, weight, bias, stride, padding, dilation, groups, share, share_mode, force_unfold):
    """local_conv, differentiable by autograd and every torch.func transform."""
    args = (stride, padding, dilation, groups, share, share_mode, force_unfold)
    if _traced():
        return _forward_op(input, weight, bias, *_op_args(*args))
    return LocalConv.apply(*_autocast(input, weight, bias), *args)


def conv_backward(grad_output, input, weight, *geometry, shared_bias, output_mask):
    """local_conv_backward, itself differentiable (double backward and beyond). geometry as for
    conv: stride, padding, dilation, groups, share, share_mode, force_unfold."""
    *layout, force_unfold = geometry
    if _traced():
        args = _op_args(*geometry)
        return _backward_op(
            grad_output, input, weight, *args[:6], shared_bias, list(output_mask), force_unfold
        )
    return LocalConvBackward.apply(
        grad_output, input, weight, *layout, shared_bias, tuple(output_mask), force_unfold
    )


def conv_transpose(input, weight, bias, stride, padding, output_padding, *geometry):
    """local_conv_transpose; geometry: dilation, groups, share, share_mode, force_unfold."""
    if _traced():
        return _transpose_op(
            input, weight, bias, list(stride), list(padding), list(output_padding),
            list(geometry[0]), geometry[1], list(geometry[2]), geometry[3], geometry[4],
        )  # fmt: skip
    return LocalConvTranspose.apply(
        *_autocast(input, weight, bias), stride, padding, output_padding, *geometry
    )


def bias_per_location(bias: Tensor, output_size, share, share_mode) -> Tensor:
    """A bias as added to the output, (C_out, *output_size): a shared (C_out,) bias broadcast,
    a per-region one repeated over each region's locations."""
    if bias.dim() == 1:
        return bias.view(-1, *[1] * len(output_size)).expand(-1, *output_size)
    for dim, (size, block) in enumerate(zip(output_size, share)):
        bias = bias.index_select(dim + 1, region_index(size, block, share_mode).to(bias.device))
    return bias


def _shape_only(like: Tensor, shape) -> Tensor:
    """A tensor of `like`'s dtype and device with the given shape and no data (every stride 0),
    for an operator argument that a call reads only the shape of: the input of a grad_input-only
    backward call, the weight of a grad_weight-only one."""
    return like.new_empty(()).expand(shape)


def _batch_first(tensor: Tensor | None, bdim, batch_size: int) -> Tensor | None:
    """The vmapped dimension first; an unvmapped tensor expanded along a new first dimension."""
    if tensor is None:
        return None
    if bdim is None:
        return tensor.expand(batch_size, *tensor.shape)
    return tensor.movedim(bdim, 0)


def _channels_grouped(tensor: Tensor) -> Tensor:
    """(B, N, C, *S) -> (N, B*C, *S): the batch as groups of channels."""
    return tensor.transpose(0, 1).flatten(1, 2)


def _channels_ungrouped(tensor: Tensor, batch_size: int) -> Tensor:
    """(N, B*C, *S) -> (B, N, C, *S)."""
    return tensor.unflatten(1, (batch_size, -1)).transpose(0, 1)


def _weight_grouped(weight: Tensor, dims: int) -> Tensor:
    """(B, *R, C_out, C_in/g, *K) -> (*R, B*C_out, C_in/g, *K)."""
    return weight.movedim(0, dims).flatten(dims, dims + 1)


def _weight_ungrouped(weight: Tensor, dims: int, batch_size: int) -> Tensor:
    return weight.unflatten(dims, (batch_size, -1)).movedim(dims, 0)


class LocalConv(torch.autograd.Function):
    @staticmethod
    def forward(input, weight, bias, *geometry):
        return _call_below_autograd(_forward_op, input, weight, bias, *_op_args(*geometry))

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, *geometry = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)
        ctx.geometry = tuple(geometry)
        ctx.shared_bias = bias is not None and bias.dim() == 1
        ctx.output_size = tuple(output.shape[2:])

    @staticmethod
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        mask = tuple(ctx.needs_input_grad[:3])
        grads = conv_backward(
            grad_output, input, weight, *ctx.geometry, shared_bias=ctx.shared_bias,
            output_mask=mask,
        )  # fmt: skip
        return *(g if needed else None for g, needed in zip(grads, mask)), *[None] * GEOMETRY_ARGS

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, *_):
        input, weight = ctx.saved_tensors
        _, _, _, _, share, share_mode, _ = ctx.geometry
        terms = []
        if input_t is not None:
            terms.append(conv(input_t, weight, None, *ctx.geometry))
        if weight_t is not None:
            terms.append(conv(input, weight_t, None, *ctx.geometry))
        if bias_t is not None:
            terms.append(bias_per_location(bias_t, ctx.output_size, share, share_mode))
        return sum(terms[1:], terms[0])

    @staticmethod
    def vmap(info, in_dims, input, weight, bias, *geometry):
        input_dim, weight_dim, bias_dim = in_dims[:3]
        size = info.batch_size
        if weight_dim is None and bias_dim is None:
            batch = input.movedim(input_dim, 0)
            out = conv(batch.flatten(0, 1), weight, bias, *geometry)
            return out.unflatten(0, batch.shape[:2]), 0
        # Per-sample filters: batch element b is the b-th set of groups of one grouped call.
        stride, padding, dilation, groups, share, share_mode, force = geometry
        dims = len(stride)
        out = conv(
            _channels_grouped(_batch_first(input, input_dim, size)),
            _weight_grouped(_batch_first(weight, weight_dim, size), dims),
            None if bias is None else _batch_first(bias, bias_dim, size).flatten(0, 1),
            stride, padding, dilation, groups * size, share, share_mode, force,
        )  # fmt: skip
        return _channels_ungrouped(out, size), 0


class LocalConvBackward(torch.autograd.Function):
    """Arguments in local_conv_backward's order: grad_output, input, weight, stride, padding,
    dilation, groups, share, share_mode, shared_bias, output_mask, force_unfold."""

    @staticmethod
    def forward(grad_output, input, weight, *args):
        *layout, shared_bias, output_mask, force_unfold = args
        op_args = _op_args(*layout, force_unfold)
        return _call_below_autograd(
            _backward_op,
            grad_output, input, weight, *op_args[:6], shared_bias, list(output_mask), force_unfold,
        )  # fmt: skip

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, input, weight, *args = inputs
        *layout, shared_bias, output_mask, force_unfold = args
        ctx.save_for_backward(grad_output, input, weight)
        ctx.save_for_forward(grad_output, input, weight)
        ctx.geometry = (*layout, force_unfold)
        ctx.shared_bias, ctx.output_mask = shared_bias, tuple(output_mask)
        ctx.mark_non_differentiable(*(o for o, made in zip(output, output_mask) if not made))

    @staticmethod
    def backward(ctx, grad_grad_input, grad_grad_weight, grad_grad_bias):
        """Derivatives of (grad_input, grad_weight, grad_bias) = backward(grad_output, input,
        weight). With g* the incoming gradients:
          d/d grad_output = forward(g_input, weight) + forward(input, g_weight) + g_bias spread
          d/d input       = grad_input computed with weight := g_weight
          d/d weight      = grad_weight computed with input := g_input
        """
        grad_output, input, weight = ctx.saved_tensors
        geometry = ctx.geometry
        _, _, _, _, share, share_mode, _ = geometry
        incoming = (grad_grad_input, grad_grad_weight, grad_grad_bias)
        g_input, g_weight, g_bias = (
            grad if made else None for grad, made in zip(incoming, ctx.output_mask)
        )
        needs_grad_output, needs_input, needs_weight = ctx.needs_input_grad[:3]
        grad_grad_output = None
        if needs_grad_output:
            terms = []
            if g_input is not None:
                terms.append(conv(g_input, weight, None, *geometry))
            if g_weight is not None:
                terms.append(conv(input, g_weight, None, *geometry))
            if g_bias is not None:
                spread = bias_per_location(g_bias, grad_output.shape[2:], share, share_mode)
                terms.append(spread.expand_as(grad_output))
            grad_grad_output = sum(terms[1:], terms[0]) if terms else None
        grad_input = None
        if needs_input and g_weight is not None:
            grad_input = conv_backward(
                grad_output, input, g_weight, *geometry, shared_bias=False,
                output_mask=(True, False, False),
            )[0]  # fmt: skip
        grad_weight = None
        if needs_weight and g_input is not None:
            grad_weight = conv_backward(
                grad_output, g_input, weight, *geometry, shared_bias=False,
                output_mask=(False, True, False),
            )[1]  # fmt: skip
        return grad_grad_output, grad_input, grad_weight, *[None] * (GEOMETRY_ARGS + 2)

    @staticmethod
    def jvp(ctx, grad_output_t, input_t, weight_t, *_):
        """Each output is linear in each of its two tensors: the tangent of grad_input is
        grad_input(grad_output_t, weight) + grad_input(grad_output, weight_t), and so on."""
        grad_output, input, weight = ctx.saved_tensors
        mask, shared = ctx.output_mask, ctx.shared_bias

        def backward(go, x, w):
            return conv_backward(go, x, w, *ctx.geometry, shared_bias=shared, output_mask=mask)

        tangents = []
        if grad_output_t is not None:
            tangents.append(backward(grad_output_t, input, weight))
        if input_t is not None:
            tangents.append((None, backward(grad_output, input_t, weight)[1], None))
        if weight_t is not None:
            tangents.append((backward(grad_output, input, weight_t)[0], None, None))
        results = []
        for index, made in enumerate(mask):
            terms = [t[index] for t in tangents if t[index] is not None]
            # None where the output was not made: that empty output is not differentiable
            results.append(sum(terms[1:], terms[0]) if made and terms else None)
        return tuple(results)

    @staticmethod
    def vmap(info, in_dims, grad_output, input, weight, *args):
        *layout, shared_bias, output_mask, force = args
        stride, padding, dilation, groups, share, share_mode = layout
        geometry = (*layout, force)
        grad_dim, input_dim, weight_dim = in_dims[:3]
        size, dims = info.batch_size, len(stride)
        # One element's tensors, for the shapes of arguments whose data a call does not read.
        one_input = input if input_dim is None else input.select(input_dim, 0)
        one_weight = weight if weight_dim is None else weight.select(weight_dim, 0)
        results, out_dims = [input.new_empty((0,))] * 3, [None] * 3
        if output_mask[0] and weight_dim is None:
            # A batch of grad_output folds into the operator's batch; input's data is not read.
            grads = _batch_first(grad_output, grad_dim, size)
            shape = (size * one_input.shape[0], *one_input.shape[1:])
            results[0] = conv_backward(
                grads.flatten(0, 1), _shape_only(input, shape), weight, *geometry,
                shared_bias=shared_bias, output_mask=(True, False, False),
            )[0].unflatten(0, grads.shape[:2])  # fmt: skip
            out_dims[0] = 0
        grouped_mask = (output_mask[0] and weight_dim is not None, *output_mask[1:])
        if any(grouped_mask):
            # One set of groups per batch element: grad_weight and grad_bias then come out per
            # element (their sums over the batch stop at its bounds).
            grads = _channels_grouped(_batch_first(grad_output, grad_dim, size))
            inputs = _channels_grouped(_batch_first(input, input_dim, size))
            if grouped_mask[0]:
                weights = _weight_grouped(_batch_first(weight, weight_dim, size), dims)
            else:  # grad_weight and grad_bias do not read the weight
                shape = list(one_weight.shape)
                shape[dims] *= size
                weights = _shape_only(weight, shape)
            grouped = conv_backward(
                grads, inputs, weights, stride, padding, dilation, groups * size, share,
                share_mode, force, shared_bias=shared_bias, output_mask=grouped_mask,
            )  # fmt: skip
            if grouped_mask[0]:
                results[0], out_dims[0] = _channels_ungrouped(grouped[0], size), 0
            if grouped_mask[1]:
                results[1], out_dims[1] = _weight_ungrouped(grouped[1], dims, size), 0
            if grouped_mask[2]:
                results[2], out_dims[2] = grouped[2].unflatten(0, (size, -1)), 0
        return tuple(results), tuple(out_dims)


class LocalConvTranspose(torch.autograd.Function):
    """The adjoint of local_conv in its input: out = grad_input of local_conv with grad_output
    := input. Its input gradient is local_conv of the incoming gradient, its weight gradient
    local_conv's grad_weight with (grad_output, input) := (input, incoming gradient)."""

    @staticmethod
    def forward(input, weight, bias, stride, padding, output_padding, *geometry):
        dilation, groups, share, share_mode, force = geometry
        return _call_below_autograd(
            _transpose_op,
            input, weight, bias, list(stride), list(padding), list(output_padding),
            list(dilation), groups, list(share), share_mode, force,
        )  # fmt: skip

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, stride, padding, output_padding, *geometry = inputs
        ctx.save_for_backward(input, weight)
        ctx.save_for_forward(input, weight)
        dilation, groups, share, share_mode, force = geometry
        ctx.transpose_args = (stride, padding, output_padding, *geometry)
        ctx.bias_dim = None if bias is None else bias.dim()
        # The gradients are local_conv calls over this op's result, which must have exactly this
        # op's input positions. output_padding may reach the stride where the dilation is larger
        # (as ConvTranspose allows), and the result then has extra stride-multiples of positions
        # at the end that no input position reaches: they come off the padding after, and where
        # that is not enough, off the result (`unread`).
        after = []
        ctx.unread = []
        for s, before_after, extra in zip(
            stride, zip(padding[0::2], padding[1::2]), output_padding
        ):
            excess = s * (extra // s)
            after.append(max(before_after[1] - excess, 0))
            ctx.unread.append(max(excess - before_after[1], 0))
        forward_padding = [side for b, a in zip(padding[0::2], after) for side in (b, a)]
        ctx.forward_geometry = (stride, forward_padding, dilation, groups, share, share_mode, force)

    @staticmethod
    def backward(ctx, grad_out):
        input, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_bias_source = grad_out
        for dim, unread in enumerate(ctx.unread):
            if unread:
                grad_out = grad_out.narrow(dim + 2, 0, grad_out.shape[dim + 2] - unread)
        grad_input = conv(grad_out, weight, None, *ctx.forward_geometry) if needs_input else None
        grad_weight = None
        if needs_weight:
            grad_weight = conv_backward(
                input, grad_out, weight, *ctx.forward_geometry, shared_bias=False,
                output_mask=(False, True, False),
            )[1]  # fmt: skip
        grad_bias = None
        if needs_bias:
            grad_bias = (
                grad_bias_source.sum([0, *range(2, grad_bias_source.dim())])
                if ctx.bias_dim == 1
                else grad_bias_source.sum(0)
            )
        return grad_input, grad_weight, grad_bias, *[None] * 8

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, *_):
        input, weight = ctx.saved_tensors
        terms = []
        if input_t is not None:
            terms.append(conv_transpose(input_t, weight, None, *ctx.transpose_args))
        if weight_t is not None:
            terms.append(conv_transpose(input, weight_t, None, *ctx.transpose_args))
        if bias_t is not None:
            spatial = input.dim() - 2
            terms.append(bias_t.view(-1, *[1] * spatial) if bias_t.dim() == 1 else bias_t)
        return sum(terms[1:], terms[0])

    @staticmethod
    def vmap(info, in_dims, input, weight, bias, stride, padding, output_padding, *geometry):
        input_dim, weight_dim, bias_dim = in_dims[:3]
        size = info.batch_size
        args = (stride, padding, output_padding, *geometry)
        if weight_dim is None and bias_dim is None:
            batch = input.movedim(input_dim, 0)
            out = conv_transpose(batch.flatten(0, 1), weight, bias, *args)
            return out.unflatten(0, batch.shape[:2]), 0
        dilation, groups, share, share_mode, force = geometry
        dims = len(stride)
        out = conv_transpose(
            _channels_grouped(_batch_first(input, input_dim, size)),
            _weight_grouped(_batch_first(weight, weight_dim, size), dims),
            None if bias is None else _batch_first(bias, bias_dim, size).flatten(0, 1),
            stride, padding, output_padding, dilation, groups * size, share, share_mode, force,
        )  # fmt: skip
        return _channels_ungrouped(out, size), 0


# Function.apply binds each call's arguments to forward's signature, which inspect.signature
# works out afresh each time (about 25 us of each call's Python); a signature set on the function
# is read back instead.
for _function in (LocalConv, LocalConvBackward, LocalConvTranspose):
    _function.forward.__signature__ = inspect.signature(_function.forward)

# Traced code calls the operators themselves: their autograd is the same as the Functions'.
torch.library.register_autograd(
    "lc_cuda::local_conv", LocalConv.backward, setup_context=LocalConv.setup_context
)
torch.library.register_autograd(
    "lc_cuda::local_conv_backward",
    LocalConvBackward.backward,
    setup_context=LocalConvBackward.setup_context,
)
torch.library.register_autograd(
    "lc_cuda::local_conv_transpose",
    LocalConvTranspose.backward,
    setup_context=LocalConvTranspose.setup_context,
)
