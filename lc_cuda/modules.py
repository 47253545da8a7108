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
        got = list(input.shape[2:])
        if input.dim() == len(self.input_size) + 2 and got != list(self.input_size):
            raise ValueError(
                f"{self._layer_name} was built for input size {self.input_size}, "
                f"got input of shape {_shape_text(input.shape)}"
            )

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
