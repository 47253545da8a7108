"""Weight conversion from and to Keras, JAX and Flax locally-connected layers, and of whole
PyTorch models from convolutions to lc_cuda layers and back (conv_to_local, share_weights,
average_filter_banks).

Layouts (N spatial dims; lc_cuda's is (*out, C_out, C_in, *kernel)):

- tf.keras / tf-keras LocallyConnected1D/2D, and neurite's (0.2 and earlier) TensorFlow
  LocallyConnected3D, which follows the same layouts in 3D
  - implementation 1: kernel (prod(out), prod(kernel) * C_in, C_out); the patch is flattened
    as (*kernel, C_in) for channels_last and (C_in, *kernel) for channels_first. 'valid' only.
  - implementation 2: a dense kernel masked to the windows, (*in, C_in, *out, C_out) for
    channels_last and (C_in, *in, C_out, *out) for channels_first. 'valid' or 'same'.
  - implementation 3 (sparse) is not supported.
  - bias (*out, C_out). Keras adds it to a channels_first output through a plain reshape to
    (C_out, *out), not a transpose; the conversion reproduces that.
  - 'same' windows start at position*stride - kernel//2 and there are ceil(in/stride) of them.
- jax.lax.conv_general_dilated_local: rhs laid out by the rhs spec of `dimension_numbers`
  (default 'OIHW'); its I dimension is (C_in, *kernel), the window dims in the rhs spec's order.
- flax.linen.ConvLocal: kernel (*out, prod(kernel) * C_in, C_out) (rhs spec 'HWIO'), bias
  (*out, C_out) added to a channels-last output.

Everything is exact: conversions only move elements (and, for Keras implementation 2, drop the
masked-out ones, which Keras never uses), so round trips reproduce the weights bit for bit.
Arrays may be NumPy, JAX or torch; converted weights come back as torch tensors (from_*) or
NumPy arrays (to_*).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

try:
    import numpy as np
except ImportError as error:  # torch does not depend on numpy; the frameworks converted from do
    raise ImportError(
        "lc_cuda.convert needs numpy, which the frameworks it converts from install: "
        "pip install numpy"
    ) from error

from ._arguments import IntOrSeq, Sharing, ntuple, padding_pairs, regions, sharing
from .modules import (
    _CONV,
    _CONV_TRANSPOSE,
    LocallyConnected1d,
    LocallyConnected2d,
    LocallyConnected3d,
    LocallyConnectedTranspose1d,
    LocallyConnectedTranspose2d,
    LocallyConnectedTranspose3d,
)

_MODULES = {1: LocallyConnected1d, 2: LocallyConnected2d, 3: LocallyConnected3d}
_CONSTANT_PADS = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}


def _to_numpy(array) -> np.ndarray:
    if isinstance(array, Tensor):
        array = array.detach().cpu()
        return (array.float() if array.dtype == torch.bfloat16 else array).numpy()
    return np.asarray(array)


def _to_torch(array) -> Tensor:
    array = _to_numpy(array)
    if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16, which torch cannot wrap
        return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(array))  # a writable copy: no aliasing of the source


def _per_location_bias(bias: np.ndarray, out_size: Sequence[int]) -> np.ndarray:
    """(C_out, *out) from a per-location bias, or from a shared (C_out,) one by broadcasting."""
    if bias.ndim == 1:
        bias = bias.reshape(-1, *(1,) * len(out_size))
    return np.broadcast_to(bias, (bias.shape[0], *out_size))


def _check_shape(name: str, array: np.ndarray, expected: tuple, layout: str) -> None:
    if tuple(array.shape) != tuple(expected):
        raise ValueError(
            f"{name}.shape is not valid: got {tuple(array.shape)}, expected {tuple(expected)} "
            f"({layout})"
        )


# ----------------------------------------------------------------------------------------------
# Keras
# ----------------------------------------------------------------------------------------------


class _KerasGeometry:
    """The geometry of a Keras locally-connected layer: sizes, and its zero padding per dim."""

    def __init__(self, input_shape, kernel_size, strides, padding, data_format):
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}"
            )
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        input_shape = tuple(input_shape)
        if input_shape and input_shape[0] is None:  # a Keras shape with its batch dimension
            input_shape = input_shape[1:]
        if len(input_shape) not in (2, 3, 4):
            raise ValueError(
                "input_shape must be the layer's input shape without the batch, (*spatial, C_in) "
                f"or (C_in, *spatial) for 1, 2 or 3 spatial dims, got {input_shape}"
            )
        self.dims = len(input_shape) - 1
        self.channels_last = data_format == "channels_last"
        self.data_format = data_format
        self.padding = padding
        self.in_size = input_shape[:-1] if self.channels_last else input_shape[1:]
        self.in_channels = input_shape[-1] if self.channels_last else input_shape[0]
        self.kernel_size = ntuple(kernel_size, self.dims, "kernel_size")
        self.strides = ntuple(strides, self.dims, "strides")
        self.out_size, self.pad_before, self.pad_after = [], [], []
        for n, k, s in zip(self.in_size, self.kernel_size, self.strides):
            if padding == "valid":
                if k > n:
                    raise ValueError(f"kernel_size {self.kernel_size} exceeds input {self.in_size}")
                out, before = (n - k) // s + 1, 0
            else:
                out, before = -(-n // s), k // 2
            self.out_size.append(out)
            self.pad_before.append(before)
            self.pad_after.append(max(0, (out - 1) * s + k - n - before))
        self.out_size = tuple(self.out_size)

    def window_indices(self):
        """For every (output position, kernel offset), broadcast to (*out, *kernel): the input
        index it reads per spatial dim (clipped into range), whether that index is inside the
        input rather than in the padding, and the output position per spatial dim."""
        n = self.dims
        grids = np.meshgrid(
            *[np.arange(o) for o in self.out_size],
            *[np.arange(k) for k in self.kernel_size],
            indexing="ij",
        )
        out_index, offsets = grids[:n], grids[n:]
        in_index = [
            o * s + p - before
            for o, p, s, before in zip(out_index, offsets, self.strides, self.pad_before)
        ]
        inside = np.logical_and.reduce(
            [(index >= 0) & (index < size) for index, size in zip(in_index, self.in_size)]
        )
        clipped = [np.clip(index, 0, size - 1) for index, size in zip(in_index, self.in_size)]
        return clipped, inside, out_index


def _keras_patch_order(geometry: _KerasGeometry) -> tuple[int, ...]:
    """Permutation from Keras implementation 1's (*out, *patch, C_out) to lc_cuda's layout."""
    n = geometry.dims
    out_axes = tuple(range(n))
    if geometry.channels_last:  # (*out, *kernel, C_in, C_out)
        return (*out_axes, 2 * n + 1, 2 * n, *range(n, 2 * n))
    return (*out_axes, 2 * n + 1, n, *range(n + 1, 2 * n + 1))  # (*out, C_in, *kernel, C_out)


def keras_kernel_to_weight(kernel, geometry: _KerasGeometry, implementation: int) -> Tensor:
    """A Keras LocallyConnected kernel as an lc_cuda weight (*out, C_out, C_in, *kernel)."""
    kernel = _to_numpy(kernel)
    c_in, n = geometry.in_channels, geometry.dims
    if implementation == 1:
        if geometry.padding != "valid":
            raise ValueError("Keras implementation 1 supports padding='valid' only")
        c_out = kernel.shape[-1] if kernel.ndim == 3 else "C_out"
        expected = (math.prod(geometry.out_size), math.prod(geometry.kernel_size) * c_in, c_out)
        _check_shape("kernel", kernel, expected, "prod(out), prod(kernel) * C_in, C_out")
        patch_shape = (
            (*geometry.kernel_size, c_in)
            if geometry.channels_last
            else (
                c_in,
                *geometry.kernel_size,
            )
        )
        weight = kernel.reshape(*geometry.out_size, *patch_shape, c_out)
        return _to_torch(weight.transpose(_keras_patch_order(geometry)))
    if implementation == 2:
        c_out_axis = -1 if geometry.channels_last else n + 1
        c_out = kernel.shape[c_out_axis] if kernel.ndim == 2 * n + 2 else "C_out"
        expected = _keras_dense_shape(geometry, c_out)
        _check_shape("kernel", kernel, expected, _keras_dense_layout(geometry))
        in_index, inside, out_index = geometry.window_indices()
        if geometry.channels_last:  # (*in, C_in, *out, C_out) -> (*out, *kernel, C_in, C_out)
            gathered = kernel[(*in_index, slice(None), *out_index)]
        else:  # (C_in, *in, C_out, *out) -> (*out, *kernel, C_in, C_out)
            gathered = kernel[(slice(None), *in_index, slice(None), *out_index)]
        gathered = np.where(inside[..., None, None], gathered, 0).astype(kernel.dtype)
        order = (*range(n), 2 * n + 1, 2 * n, *range(n, 2 * n))
        return _to_torch(gathered.transpose(order))
    raise ValueError(
        f"implementation must be 1 or 2, got {implementation!r} (the sparse implementation 3 "
        "is not supported: rebuild the Keras layer with implementation=2 and copy the weights)"
    )


def _keras_dense_shape(geometry: _KerasGeometry, c_out: int) -> tuple:
    if geometry.channels_last:
        return (*geometry.in_size, geometry.in_channels, *geometry.out_size, c_out)
    return (geometry.in_channels, *geometry.in_size, c_out, *geometry.out_size)


def _keras_dense_layout(geometry: _KerasGeometry) -> str:
    return "*in, C_in, *out, C_out" if geometry.channels_last else "C_in, *in, C_out, *out"


def keras_bias_to_bias(bias, geometry: _KerasGeometry) -> Tensor:
    """A Keras (*out, C_out) bias as lc_cuda's (C_out, *out), as Keras applies it."""
    bias = _to_numpy(bias)
    if bias.ndim != geometry.dims + 1 or tuple(bias.shape[:-1]) != geometry.out_size:
        raise ValueError(
            f"bias.shape is not valid: got {tuple(bias.shape)}, expected "
            f"{(*geometry.out_size, 'C_out')} (*out, C_out)"
        )
    if geometry.channels_last:
        return _to_torch(np.moveaxis(bias, -1, 0))
    return _to_torch(bias.reshape(bias.shape[-1], *geometry.out_size))


