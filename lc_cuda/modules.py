"""The layers: LocallyConnected1d/2d/3d and LocallyConnectedTranspose1d/2d/3d.

One base class per direction holds what every dimension shares (arguments, parameters, init,
repr); the public classes name the dimension and document it. forward calls the operator
through lc_cuda._autograd in eager mode (every torch.func transform applies) and the operator
itself under TorchScript, so that the layers script.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._arguments import (
    IntOrSeq,
    Padding,
    as_int,
    flat_padding,
    ntuple,
    output_size,
    padding_pairs,
    regions,
    sharing,
    transposed_size,
)
from ._autograd import conv, conv_transpose

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _positive_int(value, name: str) -> int:
    """An int-like value (numpy integers included, bools not) that is at least 1."""
    try:
        number = as_int(value, name)
    except TypeError:
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return number


class _LocalLayer(nn.Module):
    """What the forward and transposed layers share: arguments, weight sharing, parameters,
    batching, repr. Subclasses set spatial_dims and build the geometry."""

    spatial_dims: int

    def _common_arguments(
        self, in_channels, out_channels, input_size, kernel_size, stride, dilation, groups,
        share_block, share_period,
    ):  # fmt: skip
        n = self.spatial_dims
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.groups = _positive_int(groups, "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"groups must divide in_channels and out_channels: got groups {self.groups}, "
                f"in_channels {self.in_channels}, out_channels {self.out_channels}"
            )
        self.input_size = ntuple(input_size, n, "input_size")
        self.kernel_size = ntuple(kernel_size, n, "kernel_size")
        self.stride = ntuple(stride, n, "stride")
        self.dilation = ntuple(dilation, n, "dilation")
        self.share_block = None if share_block is None else ntuple(share_block, n, "share_block")
        self.share_period = (
            None if share_period is None else ntuple(share_period, n, "share_period")
        )
        self._sharing = sharing(share_block, share_period, n)
        self._layer_name = type(self).__name__
        # The operator's arguments as lists, which TorchScript takes.
        self._op_stride = list(self.stride)
        self._op_dilation = list(self.dilation)
        self._op_share = list(self._sharing.share)
        self._op_share_mode = self._sharing.mode

    def _make_parameters(self, weight_shape, bias_shape, bias: bool, fan_in: int, factory):
        self.weight = nn.Parameter(torch.empty(weight_shape, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(bias_shape, **factory))
        else:
            self.register_parameter("bias", None)
        self._fan_in = fan_in
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Conv's default init, per filter bank: kaiming_uniform_(a=sqrt(5)) for the weight and
        U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias, fan_in = C_in / groups *
        prod(kernel_size) (C_out / groups * prod(kernel_size) for the transposed layers, as
        ConvTranspose computes it).

        Both bounds equal 1/sqrt(fan_in). They are applied directly, because nn.init would take
        the fan-in of the whole (*regions, C_out, C_in / groups, *kernel) tensor, not of one
        filter bank.
        """
        bound = 1.0 / math.sqrt(self._fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def _check_input(self, input: Tensor) -> bool:
        """Raises where input does not fit the layer; returns whether it lacks the batch
        dimension (which forward then adds and removes, as Conv does)."""
        shape = list(input.shape)
        # Concatenated rather than unpacked: TorchScript has no starred list displays.
        expected = [self.in_channels] + list(self.input_size)  # noqa: RUF005
        unbatched = len(shape) == len(expected)
        if not unbatched and len(shape) != len(expected) + 1:
            raise RuntimeError(
                f"{self._layer_name} takes input of shape (N, {_shape_text(expected)[1:]} or "
                f"{_shape_text(expected)} without the batch, got {len(shape)}-D input of shape "
                f"{_shape_text(shape)}"
            )
        if (shape[1:] if not unbatched else shape) != expected:
            raise RuntimeError(_input_shape_message(self._layer_name, expected, shape, unbatched))
        return unbatched

    def forward(self, input: Tensor) -> Tensor:
        """(N, C_in, *input_size) -> (N, C_out, *output_size); also without N."""
        unbatched = self._check_input(input)
        out = self._run_op(input.unsqueeze(0) if unbatched else input)
        return out.squeeze(0) if unbatched else out

    def _repr_head(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
            f"output_size={self.output_size}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0,) * self.spatial_dims:
            text += f", padding={self.padding!r}"
        return text

    def _copy_filters_from(self, conv, shared_bias: bool) -> None:
        """conv's weight into every filter bank, its bias per position (or region) or shared:
        the conv's and this layer's weights have the same layout per bank."""
        with torch.no_grad():
            self.weight.copy_(conv.weight.expand_as(self.weight))
            if conv.bias is not None:
                bias = conv.bias
                if not shared_bias:
                    bias = bias.view(-1, *[1] * self.spatial_dims)
                self.bias.copy_(bias.expand_as(self.bias))

    def _repr_common(self) -> str:
        text = ""
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.share_block is not None:
            text += f", share_block={self.share_block}"
        if self.share_period is not None:
            text += f", share_period={self.share_period}"
        if self.bias is None:
            text += ", bias=False"
        elif self.shared_bias:
            text += ", shared_bias=True"
        return text


class _LocallyConnectedNd(_LocalLayer):
    """Shared parameters, initialisation and repr of the 1d, 2d and 3d layers.

    weight: (*regions, out_channels, in_channels / groups, *kernel_size), regions = the output
            size without weight sharing
    bias:   (out_channels, *regions), or (out_channels,) with shared_bias=True
    """

    def __init__(
        self, in_channels, out_channels, input_size, kernel_size, stride, padding, dilation,
        groups, bias, shared_bias, share_block, share_period, padding_mode, device, dtype,
    ):  # fmt: skip
        super().__init__()
        n = self.spatial_dims
        self._common_arguments(
            in_channels, out_channels, input_size, kernel_size, stride, dilation, groups,
            share_block, share_period,
        )  # fmt: skip
        if isinstance(padding, str) and padding == "same" and max(self.stride) != 1:
            raise ValueError(f"padding='same' needs stride 1, got stride={self.stride}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        pairs = padding_pairs(padding, n, self.kernel_size, self.dilation)
        self.padding = padding if isinstance(padding, str) else _padding_value(padding, n)
        self.padding_mode = padding_mode
        self.output_size = output_size(
            self.input_size, self.kernel_size, self.stride, pairs, self.dilation
        )
        self.regions = regions(self.output_size, self._sharing)
        self.shared_bias = shared_bias
        _check_padding_fits_the_mode(padding_mode, pairs, self.input_size)
        # Zeros are skipped by the operator; other modes pad a copy of the input first, with
        # F.pad's sides (the last dimension's first).
        self._pad_input = [side for pair in reversed(pairs) for side in pair]
        self._op_padding = flat_padding(pairs) if padding_mode == "zeros" else [0] * (2 * n)
        self._make_parameters(
            (*self.regions, out_channels, in_channels // groups, *self.kernel_size),
            (out_channels,) if shared_bias else (out_channels, *self.regions),
            bias,
            in_channels // groups * math.prod(self.kernel_size),
            {"device": device, "dtype": dtype},
        )

    def _run_op(self, input: Tensor) -> Tensor:
        if self.padding_mode != "zeros":
            input = F.pad(input, self._pad_input, mode=self.padding_mode)
        if torch.jit.is_scripting():
            return torch.ops.lc_cuda.local_conv(
                input, self.weight, self.bias, self._op_stride, self._op_padding,
                self._op_dilation, self.groups, self._op_share, self._op_share_mode,
            )  # fmt: skip
        return self._eager(input)

    @torch.jit.unused
    def _eager(self, input: Tensor) -> Tensor:
        return conv(
            input, self.weight, self.bias, self._op_stride, self._op_padding, self._op_dilation,
            self.groups, self._op_share, self._op_share_mode, False,
        )  # fmt: skip

    def extra_repr(self) -> str:
        text = self._repr_head()
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        if self.dilation != (1,) * self.spatial_dims:
            text += f", dilation={self.dilation}"
        return text + self._repr_common()

    @classmethod
    def _from_conv(cls, conv_layer, input_size, shared_bias, share_block, share_period):
        conv_type = _CONV[cls.spatial_dims]
        if not isinstance(conv_layer, conv_type):
            raise TypeError(
                f"conv must be an nn.{conv_type.__name__}, got {type(conv_layer).__name__}"
            )
        layer = cls(
            conv_layer.in_channels,
            conv_layer.out_channels,
            input_size,
            conv_layer.kernel_size,
            conv_layer.stride,
            conv_layer.padding,
            conv_layer.dilation,
            groups=conv_layer.groups,
            bias=conv_layer.bias is not None,
            shared_bias=shared_bias,
            share_block=share_block,
            share_period=share_period,
            padding_mode=conv_layer.padding_mode,
            device=conv_layer.weight.device,
            dtype=conv_layer.weight.dtype,
        )
        layer._copy_filters_from(conv_layer, shared_bias)
        return layer

    _FROM_CONV_DOC = """A layer that computes exactly what `conv` computes on `input_size` inputs.

        conv's filters are copied to every filter bank (every output position, or every region
        with share_block or share_period; cuda-convnet's conv-to-local tiling), so training can
        start from a trained convolution and then let the banks drift apart. Groups, padding
        and padding_mode carry over. The bias is copied per region, or kept shared with
        shared_bias=True.
        """


def _check_padding_fits_the_mode(mode: str, pairs, input_size) -> None:
    """F.pad's limits: reflect pads less than the input's size, circular at most its size."""
    limit = {"reflect": 0, "circular": 1}.get(mode)
    if limit is None:
        return
    for (before, after), size in zip(pairs, input_size):
        if max(before, after) > size - 1 + limit:
            bound = "smaller than" if mode == "reflect" else "at most"
            raise ValueError(
                f"padding_mode={mode!r} pads {bound} the input's size along each dimension: got "
                f"padding {tuple(pairs)}, input_size {tuple(input_size)}"
            )


def _padding_value(padding: Padding, n: int):
    """The padding as the layer keeps it for its repr: an n-tuple of ints or of pairs."""
    if (
        isinstance(padding, Sequence)
        and len(padding) == n
        and all(isinstance(p, Sequence) for p in padding)
    ):
        return tuple(tuple(p) for p in padding)
    return ntuple(padding, n, "padding")


def _input_shape_message(layer: str, expected: list[int], shape: list[int], unbatched: bool) -> str:
    """Why an input of `shape` does not fit a layer that takes (N, *expected), expected being
    (C_in, *input_size), and the fix where it is clear. Scriptable: forward calls it."""
    in_channels = expected[0]
    got = _shape_text(shape)
    per_sample = shape if unbatched else shape[1:]
    if per_sample[-1:] + per_sample[:-1] == expected:
        channels_first = "(N, " + ", ".join([str(size) for size in expected]) + ")"
        return (
            f"{layer} takes channels-first input {channels_first}, got {got}, which is "
            "channels-last: pass input.movedim(-1, 1)"
        )
    if per_sample[0] != in_channels:
        return (
            f"input.shape[{0 if unbatched else 1}] is not valid: got {per_sample[0]}, expected "
            f"{in_channels} input channels (in_channels of {layer}); input of shape {got}"
        )
    input_size = _shape_text(expected[1:])
    return f"{layer} was built for input size {input_size}, got input of shape {got}"


def _shape_text(shape: list[int]) -> str:
    """A shape as Python prints a tuple; TorchScript cannot turn a list into a tuple."""
    sizes = ", ".join([str(size) for size in shape])
    return f"({sizes},)" if len(shape) == 1 else f"({sizes})"


_LAYER_ARGUMENTS = """
        stride (int or tuple): step between neighbouring windows. Default: 1.
        padding (int, tuple, (before, after) pairs, 'valid' or 'same'): added to both sides (an
            int, or one per dimension), per side (a (before, after) pair per dimension, e.g.
            ((2, 0),) for a causal 1D layer), none ('valid'), or as many as keep the output the
            input's size ('same', stride 1 only; an odd total puts the extra after, as Conv
            does). Default: 0.
        dilation (int or tuple): spacing between a filter's taps. Default: 1.
        groups (int): channel groups, as in Conv (groups = in_channels: depthwise). Default: 1.
        bias (bool): add a learnable bias. Default: True.
        shared_bias (bool): one bias per output channel, shared by all positions, as in Conv,
            instead of one per channel and weight region. Default: False.
        share_block (int or tuple, optional): neighbouring output positions in blocks of this
            size share a filter bank (locally-shared convolution; the last block may be
            partial). Default: None, a bank per position.
        share_period (int or tuple, optional): positions this far apart share a filter bank,
            position i using bank i % share_period (tiled convolution). Default: None.
        padding_mode (str): 'zeros', 'reflect', 'replicate' or 'circular', as in Conv. Zeros
            are skipped by the operator (no copy); the other modes pad a copy of the input
            first. Default: 'zeros'.
        device, dtype: of the parameters, as for every torch.nn layer."""


class LocallyConnected1d(_LocallyConnectedNd):
    r"""A 1D convolution whose filters differ at every output position (unshared weights), or
    at every region of positions (share_block, share_period).

    .. code-block:: text

        out[n, o, i] = bias[o, r(i)] + sum_{c in o's group, q} weight[r(i), o, c, q]
                       * input_padded[n, c, i * stride + q * dilation]

    with r(i) = i, i // share_block or i % share_period.

    Args:
        in_channels (int): channels of the input, C_in.
        out_channels (int): channels of the output, C_out.
        input_length (int): L, the length of the inputs the layer takes.
        kernel_size (int): K, the length of each filter.<layer arguments>

    Shape:
        - Input: (N, C_in, L) or (C_in, L), with L == input_length. Channels-last data (N, L, C)
          must be moved first: ``input.movedim(-1, 1)``.
        - Output: (N, C_out, OL), OL = (L + before + after - dilation * (K - 1) - 1) // stride
          + 1.

    Attributes:
        weight (Tensor): (R, C_out, C_in / groups, K); ``weight[r]`` is an ``nn.Conv1d``
            weight. Without sharing R = OL. Initialised per bank like ``nn.Conv1d``:
            U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C_in / groups * K.
        bias (Tensor or None): (C_out, R), or (C_out,) with shared_bias=True.
        output_size (tuple): (OL,). regions (tuple): (R,).

    Example::

        >>> layer = lc_cuda.LocallyConnected1d(4, 8, input_length=100, kernel_size=5, stride=2)
        >>> layer(torch.randn(2, 4, 100)).shape
        torch.Size([2, 8, 48])
        >>> causal = lc_cuda.LocallyConnected1d(1, 4, 1000, kernel_size=5, padding=((4, 0),))
        >>> causal(torch.randn(8, 1, 1000)).shape  # the output keeps the input's length
        torch.Size([8, 4, 1000])
    """

    spatial_dims = 1

    def __init__(
        self, in_channels: int, out_channels: int, input_length: IntOrSeq, kernel_size: IntOrSeq,
        stride: IntOrSeq = 1, padding: Padding = 0, dilation: IntOrSeq = 1, groups: int = 1,
        bias: bool = True, shared_bias: bool = False, share_block: IntOrSeq | None = None,
        share_period: IntOrSeq | None = None, padding_mode: str = "zeros", device=None,
        dtype=None,
    ):  # fmt: skip
        """See the class docstring: help(lc_cuda.LocallyConnected1d)."""
        super().__init__(
            in_channels, out_channels, input_length, kernel_size, stride, padding, dilation,
            groups, bias, shared_bias, share_block, share_period, padding_mode, device, dtype,
        )  # fmt: skip

    @classmethod
    def from_conv1d(
        cls, conv: nn.Conv1d, input_length: IntOrSeq, shared_bias: bool = False,
        share_block: IntOrSeq | None = None, share_period: IntOrSeq | None = None,
    ) -> LocallyConnected1d:  # fmt: skip
        return cls._from_conv(conv, input_length, shared_bias, share_block, share_period)


class LocallyConnected2d(_LocallyConnectedNd):
    r"""A 2D convolution whose filters differ at every output location (unshared weights), or
    at every region of locations (share_block, share_period).

    Where ``nn.Conv2d`` slides one filter bank over the input, this layer holds one
    ``(out_channels, in_channels / groups, KH, KW)`` filter bank per output location ``(i, j)``
    (or per region):

    .. code-block:: text

        out[n, o, i, j] = bias[o, r(i, j)] + sum_{c in o's group, p, q} weight[r(i, j), o, c, p, q]
                          * input_padded[n, c, i * stride_h + p * dilation_h,
                                               j * stride_w + q * dilation_w]

    with r(i, j) = (i, j), (i // block_h, j // block_w) or (i % period_h, j % period_w). The
    number of locations depends on the input's height and width, so the input size is fixed
    when the layer is built.

    Args:
        in_channels (int): channels of the input, C_in.
        out_channels (int): channels of the output, C_out.
        input_size (int or (int, int)): (H, W) of the inputs the layer takes.
        kernel_size (int or (int, int)): (KH, KW) of each filter bank.<layer arguments>

    Shape:
        - Input: (N, C_in, H, W) or (C_in, H, W), with (H, W) == input_size. Channels-last data
          (N, H, W, C) must be moved first: ``input.movedim(-1, 1)``.
        - Output: (N, C_out, OH, OW), where
          OH = (H + top + bottom - dilation_h * (KH - 1) - 1) // stride_h + 1, likewise OW.

    Attributes:
        weight (Tensor): (RH, RW, C_out, C_in / groups, KH, KW); ``weight[i, j]`` is exactly the
            weight of an ``nn.Conv2d``, the filter bank of location (or region) (i, j); without
            sharing (RH, RW) = (OH, OW). Initialised per bank like ``nn.Conv2d``:
            U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C_in / groups * KH * KW.
        bias (Tensor or None): (C_out, RH, RW), or (C_out,) with shared_bias=True; initialised
            like the weight.
        output_size (tuple): (OH, OW). regions (tuple): (RH, RW).

    Example::

        >>> layer = lc_cuda.LocallyConnected2d(3, 16, input_size=32, kernel_size=3, padding="same")
        >>> layer(torch.randn(8, 3, 32, 32)).shape
        torch.Size([8, 16, 32, 32])
        >>> layer.weight.shape
        torch.Size([32, 32, 16, 3, 3, 3])
        >>> deepid = lc_cuda.LocallyConnected2d(3, 16, 32, 3, padding=1, share_block=16)
        >>> deepid.weight.shape  # 2x2 regions of 16x16 locations, a filter bank each
        torch.Size([2, 2, 16, 3, 3, 3])

    ``from_conv2d`` builds one from a trained ``nn.Conv2d``; ``lc_cuda.local_conv2d`` is the
    functional form.
    """

    spatial_dims = 2

    def __init__(
        self, in_channels: int, out_channels: int, input_size: IntOrSeq, kernel_size: IntOrSeq,
        stride: IntOrSeq = 1, padding: Padding = 0, dilation: IntOrSeq = 1, groups: int = 1,
        bias: bool = True, shared_bias: bool = False, share_block: IntOrSeq | None = None,
        share_period: IntOrSeq | None = None, padding_mode: str = "zeros", device=None,
        dtype=None,
    ):  # fmt: skip
        """See the class docstring: help(lc_cuda.LocallyConnected2d)."""
        super().__init__(
            in_channels, out_channels, input_size, kernel_size, stride, padding, dilation,
            groups, bias, shared_bias, share_block, share_period, padding_mode, device, dtype,
        )  # fmt: skip

    @classmethod
    def from_conv2d(
        cls, conv: nn.Conv2d, input_size: IntOrSeq, shared_bias: bool = False,
        share_block: IntOrSeq | None = None, share_period: IntOrSeq | None = None,
    ) -> LocallyConnected2d:  # fmt: skip
        return cls._from_conv(conv, input_size, shared_bias, share_block, share_period)


class LocallyConnected3d(_LocallyConnectedNd):
    r"""A 3D convolution whose filters differ at every output position of a volume (unshared
    weights), or at every region of positions (share_block, share_period).

    .. code-block:: text

        out[n, o, z, y, x] = bias[o, r(z, y, x)]
            + sum_{c in o's group, a, p, q} weight[r(z, y, x), o, c, a, p, q]
              * input_padded[n, c, z * stride_d + a * dilation_d,
                                   y * stride_h + p * dilation_h, x * stride_w + q * dilation_w]

    Args:
        in_channels (int): channels of the input, C_in.
        out_channels (int): channels of the output, C_out.
        input_size (int or (int, int, int)): (D, H, W) of the inputs the layer takes.
        kernel_size (int or (int, int, int)): (KD, KH, KW) of each filter bank.<layer arguments>

    Shape:
        - Input: (N, C_in, D, H, W) or (C_in, D, H, W), with (D, H, W) == input_size; any
          strides (channels_last_3d is read in place).
        - Output: (N, C_out, OD, OH, OW), where
          OD = (D + front + back - dilation_d * (KD - 1) - 1) // stride_d + 1, likewise OH, OW.

    Attributes:
        weight (Tensor): (RD, RH, RW, C_out, C_in / groups, KD, KH, KW); ``weight[z, y, x]`` is
            an ``nn.Conv3d`` weight; without sharing (RD, RH, RW) = (OD, OH, OW). Initialised
            per bank like ``nn.Conv3d``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
            fan_in = C_in / groups * KD * KH * KW.
        bias (Tensor or None): (C_out, RD, RH, RW), or (C_out,) with shared_bias=True.
        output_size (tuple): (OD, OH, OW). regions (tuple): (RD, RH, RW).

    Example::

        >>> layer = lc_cuda.LocallyConnected3d(1, 4, input_size=16, kernel_size=3, padding=1)
        >>> layer(torch.randn(2, 1, 16, 16, 16)).shape
        torch.Size([2, 4, 16, 16, 16])
        >>> layer.weight.shape
        torch.Size([16, 16, 16, 4, 1, 3, 3, 3])
    """

    spatial_dims = 3

    def __init__(
        self, in_channels: int, out_channels: int, input_size: IntOrSeq, kernel_size: IntOrSeq,
        stride: IntOrSeq = 1, padding: Padding = 0, dilation: IntOrSeq = 1, groups: int = 1,
        bias: bool = True, shared_bias: bool = False, share_block: IntOrSeq | None = None,
        share_period: IntOrSeq | None = None, padding_mode: str = "zeros", device=None,
        dtype=None,
    ):  # fmt: skip
        """See the class docstring: help(lc_cuda.LocallyConnected3d)."""
        super().__init__(
            in_channels, out_channels, input_size, kernel_size, stride, padding, dilation,
            groups, bias, shared_bias, share_block, share_period, padding_mode, device, dtype,
        )  # fmt: skip

    @classmethod
    def from_conv3d(
        cls, conv: nn.Conv3d, input_size: IntOrSeq, shared_bias: bool = False,
        share_block: IntOrSeq | None = None, share_period: IntOrSeq | None = None,
    ) -> LocallyConnected3d:  # fmt: skip
        return cls._from_conv(conv, input_size, shared_bias, share_block, share_period)


class _LocallyConnectedTransposeNd(_LocalLayer):
    """The transposed layers: weight (*regions, in_channels, out_channels / groups, *kernel),
    regions over the layer's input positions (the forward layer's output); bias
    (out_channels, *output_size) or (out_channels,)."""

    def __init__(
        self, in_channels, out_channels, input_size, kernel_size, stride, padding,
        output_padding, dilation, groups, bias, shared_bias, share_block, share_period,
        padding_mode, device, dtype,
    ):  # fmt: skip
        super().__init__()
        n = self.spatial_dims
        self._common_arguments(
            in_channels, out_channels, input_size, kernel_size, stride, dilation, groups,
            share_block, share_period,
        )  # fmt: skip
        if padding_mode != "zeros":
            raise ValueError(
                f"padding_mode must be 'zeros' for a transposed layer (as for ConvTranspose), "
                f"got {padding_mode!r}"
            )
        if isinstance(padding, str):
            raise ValueError(
                f"padding must be an int, {n} ints or {n} (before, after) pairs for a transposed "
                f"layer, got {padding!r}"
            )
        pairs = padding_pairs(padding, n, self.kernel_size, self.dilation)
        self.padding = _padding_value(padding, n)
        self.padding_mode = padding_mode
        self.output_padding = ntuple(output_padding, n, "output_padding")
        self.output_size = transposed_size(
            self.input_size, self.kernel_size, self.stride, pairs, self.output_padding,
            self.dilation,
        )  # fmt: skip
        self.regions = regions(self.input_size, self._sharing)
        self.shared_bias = shared_bias
        self._op_padding = flat_padding(pairs)
        self._op_output_padding = list(self.output_padding)
        self._make_parameters(
            (*self.regions, in_channels, out_channels // groups, *self.kernel_size),
            (out_channels,) if shared_bias else (out_channels, *self.output_size),
            bias,
            out_channels // groups * math.prod(self.kernel_size),
            {"device": device, "dtype": dtype},
        )

    def _run_op(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return torch.ops.lc_cuda.local_conv_transpose(
                input, self.weight, self.bias, self._op_stride, self._op_padding,
                self._op_output_padding, self._op_dilation, self.groups, self._op_share,
                self._op_share_mode,
            )  # fmt: skip
        return self._eager(input)

    @torch.jit.unused
    def _eager(self, input: Tensor) -> Tensor:
        return conv_transpose(
            input, self.weight, self.bias, self._op_stride, self._op_padding,
            self._op_output_padding, self._op_dilation, self.groups, self._op_share,
            self._op_share_mode, False,
        )  # fmt: skip

    def extra_repr(self) -> str:
        text = self._repr_head()
        if self.output_padding != (0,) * self.spatial_dims:
            text += f", output_padding={self.output_padding}"
        if self.dilation != (1,) * self.spatial_dims:
            text += f", dilation={self.dilation}"
        return text + self._repr_common()

    @classmethod
    def _from_conv_transpose(cls, convt, input_size, shared_bias, share_block, share_period):
        conv_type = _CONV_TRANSPOSE[cls.spatial_dims]
        if not isinstance(convt, conv_type):
            raise TypeError(f"conv must be an nn.{conv_type.__name__}, got {type(convt).__name__}")
        layer = cls(
            convt.in_channels,
            convt.out_channels,
            input_size,
            convt.kernel_size,
            convt.stride,
            convt.padding,
            convt.output_padding,
            convt.dilation,
            groups=convt.groups,
            bias=convt.bias is not None,
            shared_bias=shared_bias,
            share_block=share_block,
            share_period=share_period,
            padding_mode=convt.padding_mode,
            device=convt.weight.device,
            dtype=convt.weight.dtype,
        )
        layer._copy_filters_from(convt, shared_bias)
        return layer


_TRANSPOSE_ARGUMENTS = """
        stride, dilation, groups, bias, shared_bias, share_block, share_period: as for the
            forward layer (regions over this layer's input positions; the bias one per output
            position, or shared). Defaults: 1, 1, 1, True, False, None, None.
        padding (int, tuple or (before, after) pairs): the forward layer's padding: each side's
            output positions this much fewer. Default: 0.
        output_padding (int or tuple): extra size after each dimension, smaller than the stride
            or the dilation, where several output sizes map to the same input size. Default: 0.
        padding_mode (str): 'zeros' only, as for ConvTranspose. Default: 'zeros'.
        device, dtype: of the parameters."""


class LocallyConnectedTranspose1d(_LocallyConnectedTransposeNd):
    r"""The transpose of LocallyConnected1d, as ConvTranspose1d is to Conv1d: a decoder layer
    whose filters differ at every input position (or region of positions).

    Each input position's filter bank spreads its values over the output window it covers, and
    the output sums what every position contributes: with the same arguments and weight, it is
    the gradient of a LocallyConnected1d in its input.

    Args:
        in_channels (int): channels of the input, C_in.
        out_channels (int): channels of the output, C_out.
        input_length (int): L, the length of the inputs the layer takes (the forward layer's
            output length).
        kernel_size (int): K.<transpose arguments>

    Shape:
        - Input: (N, C_in, L) or (C_in, L).
        - Output: (N, C_out, OL), OL = (L - 1) * stride - before - after + dilation * (K - 1)
          + 1 + output_padding.

    Attributes:
        weight (Tensor): (R, C_in, C_out / groups, K), a ``ConvTranspose1d`` weight per input
            position (R = L) or region. Initialised like ``ConvTranspose1d``:
            U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C_out / groups * K.
        bias (Tensor or None): (C_out, OL), or (C_out,) with shared_bias=True.

    Example::

        >>> decoder = lc_cuda.LocallyConnectedTranspose1d(8, 2, input_length=50, kernel_size=4,
        ...                                              stride=2, padding=1)
        >>> decoder(torch.randn(3, 8, 50)).shape
        torch.Size([3, 2, 100])
    """

    spatial_dims = 1

    def __init__(
        self, in_channels: int, out_channels: int, input_length: IntOrSeq,
        kernel_size: IntOrSeq, stride: IntOrSeq = 1, padding: Padding = 0,
        output_padding: IntOrSeq = 0, dilation: IntOrSeq = 1, groups: int = 1,
        bias: bool = True, shared_bias: bool = False, share_block: IntOrSeq | None = None,
        share_period: IntOrSeq | None = None, padding_mode: str = "zeros", device=None,
        dtype=None,
    ):  # fmt: skip
        """See the class docstring: help(lc_cuda.LocallyConnectedTranspose1d)."""
        super().__init__(
            in_channels, out_channels, input_length, kernel_size, stride, padding,
            output_padding, dilation, groups, bias, shared_bias, share_block, share_period,
            padding_mode, device, dtype,
        )  # fmt: skip

    @classmethod
    def from_conv_transpose1d(
        cls, conv: nn.ConvTranspose1d, input_length: IntOrSeq, shared_bias: bool = False,
        share_block: IntOrSeq | None = None, share_period: IntOrSeq | None = None,
    ) -> LocallyConnectedTranspose1d:  # fmt: skip
        return cls._from_conv_transpose(conv, input_length, shared_bias, share_block, share_period)


class LocallyConnectedTranspose2d(_LocallyConnectedTransposeNd):
    r"""The transpose of LocallyConnected2d, as ConvTranspose2d is to Conv2d: a decoder layer
    whose filters differ at every input location (or region of locations).

    Each input location's filter bank spreads its values over the output window it covers, and
    the output sums what every location contributes: with the same arguments and weight, it is
    the gradient of a LocallyConnected2d in its input.

    Args:
        in_channels (int): channels of the input, C_in.
        out_channels (int): channels of the output, C_out.
        input_size (int or (int, int)): (H, W) of the inputs the layer takes (the forward
            layer's output size).
        kernel_size (int or (int, int)): (KH, KW).<transpose arguments>

    Shape:
        - Input: (N, C_in, H, W) or (C_in, H, W).
        - Output: (N, C_out, OH, OW), OH = (H - 1) * stride_h - top - bottom
          + dilation_h * (KH - 1) + 1 + output_padding_h, likewise OW.

    Attributes:
        weight (Tensor): (RH, RW, C_in, C_out / groups, KH, KW), a ``ConvTranspose2d`` weight
            per input location ((RH, RW) = (H, W)) or region. Initialised like
            ``ConvTranspose2d``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
            fan_in = C_out / groups * KH * KW.
        bias (Tensor or None): (C_out, OH, OW), or (C_out,) with shared_bias=True.

    Example::

        >>> decoder = lc_cuda.LocallyConnectedTranspose2d(
        ...     8, 3, input_size=15, kernel_size=3, stride=2, output_padding=1
        ... )
        >>> decoder(torch.randn(2, 8, 15, 15)).shape
        torch.Size([2, 3, 32, 32])

    ``from_conv_transpose2d`` builds one from a trained ``nn.ConvTranspose2d``.
    """

    spatial_dims = 2

    def __init__(
        self, in_channels: int, out_channels: int, input_size: IntOrSeq, kernel_size: IntOrSeq,
        stride: IntOrSeq = 1, padding: Padding = 0, output_padding: IntOrSeq = 0,
        dilation: IntOrSeq = 1, groups: int = 1, bias: bool = True, shared_bias: bool = False,
        share_block: IntOrSeq | None = None, share_period: IntOrSeq | None = None,
        padding_mode: str = "zeros", device=None, dtype=None,
    ):  # fmt: skip
        """See the class docstring: help(lc_cuda.LocallyConnectedTranspose2d)."""
        super().__init__(
            in_channels, out_channels, input_size, kernel_size, stride, padding,
            output_padding, dilation, groups, bias, shared_bias, share_block, share_period,
            padding_mode, device, dtype,
        )  # fmt: skip

    @classmethod
    def from_conv_transpose2d(
        cls, conv: nn.ConvTranspose2d, input_size: IntOrSeq, shared_bias: bool = False,
        share_block: IntOrSeq | None = None, share_period: IntOrSeq | None = None,
    ) -> LocallyConnectedTranspose2d:  # fmt: skip
        return cls._from_conv_transpose(conv, input_size, shared_bias, share_block, share_period)


class LocallyConnectedTranspose3d(_LocallyConnectedTransposeNd):
    r"""The transpose of LocallyConnected3d, as ConvTranspose3d is to Conv3d: a decoder layer
    for volumes whose filters differ at every input position (or region of positions).

    Args:
        in_channels (int): channels of the input, C_in.
        out_channels (int): channels of the output, C_out.
        input_size (int or (int, int, int)): (D, H, W) of the inputs the layer takes (the
            forward layer's output size).
        kernel_size (int or (int, int, int)): (KD, KH, KW).<transpose arguments>

    Shape:
        - Input: (N, C_in, D, H, W) or (C_in, D, H, W).
        - Output: (N, C_out, OD, OH, OW), OD = (D - 1) * stride_d - front - back
          + dilation_d * (KD - 1) + 1 + output_padding_d, likewise OH, OW.

    Attributes:
        weight (Tensor): (RD, RH, RW, C_in, C_out / groups, KD, KH, KW), a ``ConvTranspose3d``
            weight per input position or region. Initialised like ``ConvTranspose3d``.
        bias (Tensor or None): (C_out, OD, OH, OW), or (C_out,) with shared_bias=True.

    Example::

        >>> decoder = lc_cuda.LocallyConnectedTranspose3d(4, 1, input_size=8, kernel_size=2,
        ...                                              stride=2)
        >>> decoder(torch.randn(2, 4, 8, 8, 8)).shape
        torch.Size([2, 1, 16, 16, 16])
    """

    spatial_dims = 3

    def __init__(
        self, in_channels: int, out_channels: int, input_size: IntOrSeq, kernel_size: IntOrSeq,
        stride: IntOrSeq = 1, padding: Padding = 0, output_padding: IntOrSeq = 0,
        dilation: IntOrSeq = 1, groups: int = 1, bias: bool = True, shared_bias: bool = False,
        share_block: IntOrSeq | None = None, share_period: IntOrSeq | None = None,
        padding_mode: str = "zeros", device=None, dtype=None,
    ):  # fmt: skip
        """See the class docstring: help(lc_cuda.LocallyConnectedTranspose3d)."""
        super().__init__(
            in_channels, out_channels, input_size, kernel_size, stride, padding,
            output_padding, dilation, groups, bias, shared_bias, share_block, share_period,
            padding_mode, device, dtype,
        )  # fmt: skip

    @classmethod
    def from_conv_transpose3d(
        cls, conv: nn.ConvTranspose3d, input_size: IntOrSeq, shared_bias: bool = False,
        share_block: IntOrSeq | None = None, share_period: IntOrSeq | None = None,
    ) -> LocallyConnectedTranspose3d:  # fmt: skip
        return cls._from_conv_transpose(conv, input_size, shared_bias, share_block, share_period)


for _layer in (LocallyConnected1d, LocallyConnected2d, LocallyConnected3d):
    _layer.__doc__ = _layer.__doc__.replace("<layer arguments>", _LAYER_ARGUMENTS)
for _layer in (LocallyConnectedTranspose1d, LocallyConnectedTranspose2d,
               LocallyConnectedTranspose3d):  # fmt: skip
    _layer.__doc__ = _layer.__doc__.replace("<transpose arguments>", _TRANSPOSE_ARGUMENTS)
for _method in (
    LocallyConnected1d.from_conv1d,
    LocallyConnected2d.from_conv2d,
    LocallyConnected3d.from_conv3d,
):
    _method.__func__.__doc__ = _LocallyConnectedNd._FROM_CONV_DOC
for _method in (
    LocallyConnectedTranspose1d.from_conv_transpose1d,
    LocallyConnectedTranspose2d.from_conv_transpose2d,
    LocallyConnectedTranspose3d.from_conv_transpose3d,
):
    _method.__func__.__doc__ = (
        "A layer that computes exactly what `conv`, a ConvTranspose layer, computes on inputs of "
        "`input_size`: its filters copied to every filter bank (every input position, or "
        "region), groups and output_padding carried over, the bias per output position or "
        "shared."
    )
