"""The dynamo ONNX exporter's translation of lc_cuda::local_conv2d (see _onnx.py).

Importing this module imports onnxscript and registers the translation in onnxscript's torch_lib
registry, which torch.onnx.export(..., dynamo=True) reads at every export.
"""

from __future__ import annotations

from collections.abc import Sequence

from onnxscript import ir
from onnxscript import opset18 as op
from onnxscript.function_libs.torch_lib.registration import torch_op
from onnxscript.function_libs.torch_lib.tensor_typing import TFloat

from ._onnx import _local_conv2d_graph


class _OnnxScriptGraph:
    """onnxscript's tracing opset, as _local_conv2d_graph uses it."""

    def op(self, op_type, *inputs, **attributes):
        return getattr(op, op_type)(*inputs, **attributes)

    def constant(self, array):
        return op.Constant(value=ir.tensor(array))


def _shape(value) -> list:
    return [size if isinstance(size, int) else None for size in value.shape]


@torch_op("lc_cuda::local_conv2d", trace_only=True)
def lc_cuda_local_conv2d(
    input: TFloat,
    weight: TFloat,
    bias: TFloat | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    force_unfold: bool = False,
) -> TFloat:
    """lc_cuda::local_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride,
    int[2] padding, int[2] dilation, bool force_unfold=False) -> Tensor"""
    return _local_conv2d_graph(
        _OnnxScriptGraph(),
        input,
        weight,
        bias,
        _shape(input),
        _shape(weight),
        0 if bias is None else len(bias.shape),
        stride,
        padding,
        dilation,
    )
