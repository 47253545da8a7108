"""LocallyConnected1d and LocallyConnected2d: nn.Modules over local_conv1d / local_conv2d."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import IntOrSeq, ntuple, operator_padding, output_size, padding_arg


class _LocallyConnectedNd(nn.Module):
    """Shared parameters, initialisation and repr of the 1d and 2d layers.

    weight: (*output_size, out_channels, in_channels, *kernel_size)
    bias:   (out_channels, *output_size), or (out_channels,) with shared_bias=True
    """

    spatial_dims: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: IntOrSeq,
        kernel_size: IntOrSeq,
        stride: IntOrSeq,
        padding: IntOrSeq | str,
        dilation: IntOrSeq,
        bias: bool,
        shared_bias: bool,
        device,
        dtype,
    ):
        super().__init__()
        n = self.spatial_dims
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.input_size = ntuple(input_size, n, "input_size")
        self.kernel_size = ntuple(kernel_size, n, "kernel_size")
        self.stride = ntuple(stride, n, "stride")
        self.dilation = ntuple(dilation, n, "dilation")
        self.padding = padding_arg(padding, n)
        self.output_size = output_size(
            self.input_size, self.kernel_size, self.stride, self.padding, self.dilation
        )
        self.shared_bias = shared_bias
        # forward calls the operator itself, with the arguments local_conv2d would compute, so
        # that the layers script with torch.jit.script. 1D layers run on 2D views of height 1.
        ones = [1] * (2 - n)
        self._op_stride = ones + list(self.stride)
        self._op_dilation = ones + list(self.dilation)
        self._op_padding, self._extra_padding = operator_padding(
            self.padding if isinstance(self.padding, str) else [0] * (2 - n) + list(self.padding),
            ones + list(self.kernel_size),
            self._op_dilation,
        )
        self._layer_name = type(self).__name__
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.empty(
                (*self.output_size, out_channels, in_channels, *self.kernel_size), **factory
            )
        )
        if bias:
            bias_shape = (out_channels,) if shared_bias else (out_channels, *self.output_size)
            self.bias = nn.Parameter(torch.empty(bias_shape, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Conv's default init, per location: kaiming_uniform_(a=sqrt(5)) for the weight and
        U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias, fan_in = C_in * prod(kernel_size).

        Both bounds equal 1/sqrt(fan_in). They are applied directly, because nn.init would take
        the fan-in of the whole (*output_size, C_out, C_in, *kernel) tensor, not of one filter.
        """
        bound = 1.0 / math.sqrt(self.in_channels * math.prod(self.kernel_size))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def _check_input_size(self, input: Tensor) -> None:
        shape = list(input.shape)
        # Concatenated rather than unpacked: TorchScript has no starred list displays.
        expected = [self.in_channels] + list(self.input_size)  # noqa: RUF005
        if len(shape) == len(expected) + 1 and shape[1:] != expected:
            raise ValueError(_input_shape_message(self._layer_name, expected, shape))

    def _local_conv2d(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self._extra_padding != [0, 0, 0, 0]:
            input = F.pad(input, self._extra_padding)
        return torch.ops.lc_cuda.local_conv2d(
            input, weight, bias, self._op_stride, self._op_padding, self._op_dilation
        )

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
            f"output_size={self.output_size}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0,) * self.spatial_dims:
            text += f", padding={self.padding!r}"
        if self.dilation != (1,) * self.spatial_dims:
            text += f", dilation={self.dilation}"
        if self.bias is None:
            text += ", bias=False"
        elif self.shared_bias:
            text += ", shared_bias=True"
        return text


def _input_shape_message(layer: str, expected: list[int], shape: list[int]) -> str:
    """Why an input of `shape` does not fit a layer that takes (N, *expected), expected being
    (C_in, *input_size), and the fix where it is clear. Scriptable: forward calls it."""
    in_channels = expected[0]
    got = _shape_text(shape)
    if shape[-1:] + shape[1:-1] == expected:
        channels_first = "(N, " + ", ".join([str(size) for size in expected]) + ")"
        return (
            f"{layer} takes channels-first input {channels_first}, got {got}, which is "
            "channels-last: pass input.movedim(-1, 1)"
        )
    if shape[1] != in_channels:
        return (
            f"{layer} expected {in_channels} input channels (in_channels), got input of shape {got}"
        )
    input_size = _shape_text(expected[1:])
    return f"{layer} was built for input size {input_size}, got input of shape {got}"


class LocallyConnected2d(_LocallyConnectedNd):
    r"""A 2D convolution whose filters differ at every output location (unshared weights).

    Where ``nn.Conv2d`` slides one filter bank over the input, this layer holds one
    ``(out_channels, in_channels, KH, KW)`` filter bank per output location ``(i, j)``:

    .. code-block:: text

        out[n, o, i, j] = bias[o, i, j] + sum_{c, p, q} weight[i, j, o, c, p, q]
                          * input_padded[n, c, i * stride_h + p * dilation_h,
                                               j * stride_w + q * dilation_w]

    The number of locations depends on the input's height and width, so the input size is fixed
    when the layer is built.

    Args:
        in_channels (int): channels of the input, C_in.
        out_channels (int): channels of the output, C_out.
        input_size (int or (int, int)): (H, W) of the inputs the layer takes.
        kernel_size (int or (int, int)): (KH, KW) of each location's filters.
        stride (int or (int, int)): step between neighbouring locations' windows. Default: 1.
        padding (int, (int, int), 'valid' or 'same'): zeros added on both sides of the input
            (an int or a (height, width) pair), none ('valid'), or as much as keeps the output
            the input's size ('same', stride 1 only; where the total is odd the extra row or
            column goes after, as in ``nn.Conv2d``). Default: 0.
        dilation (int or (int, int)): spacing between a filter's taps. Default: 1.
        bias (bool): add a learnable bias. Default: True.
        shared_bias (bool): one bias per output channel, shared by all locations, as in
            ``nn.Conv2d``, instead of one per channel and location. Default: False.
        device, dtype: of the parameters, as for every torch.nn layer.

    Shape:
        - Input: (N, C_in, H, W), with (H, W) == input_size. Channels-last data (N, H, W, C)
          must be moved first: ``input.movedim(-1, 1)``.
        - Output: (N, C_out, OH, OW), where
          OH = (H + 2 * padding_h - dilation_h * (KH - 1) - 1) // stride_h + 1, likewise OW.

    Attributes:
        weight (Tensor): (OH, OW, C_out, C_in, KH, KW); ``weight[i, j]`` is exactly the weight
            of an ``nn.Conv2d``, the filter bank of location (i, j). Initialised per location
            like ``nn.Conv2d``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C_in * KH * KW.
        bias (Tensor or None): (C_out, OH, OW), or (C_out,) with shared_bias=True; initialised
            like the weight.
        output_size (tuple): (OH, OW).

    Example::

        >>> layer = lc_cuda.LocallyConnected2d(3, 16, input_size=32, kernel_size=3, padding="same")
        >>> layer(torch.randn(8, 3, 32, 32)).shape
        torch.Size([8, 16, 32, 32])
        >>> layer.weight.shape
        torch.Size([32, 32, 16, 3, 3, 3])

    ``from_conv2d`` builds one from a trained ``nn.Conv2d``; ``lc_cuda.local_conv2d`` is the
    functional form.
    """

    spatial_dims = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: IntOrSeq,
        kernel_size: IntOrSeq,
        stride: IntOrSeq = 1,
        padding: IntOrSeq | str = 0,
        dilation: IntOrSeq = 1,
        bias: bool = True,
        shared_bias: bool = False,
        device=None,
        dtype=None,
    ):
        """See the class docstring: help(lc_cuda.LocallyConnected2d)."""
        super().__init__(
            in_channels,
            out_channels,
            input_size,
            kernel_size,
            stride,
            padding,
            dilation,
            bias,
            shared_bias,
            device,
            dtype,
        )

    def forward(self, input: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, OH, OW); (H, W) must be the layer's input_size."""
        self._check_input_size(input)
        return self._local_conv2d(input, self.weight, self.bias)

    @classmethod
    def from_conv2d(
        cls, conv: nn.Conv2d, input_size: IntOrSeq, shared_bias: bool = False
    ) -> LocallyConnected2d:
        """A layer that computes exactly what `conv` computes on inputs of `input_size`.

        conv's filters are copied to every output location (cuda-convnet's conv-to-local
        tiling), so training can start from a trained convolution and then let each location's
        filters drift apart. Grouped convolutions become dense filters that are zero outside
        each group. The bias is copied per location, or kept shared with shared_bias=True.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"conv.padding_mode must be 'zeros', got {conv.padding_mode!r}: "
                "local_conv2d pads with zeros only"
            )
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            input_size,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            bias=conv.bias is not None,
            shared_bias=shared_bias,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(_dense_filters(conv).expand_as(layer.weight))
            if conv.bias is not None:
                bias = conv.bias if shared_bias else conv.bias.view(-1, 1, 1)
                layer.bias.copy_(bias.expand_as(layer.bias))
        return layer


def _dense_filters(conv: nn.Conv2d) -> Tensor:
    """conv.weight as (C_out, C_in, KH, KW), zero where a grouped conv does not connect."""
    if conv.groups == 1:
        return conv.weight
    dense = conv.weight.new_zeros((conv.out_channels, conv.in_channels, *conv.kernel_size))
    outs, ins = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    for group in range(conv.groups):
        dense[group * outs : (group + 1) * outs, group * ins : (group + 1) * ins] = conv.weight[
            group * outs : (group + 1) * outs
        ]
    return dense


class LocallyConnected1d(_LocallyConnectedNd):
    r"""A 1D convolution whose filters differ at every output position (unshared weights).

    .. code-block:: text

        out[n, o, i] = bias[o, i] + sum_{c, q} weight[i, o, c, q]
                       * input_padded[n, c, i * stride + q * dilation]

    It runs on the 2D operator through views (no copies).

    Args:
        in_channels (int): channels of the input, C_in.
        out_channels (int): channels of the output, C_out.
        input_length (int): L, the length of the inputs the layer takes.
        kernel_size (int): K, the length of each position's filters.
        stride (int): step between neighbouring positions' windows. Default: 1.
        padding (int, 'valid' or 'same'): zeros added at both ends, none ('valid'), or as many
            as keep the output the input's length ('same', stride 1 only; an odd total puts the
            extra zero at the end). Default: 0.
        dilation (int): spacing between a filter's taps. Default: 1.
        bias (bool): add a learnable bias. Default: True.
        shared_bias (bool): one bias per output channel, shared by all positions. Default: False.
        device, dtype: of the parameters.

    Shape:
        - Input: (N, C_in, L), with L == input_length. Channels-last data (N, L, C) must be
          moved first: ``input.movedim(-1, 1)``.
        - Output: (N, C_out, OL), OL = (L + 2 * padding - dilation * (K - 1) - 1) // stride + 1.

    Attributes:
        weight (Tensor): (OL, C_out, C_in, K); ``weight[i]`` is an ``nn.Conv1d`` weight.
            Initialised per position like ``nn.Conv1d``: U(-1/sqrt(C_in * K), 1/sqrt(C_in * K)).
        bias (Tensor or None): (C_out, OL), or (C_out,) with shared_bias=True.
        output_size (tuple): (OL,).

    Example::

        >>> layer = lc_cuda.LocallyConnected1d(4, 8, input_length=100, kernel_size=5, stride=2)
        >>> layer(torch.randn(2, 4, 100)).shape
        torch.Size([2, 8, 48])
    """

    spatial_dims = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_length: int | Sequence[int],
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        shared_bias: bool = False,
        device=None,
        dtype=None,
    ):
        """See the class docstring: help(lc_cuda.LocallyConnected1d)."""
        super().__init__(
            in_channels,
            out_channels,
            input_length,
            kernel_size,
            stride,
            padding,
            dilation,
            bias,
            shared_bias,
            device,
            dtype,
        )

    def forward(self, input: Tensor) -> Tensor:
        """(N, C_in, L) -> (N, C_out, OL); L must be the layer's input_length."""
        if input.dim() != 3:
            raise ValueError(
                f"input must be 3-D (N, C_in, L), got {input.dim()}-D of shape "
                f"{_shape_text(input.shape)}"
            )
        self._check_input_size(input)
        bias: Tensor | None = self.bias
        if bias is not None and bias.dim() == 2:
            bias = bias.unsqueeze(1)
        out = self._local_conv2d(input.unsqueeze(2), self.weight.unsqueeze(0).unsqueeze(4), bias)
        return out.squeeze(2)


def _shape_text(shape: list[int]) -> str:
    """A shape as Python prints a tuple; TorchScript cannot turn a list into a tuple."""
    sizes = ", ".join([str(size) for size in shape])
    return f"({sizes},)" if len(shape) == 1 else f"({sizes})"
