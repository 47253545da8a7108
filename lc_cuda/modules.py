"""LocallyConnected1d and LocallyConnected2d: nn.Modules over local_conv1d / local_conv2d."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .ops import IntOrSeq, local_conv1d, local_conv2d, ntuple, output_size, padding_arg


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
        shape = tuple(input.shape)
        if len(shape) == self.spatial_dims + 2 and shape[1:] != (
            self.in_channels,
            *self.input_size,
        ):
            raise ValueError(
                _input_shape_message(type(self).__name__, self.in_channels, self.input_size, shape)
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


def _input_shape_message(layer: str, in_channels: int, input_size: tuple, shape: tuple) -> str:
    """Why an input of `shape` does not fit the layer, and the fix where it is clear."""
    if shape[1:] == (*input_size, in_channels):
        expected = ", ".join(map(str, ("N", in_channels, *input_size)))
        return (
            f"{layer} takes channels-first input ({expected}), got {shape}, which is "
            "channels-last: pass input.movedim(-1, 1)"
        )
    if shape[1] != in_channels:
        return (
            f"{layer} expected {in_channels} input channels (in_channels), got input of shape "
            f"{shape}"
        )
    return f"{layer} was built for input size {input_size}, got input of shape {shape}"


class LocallyConnected2d(_LocallyConnectedNd):
    """A Conv2d with its own filters at every output location (an unshared-weight convolution).

    Input (N, in_channels, *input_size) -> output (N, out_channels, *output_size).
    weight: (OH, OW, out_channels, in_channels, KH, KW); bias: (out_channels, OH, OW), or
    (out_channels,) with shared_bias=True. The input size is fixed at construction, since the
    number of filter banks depends on it.
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
        self._check_input_size(input)
        return local_conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation)

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
    """A Conv1d with its own filters at every output position.

    Input (N, in_channels, input_length) -> output (N, out_channels, OL).
    weight: (OL, out_channels, in_channels, K); bias: (out_channels, OL), or (out_channels,) with
    shared_bias=True.
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
        self._check_input_size(input)
        return local_conv1d(
            input,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
        )