def from_keras(
    kernel,
    bias,
    input_shape: Sequence[int | None],
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: str = "valid",
    data_format: str = "channels_last",
    implementation: int = 1,
) -> nn.Module:
    """A ready lc_cuda module from the weights of a Keras LocallyConnected1D/2D layer, or of
    neurite's TensorFlow LocallyConnected3D (neurite 0.1 and 0.2; 0.3 on is PyTorch and has
    none), which keeps Keras' kernel and bias layouts in 3D.

    Args:
        kernel, bias: the layer's weights (`layer.get_weights()`); bias may be None.
        input_shape: the layer's input shape without the batch, e.g. (H, W, C_in) for
            channels_last or (C_in, H, W) for channels_first; (L, C_in) / (C_in, L) for 1D,
            (D, H, W, C_in) / (C_in, D, H, W) for neurite's 3D layer.
        kernel_size, strides, padding, data_format, implementation: the layer's arguments
            (implementation 1 or 2).

    Returns a LocallyConnected1d/2d/3d that takes channels-first input (N, C_in, *spatial) and
    computes what the Keras layer computes (before its activation). Where Keras pads unevenly
    ('same' with an even kernel or a stride), the module is nn.Sequential(ConstantPad, layer).

    Example (a neurite LocallyConnected3D's implementation-1 kernel, channels last)::

        >>> import numpy as np
        >>> from lc_cuda import convert
        >>> kernel = np.zeros((4 * 3 * 2, 27 * 2, 8), np.float32)  # (prod(out), 27 C_in, C_out)
        >>> bias = np.zeros((4, 3, 2, 8), np.float32)  # (*out, C_out)
        >>> layer = convert.from_keras(kernel, bias, input_shape=(6, 5, 4, 2), kernel_size=3)
        >>> type(layer).__name__, layer.weight.shape  # (*out, C_out, C_in, *kernel)
        ('LocallyConnected3d', torch.Size([4, 3, 2, 8, 2, 3, 3, 3]))
    """
    geometry = _KerasGeometry(input_shape, kernel_size, strides, padding, data_format)
    weight = keras_kernel_to_weight(kernel, geometry, implementation)
    symmetric = geometry.pad_before == geometry.pad_after
    in_size = tuple(
        n + (0 if symmetric else before + after)
        for n, before, after in zip(geometry.in_size, geometry.pad_before, geometry.pad_after)
    )
    layer = _MODULES[geometry.dims](
        geometry.in_channels,
        weight.shape[geometry.dims],
        in_size,
        geometry.kernel_size,
        geometry.strides,
        tuple(geometry.pad_before) if symmetric else 0,
        bias=bias is not None,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(keras_bias_to_bias(bias, geometry))
    if symmetric:
        return layer
    # ConstantPad takes (left, right) pairs starting from the last dim.
    pads = [
        p
        for d in reversed(range(geometry.dims))
        for p in (geometry.pad_before[d], geometry.pad_after[d])
    ]
    return nn.Sequential(_CONSTANT_PADS[geometry.dims](pads, 0.0), layer)


def to_keras(
    module: nn.Module, data_format: str = "channels_last", implementation: int = 1
) -> tuple[np.ndarray, np.ndarray | None]:
    """(kernel, bias) for a Keras LocallyConnected1D/2D layer (or neurite's LocallyConnected3D)
    that computes what `module` does.

    `module` is a LocallyConnected1d/2d/3d, or the nn.Sequential(ConstantPad, layer) that
    from_keras returns. Its geometry must be one Keras has: dilation 1, one group, a filter
    bank per position (no share_block or share_period), zero padding 'valid' or Keras' 'same'.
    A shared bias becomes Keras' per-location bias.
    """
    pad_module, layer = (
        (module[0], module[1]) if isinstance(module, nn.Sequential) else (None, module)
    )
    if type(layer) not in _MODULES.values():
        raise TypeError(f"module must be a LocallyConnected1d/2d/3d, got {type(module).__name__}")
    dims = layer.spatial_dims
    if layer.dilation != (1,) * dims:
        raise ValueError(f"Keras has no dilation: got dilation={layer.dilation}")
    if layer.groups != 1 or layer._sharing.shares or layer.padding_mode != "zeros":
        raise ValueError(
            "Keras has a filter bank per position, one group and zero padding: got groups="
            f"{layer.groups}, share_block={layer.share_block}, share_period={layer.share_period}, "
            f"padding_mode={layer.padding_mode!r}"
        )
    if isinstance(layer.padding, str):
        raise ValueError(f"padding={layer.padding!r}: build the layer with explicit padding")
    if pad_module is not None:
        pads = list(pad_module.padding)
        before = tuple(pads[2 * (dims - 1 - d)] for d in range(dims))
        in_size = tuple(
            n - sum(pads[2 * (dims - 1 - d) : 2 * (dims - d)])
            for d, n in enumerate(layer.input_size)
        )
    else:
        before, in_size = layer.padding, layer.input_size
    channels = (layer.in_channels,)
    input_shape = (*in_size, *channels) if data_format == "channels_last" else (*channels, *in_size)
    padding = "valid" if max(before) == 0 and pad_module is None else "same"
    geometry = _KerasGeometry(input_shape, layer.kernel_size, layer.stride, padding, data_format)
    if geometry.out_size != layer.output_size or tuple(geometry.pad_before) != tuple(before):
        raise ValueError(
            f"the layer's padding {before} and output size {layer.output_size} match neither "
            "Keras 'valid' nor Keras 'same' (windows at position*stride - kernel//2, "
            "ceil(input/stride) of them)"
        )
    weight = _to_numpy(layer.weight)
    n = dims
    if implementation == 1:
        if padding != "valid":
            raise ValueError("Keras implementation 1 supports padding='valid' only")
        inverse = np.argsort(_keras_patch_order(geometry))
        kernel = weight.transpose(inverse).reshape(
            math.prod(geometry.out_size), -1, layer.out_channels
        )
    elif implementation == 2:
        kernel = np.zeros(_keras_dense_shape(geometry, layer.out_channels), weight.dtype)
        in_index, inside, out_index = geometry.window_indices()
        # (*out, C_out, C_in, *kernel) -> (*out, *kernel, C_in, C_out), the connected entries
        values = weight.transpose((*range(n), *range(n + 2, 2 * n + 2), n + 1, n))[inside]
        in_index = [index[inside] for index in in_index]
        out_index = [index[inside] for index in out_index]
        if geometry.channels_last:
            kernel[(*in_index, slice(None), *out_index)] = values
        else:
            kernel[(slice(None), *in_index, slice(None), *out_index)] = values
    else:
        raise ValueError(f"implementation must be 1 or 2, got {implementation!r}")
    if layer.bias is None:
        return kernel, None
    bias = _per_location_bias(_to_numpy(layer.bias), layer.output_size)
    if geometry.channels_last:
        return kernel, np.ascontiguousarray(np.moveaxis(bias, 0, -1))
    return kernel, np.ascontiguousarray(bias).reshape(*geometry.out_size, layer.out_channels)


# ----------------------------------------------------------------------------------------------
# JAX and Flax
# ----------------------------------------------------------------------------------------------


# Letters for the spatial dims of the default specs; lax's None is channels first, 'OI' first.
_SPATIAL_LETTERS = {1: "H", 2: "HW", 3: "DHW"}


def _jax_specs(dimension_numbers, dims: int) -> tuple[str, str]:
    """(spatial letters in input order, rhs spec) from lax-style dimension_numbers."""
    if dims not in _SPATIAL_LETTERS:
        raise ValueError(f"lc_cuda has 1, 2 and 3 spatial dims, got {dims}")
    if dimension_numbers is None:
        lhs_spec, rhs_spec = "NC" + _SPATIAL_LETTERS[dims], "OI" + _SPATIAL_LETTERS[dims]
    else:
        lhs_spec, rhs_spec = dimension_numbers[0], dimension_numbers[1]
    if not (isinstance(lhs_spec, str) and isinstance(rhs_spec, str)):
        raise ValueError(
            "dimension_numbers must be None or a tuple of spec strings such as "
            f"('NCHW', 'OIHW', 'NCHW'), got {dimension_numbers!r}"
        )
    spatial = "".join(c for c in lhs_spec if c not in "NC")
    if sorted(spatial) != sorted(c for c in rhs_spec if c not in "OI") or len(rhs_spec) != dims + 2:
        raise ValueError(f"rhs spec {rhs_spec!r} does not match input spec {lhs_spec!r}")
    return spatial, rhs_spec


def from_jax(rhs, filter_shape: Sequence[int], dimension_numbers=None) -> Tensor:
    """The lc_cuda weight (*out, C_out, C_in, *kernel) for a
    `jax.lax.conv_general_dilated_local` rhs with the given filter_shape and dimension_numbers
    (None means ('NCHW', 'OIHW', 'NCHW'), or its 1D or 3D equivalent: channels first).

    lc_cuda's spatial dims follow the input (lhs) spec. lax orders filter_shape, strides,
    padding and rhs_dilation like the rhs spec's spatial dims instead; the two orders differ
    only for specs such as ('NCHW', 'OIWH', ...). Pass filter_shape as lax takes it, and the
    others to local_conv1d / local_conv2d / local_conv3d in the input's order.

    Example (3D)::

        >>> import numpy as np
        >>> from lc_cuda import convert
        >>> rhs = np.zeros((8, 2 * 3 * 3 * 3, 4, 4, 4), np.float32)  # (O, C_in * 27, *out)
        >>> convert.from_jax(rhs, filter_shape=(3, 3, 3)).shape  # (*out, C_out, C_in, *kernel)
        torch.Size([4, 4, 4, 8, 2, 3, 3, 3])
    """
    rhs = _to_numpy(rhs)
    filter_shape = tuple(filter_shape)
    spatial, rhs_spec = _jax_specs(dimension_numbers, len(filter_shape))
    if rhs.ndim != len(rhs_spec):
        raise ValueError(f"rhs must be {len(rhs_spec)}-D ({rhs_spec}), got {rhs.ndim}-D")
    window_letters = [c for c in rhs_spec if c not in "OI"]  # the window order inside I
    # (*out in input order, O, I)
    ordered = rhs.transpose(
        [rhs_spec.index(c) for c in spatial] + [rhs_spec.index("O"), rhs_spec.index("I")]
    )
    window = filter_shape  # lax orders filter_shape like the rhs spec's spatial dims
    if ordered.shape[-1] % math.prod(window):
        raise ValueError(
            f"rhs I dimension {ordered.shape[-1]} is not a multiple of prod(filter_shape)"
            f" = {math.prod(window)}"
        )
    c_in = ordered.shape[-1] // math.prod(window)
    split = ordered.reshape(*ordered.shape[:-1], c_in, *window)
    n = len(spatial)
    window_axes = [n + 2 + window_letters.index(c) for c in spatial]
    return _to_torch(split.transpose(*range(n + 2), *window_axes))


def to_jax(weight, dimension_numbers=None) -> np.ndarray:
    """The `jax.lax.conv_general_dilated_local` rhs for an lc_cuda weight; inverse of from_jax."""
    weight = _to_numpy(weight)
    n = (weight.ndim - 2) // 2
    spatial, rhs_spec = _jax_specs(dimension_numbers, n)
    window_letters = [c for c in rhs_spec if c not in "OI"]
    c_out = weight.shape[n]
    # (*out, C_out, C_in, *kernel) -> (*out, C_out, C_in, *kernel in rhs order) -> (*out, O, I)
    window_axes = [n + 2 + spatial.index(c) for c in window_letters]
    fused = weight.transpose(*range(n + 2), *window_axes).reshape(*weight.shape[:n], c_out, -1)
    axes = {c: spatial.index(c) for c in spatial} | {"O": n, "I": n + 1}
    return np.ascontiguousarray(fused.transpose([axes[c] for c in rhs_spec]))


def _flax_dimension_numbers(dims: int) -> tuple[str, str, str]:
    # flax.linen's convolutions are channels-last with an (*spatial, I, O) kernel.
    if dims not in _SPATIAL_LETTERS:
        raise ValueError(
            f"a ConvLocal kernel is (*out, prod(kernel_size) * C_in, C_out) with 1, 2 or 3 "
            f"spatial dims: got a {dims + 2}-D kernel"
        )
    spatial = _SPATIAL_LETTERS[dims]
    return f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"


def from_flax(
    kernel, bias, kernel_size: int | Sequence[int] | None = None, in_channels: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """(weight, bias) in lc_cuda's layout from a flax.linen.ConvLocal's params['kernel'] and
    params['bias'] (None without bias).

    The kernel, (*out, prod(kernel_size) * C_in, C_out), does not record how its fused
    dimension splits: pass the layer's kernel_size, or its in_channels for a square kernel.
    """
    kernel = _to_numpy(kernel)
    dims = kernel.ndim - 2
    if kernel_size is None:
        if in_channels is None or kernel.shape[-2] % in_channels:
            raise ValueError(
                "from_flax needs kernel_size, or in_channels dividing the kernel's fused "
                f"dimension: got kernel.shape {kernel.shape}, in_channels {in_channels}"
            )
        taps = kernel.shape[-2] // in_channels
        side = round(taps ** (1 / dims))
        if side**dims != taps:
            raise ValueError(
                f"{taps} taps per channel make no square kernel: pass kernel_size for this "
                "ConvLocal"
            )
        kernel_size = side
    kernel_size = ntuple(kernel_size, dims, "kernel_size")
    weight = from_jax(kernel, kernel_size, _flax_dimension_numbers(dims))
    if bias is None:
        return weight, None
    return weight, _to_torch(np.moveaxis(_to_numpy(bias), -1, 0))


def to_flax(weight, bias=None) -> tuple[np.ndarray, np.ndarray | None]:
    """flax.linen.ConvLocal (kernel, bias) params for an lc_cuda weight and bias (a shared
    bias is spread over the locations, as ConvLocal's bias is per location); inverse of
    from_flax."""
    weight = _to_numpy(weight)
    dims = (weight.ndim - 2) // 2
    kernel = to_jax(weight, _flax_dimension_numbers(dims))
    if bias is None:
        return kernel, None
    per_location = _per_location_bias(_to_numpy(bias), weight.shape[:dims])
    return kernel, np.ascontiguousarray(np.moveaxis(per_location, 0, -1))


# ----------------------------------------------------------------------------------------------
# Whole PyTorch models: convolutions to locally-connected layers and back
# ----------------------------------------------------------------------------------------------

# Exact types only: a subclass of a Conv may compute something else (weight standardisation,
# quantisation), which its locally-connected copy would not.
_LOCAL_FOR_CONV = {
    nn.Conv1d: LocallyConnected1d,
    nn.Conv2d: LocallyConnected2d,
    nn.Conv3d: LocallyConnected3d,
    nn.ConvTranspose1d: LocallyConnectedTranspose1d,
    nn.ConvTranspose2d: LocallyConnectedTranspose2d,
    nn.ConvTranspose3d: LocallyConnectedTranspose3d,
}
_LOCAL_LAYERS = tuple(_LOCAL_FOR_CONV.values())
_TRANSPOSED_LOCAL_LAYERS = (
    LocallyConnectedTranspose1d,
    LocallyConnectedTranspose2d,
    LocallyConnectedTranspose3d,
)

# share_block / share_period of the whole-model functions: one value for every layer, or a
# function of (module name, module, positions) giving each layer's (None: no sharing).
PerLayerShare = IntOrSeq | Callable[[str, nn.Module, tuple[int, ...]], IntOrSeq | None] | None

_SHARE_ARGUMENTS = """share_block, share_period: the sharing of the new layers' weights, as the
            layers take it (neighbouring positions in blocks of share_block share a filter bank;
            positions share_period apart share one), the same for every layer, or a function
            ``(name, module, positions) -> value or None`` called per layer, where positions
            is the size of the grid the filter banks cover: the output size of a forward
            layer, the input size of a transposed one. Default: None."""


def conv_to_local(
    model: nn.Module,
    example_input,
    *,
    keep_first: int = 0,
    keep_1x1: bool = False,
    keep: Callable[[str, nn.Module], bool] | None = None,
    transposed: bool = True,
    share_block: PerLayerShare = None,
    share_period: PerLayerShare = None,
    shared_bias: bool = False,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> nn.Module:
    """`model` with its convolutions replaced by locally-connected lc_cuda layers initialised
    from them, so that it computes what it computed (exactly, without noise).

    Each nn.Conv1d/2d/3d becomes a LocallyConnected1d/2d/3d, and each nn.ConvTranspose1d/2d/3d
    a LocallyConnectedTranspose1d/2d/3d (transposed=False keeps them), through the layers'
    from_conv* methods: the convolution's filters copied to every filter bank, its groups,
    padding, padding_mode, dilation and bias carried over. A locally-connected layer's size is
    fixed, so one forward pass of example_input learns each convolution's input size (forward
    hooks; in eval mode, without gradients; every module's training flag is restored
    afterwards). This is how bio-plausible and topographic-model work starts from a CNN
    (Pogodin et al. 2021; cuda-convnet2's conv-to-local).

    Args:
        model: any nn.Module (eager; not scripted). Subclasses of the Conv types are kept: their
            forward may differ from the plain convolution's.
        example_input: a tensor, or a tuple of the model's positional inputs, on the model's
            device, of the size the converted model will take (the batch size is free).
        keep_first (int): keep the first keep_first convolutions the forward pass calls, in
            call order (Pogodin et al. keep the first). Default: 0.
        keep_1x1 (bool): keep convolutions whose kernel is 1 in every dimension. Default: False.
        keep: a function ``(name, module) -> bool``, name as in ``model.named_modules()``; the
            convolutions it returns True for are kept. Default: None.
        transposed (bool): convert ConvTranspose layers too. Default: True.
        <share arguments>
        shared_bias (bool): keep one bias per output channel, as the convolution has, instead of
            one per channel and region (per output position for the transposed layers).
            Default: False.
        noise (float): Gaussian noise added to every weight of every new layer, independently
            per filter bank, with standard deviation ``noise * conv.weight.std(correction=0)``
            (the standard deviation of the convolution's weight elements: noise=0.1 moves each
            weight by about a tenth of the filters' typical size), so that the banks start as
            perturbed copies rather than equal ones (Pogodin et al. 2021). Biases get none;
            weights are not rescaled, so the banks' average stays the convolution's filter in
            expectation.
            Default: 0, exact copies.
        generator (torch.Generator, optional): draws the noise, for reproducible noise; on its
            own device, moved to the weights'. Default: torch's global generator on the
            weights' device.
        inplace (bool): change model itself rather than a deep copy of it. Default: False.

    Returns:
        The converted model (a new layer where model itself is a convolution). A convolution the
        forward pass does not call is kept, with a warning naming it. A module called more than
        once must see the same input size each time; it stays one module (shared weights).

    Example::

        >>> from lc_cuda import convert
        >>> cnn = torch.nn.Sequential(
        ...     torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        ...     torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, padding_mode="circular"),
        ...     torch.nn.Conv2d(8, 4, 1),
        ... )
        >>> x = torch.randn(2, 3, 16, 16)
        >>> local = convert.conv_to_local(cnn, x, keep_1x1=True)
        >>> [type(module).__name__ for module in local]
        ['LocallyConnected2d', 'ReLU', 'LocallyConnected2d', 'Conv2d']
        >>> torch.allclose(local(x), cnn(x), atol=1e-5)
        True
        >>> local[2].weight.shape  # a filter bank per output position
        torch.Size([8, 8, 8, 8, 3, 3])
        >>> seeded = torch.Generator().manual_seed(0)
        >>> noisy = convert.conv_to_local(cnn, x, noise=0.1, generator=seeded)
        >>> shared = convert.conv_to_local(cnn, x, share_block=4)  # 4x4 blocks share a bank
        >>> shared[0].weight.shape
        torch.Size([4, 4, 8, 3, 3, 3])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(keep_first, bool) or not isinstance(keep_first, int) or keep_first < 0:
        raise ValueError(f"keep_first must be a non-negative int, got {keep_first!r}")
    if keep is not None and not callable(keep):
        raise TypeError(f"keep must be a function (name, module) -> bool or None, got {keep!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"noise must be a non-negative number, got {noise!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    if not inplace:
        model = copy.deepcopy(model)
    convertible = {
        conv_type
        for conv_type in _LOCAL_FOR_CONV
        if transposed or conv_type not in _CONV_TRANSPOSE.values()
    }
    names = {module: name for name, module in model.named_modules() if type(module) in convertible}
    sizes = _spatial_sizes_in_call_order(model, names, example_input)
    uncalled = [name or "the model" for module, name in names.items() if module not in sizes]
    if uncalled:
        warnings.warn(
            f"conv_to_local: the forward pass of example_input did not call {', '.join(uncalled)}"
            "; they stay convolutions",
            stacklevel=2,
        )
    replacements = {}
    for call_position, (conv, (input_size, output_size)) in enumerate(sizes.items()):
        name = names[conv]
        if (
            call_position < keep_first
            or (keep_1x1 and all(k == 1 for k in conv.kernel_size))
            or (keep is not None and keep(name, conv))
        ):
            continue
        layer = _local_from_conv(
            conv, name, input_size, output_size, share_block, share_period, shared_bias
        )
        if noise:
            _add_noise(layer, conv, noise, generator)
        replacements[conv] = layer
    return _replace_modules(model, replacements)


def _spatial_sizes_in_call_order(
    model: nn.Module, convolutions: dict[nn.Module, str], example_input
) -> dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]]:
    """(spatial input size, spatial output size) of each convolution that one forward pass of
    example_input calls, in the order of their first calls."""
    sizes: dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def record(module, args, output):
        dims = module.weight.dim() - 2
        seen = (tuple(args[0].shape[-dims:]), tuple(output.shape[-dims:]))
        first = sizes.setdefault(module, seen)
        if first != seen:
            raise ValueError(
                f"{convolutions[module] or 'the model'} ({type(module).__name__}) is called on "
                f"inputs of spatial size {first[0]} and {seen[0]}: a locally-connected layer "
                "takes one input size; keep this convolution (keep=...)"
            )

    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    handles = [module.register_forward_hook(record) for module in convolutions]
    training = {module: module.training for module in model.modules()}
    try:
        model.eval()  # no batch-norm statistics updated, no dropout
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training.items():
            module.training = flag
    return sizes


def _per_layer(value: PerLayerShare, name: str, module: nn.Module, positions: tuple[int, ...]):
    return value(name, module, positions) if callable(value) else value


def _local_from_conv(conv, name, input_size, output_size, share_block, share_period, shared_bias):
    layer_type = _LOCAL_FOR_CONV[type(conv)]
    positions = input_size if conv.transposed else output_size  # where the filter banks sit
    block = _per_layer(share_block, name, conv, positions)
    period = _per_layer(share_period, name, conv, positions)
    if conv.transposed:
        layer = layer_type._from_conv_transpose(conv, input_size, shared_bias, block, period)
    else:
        layer = layer_type._from_conv(conv, input_size, shared_bias, block, period)
    if layer.output_size != output_size:  # a ConvTranspose called with output_size=...
        raise ValueError(
            f"{name or 'the model'} ({type(conv).__name__}) returned spatial size {output_size}, "
            f"its output_padding {conv.output_padding} gives {layer.output_size}: set "
            "output_padding on the module instead of passing output_size to its forward"
        )
    return layer


def _add_noise(layer, conv, noise: float, generator: torch.Generator | None) -> None:
    weight = layer.weight
    device = weight.device if generator is None else generator.device
    draws = torch.randn(weight.shape, generator=generator, device=device, dtype=weight.dtype)
    scale = noise * conv.weight.detach().std(correction=0)
    with torch.no_grad():
        weight.add_(draws.to(weight.device) * scale)


def _replace_modules(model: nn.Module, replacements: dict[nn.Module, nn.Module]) -> nn.Module:
    """model with every reference to a key of replacements (under any parent and name) set to
    its value; the value itself where model is a key."""
    if model in replacements:
        return replacements[model]
    for parent in list(model.modules()):
        # _modules rather than named_children(), which yields a module once under one name.
        for child_name, child in list(parent._modules.items()):
            if child in replacements:
                setattr(parent, child_name, replacements[child])
    return model


def share_weights(
    model: nn.Module,
    share_block: PerLayerShare = None,
    share_period: PerLayerShare = None,
    *,
    inplace: bool = False,
) -> nn.Module:
    """`model` with each lc_cuda layer replaced by one whose weight is shared over regions of
    positions, each region's filter bank the average of the layer's banks over the region's
    positions; where a layer would have one region (neither share_block nor share_period, or a
    block covering every position), an nn.Conv*d or nn.ConvTranspose*d (or, where the
    layer's padding differs before and after, which Conv cannot do, the layer with one
    region). The inverse of conv_to_local, exact for a layer converted from a convolution
    (every bank the same).

    The average counts every position once (a region of a layer that shares already weighs
    as many times as it has positions) and is taken in float64. A per-region bias is averaged
    over the same regions; a transposed layer's per-output-position bias is kept, or averaged
    over every output position where it becomes a ConvTranspose's.

    Args:
        model: any nn.Module; a LocallyConnected*d or LocallyConnectedTranspose*d itself too.
        <share arguments> Neither: one region, a Conv.
        inplace (bool): change model itself rather than a deep copy. Default: False.

    Returns:
        The model (a new layer where model itself is an lc_cuda layer).

    Example::

        >>> from lc_cuda import convert
        >>> cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        >>> local = convert.conv_to_local(cnn, torch.randn(1, 3, 16, 16))
        >>> back = convert.share_weights(local)
        >>> back[0]
        Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
        >>> torch.equal(back[0].weight, cnn[0].weight)
        True
        >>> convert.share_weights(local, share_period=2)[0].weight.shape  # tiled, 2x2 banks
        torch.Size([2, 2, 8, 3, 3, 3])
    """
    if not inplace:
        model = copy.deepcopy(model)
    replacements = {
        layer: _shared_layer(layer, name or "the model", share_block, share_period)
        for name, layer in model.named_modules()
        if type(layer) in _LOCAL_LAYERS
    }
    return _replace_modules(model, replacements)


def average_filter_banks(
    model: nn.Module, share_block: PerLayerShare = None, share_period: PerLayerShare = None
) -> nn.Module:
    """Sets, in place, every filter bank of each lc_cuda layer in `model` to the average of the
    banks of its region, keeping the layers as they are (a bank per position): one step of
    dynamic weight sharing (Pogodin et al. 2021, who average banks share_period apart, with the
    kernel size as the period), to run every so often while training.

    The per-position bias of a forward layer is averaged over the same regions; a transposed
    layer's bias (per output position) is left alone. Averages are taken in float64.

    Args:
        model: any nn.Module; a LocallyConnected*d or LocallyConnectedTranspose*d itself too.
            Its lc_cuda layers must have a filter bank per position (no sharing).
        <share arguments> Neither: all positions, one region.

    Returns:
        model, changed in place.

    Example::

        >>> layer = lc_cuda.LocallyConnected1d(2, 4, input_length=10, kernel_size=3)
        >>> from lc_cuda import convert
        >>> convert.average_filter_banks(layer, share_period=3)
        LocallyConnected1d(2, 4, input_size=(10,), output_size=(8,), kernel_size=(3,), stride=(1,))
        >>> weight = layer.weight  # positions 0, 3, 6 share a bank, so do 1, 4, 7 and 2, 5
        >>> torch.equal(weight[0], weight[3]), torch.equal(weight[1], weight[7])
        (True, True)
    """
    for name, layer in model.named_modules():
        if type(layer) not in _LOCAL_LAYERS:
            continue
        if layer._sharing.shares:
            raise ValueError(
                f"average_filter_banks takes layers with a filter bank per position: "
                f"{name or 'the model'} ({type(layer).__name__}) shares its weights "
                f"(share_block={layer.share_block}, share_period={layer.share_period}); "
                "share_weights averages such layers"
            )
        positions = _bank_positions(layer)
        target = _target_sharing(layer, name, positions, share_block, share_period)
        with torch.no_grad():
            averaged = _average_over_regions(layer.weight, 0, positions, layer._sharing, target)
            layer.weight.copy_(_spread_over_positions(averaged, 0, positions, target))
            if _bias_per_region(layer):
                averaged = _average_over_regions(layer.bias, 1, positions, layer._sharing, target)
                layer.bias.copy_(_spread_over_positions(averaged, 1, positions, target))
    return model


for _function in (conv_to_local, share_weights, average_filter_banks):
    _function.__doc__ = _function.__doc__.replace("<share arguments>", _SHARE_ARGUMENTS)


def _bank_positions(layer) -> tuple[int, ...]:
    """The grid of positions the layer's filter banks cover: a transposed layer's input."""
    return layer.input_size if type(layer) in _TRANSPOSED_LOCAL_LAYERS else layer.output_size


def _bias_per_region(layer) -> bool:
    """Whether the layer's bias has its weight's regions: (C_out, *regions)."""
    return (
        layer.bias is not None
        and not layer.shared_bias
        and type(layer) not in _TRANSPOSED_LOCAL_LAYERS
    )


def _target_sharing(layer, name, positions, share_block, share_period) -> Sharing:
    """The sharing asked for a layer; without share_block or share_period, one region."""
    block = _per_layer(share_block, name, layer, positions)
    period = _per_layer(share_period, name, layer, positions)
    if block is None and period is None:
        return Sharing(tuple(positions), "block")
    return sharing(block, period, layer.spatial_dims)


def _region_index(size: int, share: Sharing, dim: int, device) -> Tensor:
    """The region of each of `size` positions along dimension `dim`."""
    positions = torch.arange(size, device=device)
    step = share.share[dim]
    return positions % step if share.mode == "tile" else positions // step


def _average_over_regions(
    values: Tensor, first_axis: int, positions, source: Sharing, target: Sharing
) -> Tensor:
    """values, whose axes first_axis.. are the source sharing's regions, as float64 values over
    the target's regions: each the mean, over the target region's positions, of the source
    region at that position. Positions form a grid, so the mean factorises into one weighted
    sum per dimension."""
    result = values.detach().to(torch.float64)
    source_regions, target_regions = regions(positions, source), regions(positions, target)
    for dim, size in enumerate(positions):
        counts = torch.zeros(
            target_regions[dim], source_regions[dim], dtype=torch.float64, device=values.device
        )
        counts.index_put_(
            (
                _region_index(size, target, dim, values.device),
                _region_index(size, source, dim, values.device),
            ),
            torch.ones(size, dtype=torch.float64, device=values.device),
            accumulate=True,
        )
        mean_weights = counts / counts.sum(1, keepdim=True)
        axis = first_axis + dim
        result = torch.tensordot(mean_weights, result, dims=([1], [axis])).movedim(0, axis)
    return result


def _spread_over_positions(values: Tensor, first_axis: int, positions, target: Sharing) -> Tensor:
    """values over the target's regions (axes first_axis..) as values over every position."""
    for dim, size in enumerate(positions):
        index = _region_index(size, target, dim, values.device)
        values = values.index_select(first_axis + dim, index)
    return values


def _shared_layer(layer, name: str, share_block, share_period) -> nn.Module:
    """share_weights for one layer: the shared layer, or the Conv where one region remains and
    Conv can pad as the layer does."""
    positions = _bank_positions(layer)
    target = _target_sharing(layer, name, positions, share_block, share_period)
    weight = _average_over_regions(layer.weight, 0, positions, layer._sharing, target)
    conv_padding = _conv_padding(layer)
    becomes_conv = conv_padding is not None and all(
        count == 1 for count in regions(positions, target)
    )
    if becomes_conv:
        new = _conv_like(layer, conv_padding)
        weight = weight[(0,) * layer.spatial_dims]
    else:
        new = _layer_like(layer, target)
    with torch.no_grad():
        new.weight.copy_(weight)
        if layer.bias is None:
            return new
        bias = layer.bias
        if _bias_per_region(layer):
            bias = _average_over_regions(bias, 1, positions, layer._sharing, target)
        if becomes_conv and bias.dim() > 1:
            bias = bias.to(torch.float64).flatten(1).mean(1)  # (C_out, 1, ...) or per position
        new.bias.copy_(bias)
    return new


def _layer_like(layer, target: Sharing) -> nn.Module:
    """A layer of layer's type and geometry with the target sharing, uninitialised."""
    tiled = target.mode == "tile"
    arguments = dict(
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        bias=layer.bias is not None,
        shared_bias=layer.shared_bias,
        share_block=None if tiled else target.share,
        share_period=target.share if tiled else None,
        padding_mode=layer.padding_mode,
        device=layer.weight.device,
        dtype=layer.weight.dtype,
    )
    if type(layer) in _TRANSPOSED_LOCAL_LAYERS:
        arguments["output_padding"] = layer.output_padding
    return type(layer)(
        layer.in_channels, layer.out_channels, layer.input_size, layer.kernel_size, **arguments
    )


def _conv_padding(layer):
    """The layer's padding as Conv takes it; None where it differs before and after."""
    if isinstance(layer.padding, str):
        return layer.padding  # 'valid' or 'same', which Conv takes as they are
    pairs = padding_pairs(layer.padding, layer.spatial_dims, layer.kernel_size, layer.dilation)
    if any(before != after for before, after in pairs):
        return None
    return tuple(before for before, _ in pairs)


def _conv_like(layer, padding) -> nn.Module:
    """The nn.Conv*d or nn.ConvTranspose*d of layer's geometry, uninitialised."""
    transposed = type(layer) in _TRANSPOSED_LOCAL_LAYERS
    conv_type = (_CONV_TRANSPOSE if transposed else _CONV)[layer.spatial_dims]
    arguments = dict(
        stride=layer.stride,
        padding=padding,
        dilation=layer.dilation,
        groups=layer.groups,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
        device=layer.weight.device,
        dtype=layer.weight.dtype,
    )
    if transposed:
        arguments["output_padding"] = layer.output_padding
    return conv_type(layer.in_channels, layer.out_channels, layer.kernel_size, **arguments)
