"""Weight conversion from and to Keras, JAX and Flax locally-connected layers.

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

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

try:
    import numpy as np
except ImportError as error:  # torch does not depend on numpy; the frameworks converted from do
    raise ImportError(
        "lc_cuda.convert needs numpy, which the frameworks it converts from install: "
        "pip install numpy"
    ) from error

from ._arguments import ntuple
from .modules import LocallyConnected1d, LocallyConnected2d, LocallyConnected3d

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
