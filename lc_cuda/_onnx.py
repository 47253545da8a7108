"""ONNX export of lc_cuda::local_conv, in standard ONNX operators only.

A runtime needs no custom-op library to run the exported graph. The translation, for 1 to 3
spatial dimensions (*S; L = prod(out) locations, G groups, K = C_in/G * prod(kernel)):

    Pad (and Slice, where the input has positions no patch reads)
    -> Transpose to (C_in, *S, N) -> Reshape to rows (C_in*prod(S), N)
    -> Gather of every patch's rows with constant indices: (L, G, K, N)
    -> MatMul with the weight viewed as (L, G, C_out/G, K) (where locations share weight
       regions, first gathered from the regions by a constant index): (L, G, C_out/G, N)
    -> Transpose and Reshape to (N, C_out, *out) -> Add bias

The batch stays dynamic; the other sizes come from the weight's shape. The Gather
reads each patch element once, as the unfold fallback does; gathering with a Conv over a one-hot
kernel would instead cost C_in*KH*KW multiply-adds per patch element, 80x the layer's own flops
for DeepFace's L4 (13x slower in onnxruntime, benchmarks/NOTES.md). The weight is used in its
own layout, so nothing is transposed per call.

Both exporters are served:
  - torch.onnx.export(..., dynamo=True): an onnxscript function in onnxscript's torch_lib
    registry, the one the exporter reads its aten translations from (torchvision's operators are
    there too). onnxscript takes about 2 s to import, so `import lc_cuda` does not import it;
    the function is registered right after the registry module is first imported, by whoever
    imports it (see _RegisterWhenImported), or at once if it already is.
  - torch.onnx.export(..., dynamo=False), the TorchScript-based exporter: a symbolic function
    registered with torch.onnx.register_custom_op_symbolic.
Both build the same graph through _local_conv_graph.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING

import torch

from ._arguments import Sharing, region_count, region_index

if TYPE_CHECKING:
    import numpy as np  # imported where an export needs it: `import lc_cuda` needs no numpy

_TORCHLIB_REGISTRY = "onnxscript.function_libs.torch_lib.registration"


def patch_rows(
    channels: int,
    groups: int,
    padded_size: tuple[int, ...],
    output_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> np.ndarray:
    """(L, groups, C_in/groups * prod(kernel)) integers: for every output location, group and
    patch element in the weight's (c, *taps) order, the row of the padded input flattened as
    (C_in * prod(padded_size), N) that it reads."""
    import numpy as np

    dims = len(output_size)
    # Per dimension: the padded position each (output position, tap) reads, (out, kernel).
    positions = [
        np.arange(out)[:, None] * s + np.arange(k)[None, :] * d
        for out, k, s, d in zip(output_size, kernel_size, stride, dilation)
    ]
    # Row-major offset inside one channel, over axes (*out, *kernel).
    offset = np.zeros([*output_size, *kernel_size], dtype=np.int64)
    for axis, position in enumerate(positions):
        shape = [1] * (2 * dims)
        shape[axis], shape[dims + axis] = position.shape
        offset = offset * padded_size[axis] + position.reshape(shape)
    plane = int(np.prod(padded_size))
    channel = np.arange(channels).reshape([1] * dims + [channels] + [1] * dims) * plane
    # (*out, C_in, *kernel), then locations x groups x (C_in/groups * taps)
    index = channel + np.expand_dims(offset, dims)
    locations = int(np.prod(output_size))
    index = index.reshape(locations, groups, -1)
    if index.size and index.max() > np.iinfo(np.int32).max:
        return index
    return index.astype(np.int32)


def region_of_locations(output_size, share, share_mode) -> np.ndarray:
    """The flat weight region of every output location (int64), as the operator maps them."""
    flat = torch.zeros((), dtype=torch.int64)
    for out, s in zip(output_size, share):
        # row-major over the regions: the previous dimensions' index times this one's count
        flat = flat.unsqueeze(-1) * region_count(out, s, share_mode) + region_index(
            out, s, share_mode
        )
    return flat.reshape(-1).numpy()


def _local_conv_graph(
    graph, input, weight, bias, input_shape, weight_shape, bias_rank, stride, padding, dilation,
    groups, share, share_mode,
):  # fmt: skip
    """Builds the translation through `graph`, which has op(op_type, *inputs, **attributes) and
    constant(numpy array), and returns the output value. Shapes are lists of ints (None where
    unknown); padding is (before, after) per dimension; bias_rank is 0 without a bias."""
    import numpy as np

    dims = len(stride)
    if len(weight_shape) != 2 * dims + 2 or not all(isinstance(n, int) for n in weight_shape):
        raise ValueError(
            f"lc_cuda's ONNX export needs a {2 * dims + 2}-D weight of static shape, got shape "
            f"{weight_shape}"
        )
    out_channels, group_channels = weight_shape[dims], weight_shape[dims + 1]
    kernel = weight_shape[dims + 2 :]
    in_channels = group_channels * groups
    before, after = padding[0::2], padding[1::2]
    shares = Sharing(tuple(share), share_mode).shares
    if all(isinstance(n, int) for n in input_shape[2:]):
        padded = [n + b + a for n, b, a in zip(input_shape[2:], before, after)]
        out = [
            (n - d * (k - 1) - 1) // s + 1 for n, k, s, d in zip(padded, kernel, stride, dilation)
        ]
    elif not shares:  # one filter bank per location: the weight gives the output size
        padded, out = None, list(weight_shape[:dims])
    else:
        raise ValueError(
            "lc_cuda's ONNX export of a layer with shared weights needs the input's spatial "
            f"sizes, which the exporter did not give: got input shape {input_shape}"
        )
    if any(before) or any(after):
        pads = np.array([0, 0, *before, 0, 0, *after], dtype=np.int64)
        input = graph.op("Pad", input, graph.constant(pads))
    # The extent the patches read; the input may have up to stride - 1 more positions.
    extent = [(o - 1) * s + d * (k - 1) + 1 for o, k, s, d in zip(out, kernel, stride, dilation)]
    if extent != padded:  # also where the input's size is unknown: slicing to it is a no-op
        input = graph.op(
            "Slice",
            input,
            _int64(graph, [0] * dims),
            _int64(graph, extent),
            _int64(graph, list(range(2, dims + 2))),
        )
    rows = graph.op("Transpose", input, perm=[*range(1, dims + 2), 0])  # (C_in, *extent, N)
    rows = graph.op("Reshape", rows, _int64(graph, [in_channels * int(np.prod(extent)), -1]))
    index = patch_rows(in_channels, groups, extent, out, kernel, stride, dilation)
    patches = graph.op("Gather", rows, graph.constant(index), axis=0)  # (L, G, K/G, N)
    group_out, patch = out_channels // groups, index.shape[2]
    filters = graph.op("Reshape", weight, _int64(graph, [-1, groups, group_out, patch]))
    region_index = region_of_locations(out, share, share_mode) if shares else None
    if shares:  # each location's filters from its region
        filters = graph.op("Gather", filters, graph.constant(region_index), axis=0)
    result = graph.op("MatMul", filters, patches)  # (L, G, C_out/G, N)
    result = graph.op("Transpose", result, perm=[3, 1, 2, 0])
    result = graph.op("Reshape", result, _int64(graph, [-1, out_channels, *out]))
    if bias_rank == 1:
        bias = graph.op("Reshape", bias, _int64(graph, [out_channels, *[1] * dims]))
    elif bias_rank and shares:
        bias = graph.op("Reshape", bias, _int64(graph, [out_channels, -1]))
        bias = graph.op("Gather", bias, graph.constant(region_index), axis=1)
        bias = graph.op("Reshape", bias, _int64(graph, [out_channels, *out]))
    if bias_rank:
        result = graph.op("Add", result, bias)
    return result


def _local_conv_transpose_graph(
    graph, input, weight, bias, input_shape, weight_shape, bias_rank, stride, padding,
    output_padding, dilation, groups, share, share_mode,
):  # fmt: skip
    """The transposed op: the adjoint of _local_conv_graph. Every location's contributions
    (its filters times its input column: the patch gradients) are added with ScatterND
    (reduction 'add', opset 16) onto the rows the forward's Gather reads, then the padding is
    cut off and output_padding appended."""
    import numpy as np

    dims = len(stride)
    if len(weight_shape) != 2 * dims + 2 or not all(isinstance(n, int) for n in weight_shape):
        raise ValueError(
            f"lc_cuda's ONNX export needs a {2 * dims + 2}-D weight of static shape, got shape "
            f"{weight_shape}"
        )
    in_channels, group_out = weight_shape[dims], weight_shape[dims + 1]
    kernel = weight_shape[dims + 2 :]
    out_channels, group_in = group_out * groups, in_channels // groups
    shares = Sharing(tuple(share), share_mode).shares
    if all(isinstance(n, int) for n in input_shape[2:]):
        positions = list(input_shape[2:])
    elif not shares:
        positions = list(weight_shape[:dims])
    else:
        raise ValueError(
            "lc_cuda's ONNX export of a layer with shared weights needs the input's spatial "
            f"sizes, which the exporter did not give: got input shape {input_shape}"
        )
    extent = [
        (o - 1) * s + d * (k - 1) + 1 for o, k, s, d in zip(positions, kernel, stride, dilation)
    ]
    index = patch_rows(out_channels, groups, extent, positions, kernel, stride, dilation)
    locations, patch = index.shape[0], index.shape[2]
    # (N, C_in, *positions) -> (L, G, C_in/G, N): each location's input column, by group
    columns = graph.op("Transpose", input, perm=[*range(2, dims + 2), 1, 0])
    columns = graph.op("Reshape", columns, _int64(graph, [locations, groups, group_in, -1]))
    filters = graph.op("Reshape", weight, _int64(graph, [-1, groups, group_in, patch]))
    if shares:
        region_index = region_of_locations(positions, share, share_mode)
        filters = graph.op("Gather", filters, graph.constant(region_index), axis=0)
    filters = graph.op("Transpose", filters, perm=[0, 1, 3, 2])  # (L, G, K/G, C_in/G)
    contributions = graph.op("MatMul", filters, columns)  # (L, G, K/G, N)
    updates = graph.op("Reshape", contributions, _int64(graph, [locations * groups * patch, -1]))
    # float16 and bfloat16 are summed in float32 (onnxruntime's CPU ScatterND adds neither),
    # then cast back; float32 and float64 in their own type.
    half = graph.is_half(input)
    if half:
        updates = graph.op("Cast", updates, to=1)  # TensorProto.FLOAT
    rows = out_channels * int(np.prod(extent))
    batch = graph.op("Slice", graph.op("Shape", input), _int64(graph, [0]), _int64(graph, [1]))
    shape = graph.op("Concat", _int64(graph, [rows]), batch, axis=0)
    zeros = graph.op(
        "Expand", graph.op("CastLike", graph.constant(np.zeros((), np.float32)), updates), shape
    )
    indices = graph.constant(index.reshape(-1, 1).astype(np.int64))
    result = graph.op("ScatterND", zeros, indices, updates, reduction="add")
    if half:
        result = graph.op("CastLike", result, input)
    result = graph.op("Reshape", result, _int64(graph, [out_channels, *extent, -1]))
    result = graph.op("Transpose", result, perm=[dims + 1, *range(dims + 1)])  # (N, C_out, *E)
    before, after = padding[0::2], padding[1::2]
    if any(output_padding):
        pads = np.array([0, 0, *[0] * dims, 0, 0, *output_padding], dtype=np.int64)
        result = graph.op("Pad", result, graph.constant(pads))
    ends = [e + extra - a for e, extra, a in zip(extent, output_padding, after)]
    if any(before) or any(after):
        result = graph.op(
            "Slice",
            result,
            _int64(graph, list(before)),
            _int64(graph, ends),
            _int64(graph, list(range(2, dims + 2))),
        )
    if bias_rank == 1:
        bias = graph.op("Reshape", bias, _int64(graph, [out_channels, *[1] * dims]))
    if bias_rank:
        result = graph.op("Add", result, bias)
    return result


def _int64(graph, values):
    import numpy as np

    return graph.constant(np.array(values, dtype=np.int64))


class _TorchScriptGraph:
    """The TorchScript-based exporter's graph context, as _local_conv_graph uses it."""

    def __init__(self, g):
        self.g = g

    def op(self, op_type, *inputs, **attributes):
        # The TorchScript-based exporter types attributes by suffix: strings, or ints and lists.
        return self.g.op(
            op_type,
            *inputs,
            **{f"{name}_{'s' if isinstance(v, str) else 'i'}": v for name, v in attributes.items()},
        )

    def constant(self, array):
        return self.g.op("Constant", value_t=torch.from_numpy(array))

    def is_half(self, value) -> bool:
        """Whether value holds float16 or bfloat16."""
        scalar_type = torch.onnx.JitScalarType
        return scalar_type.from_value(value) in (scalar_type.HALF, scalar_type.BFLOAT16)


