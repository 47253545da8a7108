"""ONNX export of lc_cuda::local_conv2d, in standard ONNX operators only.

A runtime needs no custom-op library to run the exported graph. The translation:

    Pad (and Slice, where the input has rows or columns no patch reads)
    -> Transpose to (C_in, H, W, N) -> Reshape to rows (C_in*H*W, N)
    -> Gather of every patch's rows with constant indices: (OH*OW, C_in*KH*KW, N)
    -> MatMul with the weight viewed as (OH*OW, C_out, C_in*KH*KW): (OH*OW, C_out, N)
    -> Transpose and Reshape to (N, C_out, OH, OW) -> Add bias

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
Both build the same graph through _local_conv2d_graph.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import numpy as np  # imported where an export needs it: `import lc_cuda` needs no numpy

_TORCHLIB_REGISTRY = "onnxscript.function_libs.torch_lib.registration"


def patch_rows(
    channels: int,
    padded_size: tuple[int, int],
    output_size: tuple[int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> np.ndarray:
    """(OH*OW, C_in*KH*KW) int32: for every output location and patch element, in the weight's
    (c, p, q) order, the row of the padded input flattened as (C_in*H*W, N) that it reads."""
    import numpy as np

    (height, width), (out_h, out_w) = padded_size, output_size
    (kernel_h, kernel_w), (stride_h, stride_w), (dil_h, dil_w) = kernel_size, stride, dilation
    rows = np.arange(out_h)[:, None] * stride_h + np.arange(kernel_h)[None, :] * dil_h  # (OH, KH)
    cols = np.arange(out_w)[:, None] * stride_w + np.arange(kernel_w)[None, :] * dil_w  # (OW, KW)
    index = (
        np.arange(channels)[None, None, :, None, None] * (height * width)
        + rows[:, None, None, :, None] * width
        + cols[None, :, None, None, :]
    )  # (OH, OW, C_in, KH, KW)
    if index.size and index.max() > np.iinfo(np.int32).max:
        return index.reshape(out_h * out_w, -1)
    return index.reshape(out_h * out_w, -1).astype(np.int32)


def _local_conv2d_graph(
    graph, input, weight, bias, input_shape, weight_shape, bias_rank, stride, padding, dilation
):
    """Builds the translation through `graph`, which has op(op_type, *inputs, **attributes) and
    constant(numpy array), and returns the output value. Shapes are lists of ints (None where
    unknown); bias_rank is 0 without a bias."""
    import numpy as np

    if len(weight_shape) != 6 or not all(isinstance(size, int) for size in weight_shape):
        raise ValueError(
            f"lc_cuda's ONNX export needs a 6-D weight of static shape, got shape {weight_shape}"
        )
    out_h, out_w, out_channels, in_channels, kernel_h, kernel_w = weight_shape
    pad_h, pad_w = padding
    if pad_h or pad_w:
        pads = np.array([0, 0, pad_h, pad_w, 0, 0, pad_h, pad_w], dtype=np.int64)
        input = graph.op("Pad", input, graph.constant(pads))
    # The extent the patches read; the input may have up to stride - 1 more rows or columns.
    height = (out_h - 1) * stride[0] + dilation[0] * (kernel_h - 1) + 1
    width = (out_w - 1) * stride[1] + dilation[1] * (kernel_w - 1) + 1
    if input_shape[2:] != [height - 2 * pad_h, width - 2 * pad_w]:
        input = graph.op(
            "Slice",
            input,
            _int64(graph, [0, 0]),
            _int64(graph, [height, width]),
            _int64(graph, [2, 3]),
        )
    rows = graph.op("Transpose", input, perm=[1, 2, 3, 0])  # (C_in, H, W, N)
    rows = graph.op("Reshape", rows, _int64(graph, [in_channels * height * width, -1]))
    index = patch_rows(
        in_channels, (height, width), (out_h, out_w), (kernel_h, kernel_w), stride, dilation
    )
    patches = graph.op("Gather", rows, graph.constant(index), axis=0)  # (L, C_in*KH*KW, N)
    locations, patch_size = out_h * out_w, in_channels * kernel_h * kernel_w
    filters = graph.op("Reshape", weight, _int64(graph, [locations, out_channels, patch_size]))
    out = graph.op("MatMul", filters, patches)  # (L, C_out, N)
    out = graph.op("Transpose", out, perm=[2, 1, 0])
    out = graph.op("Reshape", out, _int64(graph, [-1, out_channels, out_h, out_w]))
    if bias_rank == 1:
        bias = graph.op("Reshape", bias, _int64(graph, [out_channels, 1, 1]))
    if bias_rank:
        out = graph.op("Add", out, bias)
    return out


def _int64(graph, values):
    import numpy as np

    return graph.constant(np.array(values, dtype=np.int64))


class _TorchScriptGraph:
    """The TorchScript-based exporter's graph context, as _local_conv2d_graph uses it."""

    def __init__(self, g):
        self.g = g

    def op(self, op_type, *inputs, **attributes):
        # The TorchScript-based exporter types attributes by suffix; these are ints or int lists.
        return self.g.op(op_type, *inputs, **{f"{name}_i": v for name, v in attributes.items()})

    def constant(self, array):
        return self.g.op("Constant", value_t=torch.from_numpy(array))


def _local_conv2d_symbolic(g, input, weight, bias, stride, padding, dilation, force_unfold=None):
    from torch.onnx import symbolic_helper

    def static_ints(value, name):
        ints = symbolic_helper._maybe_get_const(value, "is")
        if not isinstance(ints, list):
            raise ValueError(f"lc_cuda's ONNX export needs a constant {name}, got {value}")
        return ints

    sizes = symbolic_helper._get_tensor_sizes
    return _local_conv2d_graph(
        _TorchScriptGraph(g),
        input,
        weight,
        None if symbolic_helper._is_none(bias) else bias,
        sizes(input),
        sizes(weight),
        0 if symbolic_helper._is_none(bias) else len(sizes(bias)),
        static_ints(stride, "stride"),
        static_ints(padding, "padding"),
        static_ints(dilation, "dilation"),
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
    torch.onnx.register_custom_op_symbolic("lc_cuda::local_conv2d", _local_conv2d_symbolic, 11)
    if _TORCHLIB_REGISTRY in sys.modules:
        from . import _onnx_dynamo  # noqa: F401
    elif importlib.util.find_spec("onnxscript") is not None:
        sys.meta_path.insert(0, _RegisterWhenImported())