def _constant_argument(value, kind, name):
    """A non-tensor argument of the operator as the TorchScript-based exporter holds it."""
    from torch.onnx import symbolic_helper

    found = symbolic_helper._maybe_get_const(value, kind)
    if isinstance(found, torch._C.Value):
        raise ValueError(f"lc_cuda's ONNX export needs a constant {name}, got {value}")
    return found


def _local_conv_symbolic(
    g, input, weight, bias, stride, padding, dilation, groups, share, share_mode,
    force_unfold=None,
):  # fmt: skip
    from torch.onnx import symbolic_helper

    constant = _constant_argument
    sizes = symbolic_helper._get_tensor_sizes
    return _local_conv_graph(
        _TorchScriptGraph(g),
        input,
        weight,
        None if symbolic_helper._is_none(bias) else bias,
        sizes(input),
        sizes(weight),
        0 if symbolic_helper._is_none(bias) else len(sizes(bias)),
        constant(stride, "is", "stride"),
        constant(padding, "is", "padding"),
        constant(dilation, "is", "dilation"),
        constant(groups, "i", "groups"),
        constant(share, "is", "share"),
        constant(share_mode, "s", "share_mode"),
    )


def _local_conv_transpose_symbolic(
    g, input, weight, bias, stride, padding, output_padding, dilation, groups, share,
    share_mode, force_unfold=None,
):  # fmt: skip
    from torch.onnx import symbolic_helper

    constant = _constant_argument
    sizes = symbolic_helper._get_tensor_sizes
    return _local_conv_transpose_graph(
        _TorchScriptGraph(g),
        input,
        weight,
        None if symbolic_helper._is_none(bias) else bias,
        sizes(input),
        sizes(weight),
        0 if symbolic_helper._is_none(bias) else len(sizes(bias)),
        constant(stride, "is", "stride"),
        constant(padding, "is", "padding"),
        constant(output_padding, "is", "output_padding"),
        constant(dilation, "is", "dilation"),
        constant(groups, "i", "groups"),
        constant(share, "is", "share"),
        constant(share_mode, "s", "share_mode"),
    )


class _RegisterWhenImported(importlib.abc.MetaPathFinder):
    """Registers the dynamo exporter's translation right after onnxscript's torch_lib registry
    module is imported: the exporter imports it itself, before it reads the registry."""

    def find_spec(self, name, path, target=None):
        if name != _TORCHLIB_REGISTRY:
            return None
        sys.meta_path.remove(self)  # the real finders find the module
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterLoading(spec.loader)
        return spec


class _RegisterAfterLoading(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        from . import _onnx_dynamo  # noqa: F401  (registers the translation)


def register() -> None:
    """Registers the translation with both exporters; called once, on `import lc_cuda`."""
    torch.onnx.register_custom_op_symbolic("lc_cuda::local_conv", _local_conv_symbolic, 11)
    # ScatterND's reduction, which the transposed op's translation adds with, is opset 16.
    torch.onnx.register_custom_op_symbolic(
        "lc_cuda::local_conv_transpose", _local_conv_transpose_symbolic, 16
    )
    if _TORCHLIB_REGISTRY in sys.modules:
        from . import _onnx_dynamo  # noqa: F401
    elif importlib.util.find_spec("onnxscript") is not None:
        sys.meta_path.insert(0, _RegisterWhenImported())
