"""The dynamo ONNX exporter's translation of lc_cuda::local_conv (see _onnx.py).

Importing this module imports onnxscript and registers the translation in onnxscript's torch_lib
registry, which torch.onnx.export(..., dynamo=True) reads at every export.
"""

from __future__ import annotations

from collections.abc import Sequence

from onnxscript import ir
from onnxscript import opset18 as op
from onnxscript.function_libs.torch_lib.registration import torch_op
from onnxscript.function_libs.torch_lib.tensor_typing import TFloat

from ._onnx import _local_conv_graph, _local_conv_transpose_graph


class _OnnxScriptGraph:
    """onnxscript's tracing opset, as _local_conv_graph uses it."""

    def op(self, op_type, *inputs, **attributes):
        return getattr(op, op_type)(*inputs, **attributes)

    def constant(self, array):
        return op.Constant(value=ir.tensor(array))

    def is_half(self, value) -> bool:
        """Whether value holds float16 or bfloat16."""
        return value.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _shape(value) -> list:
    return [size if isinstance(size, int) else None for size in value.shape]


@torch_op("lc_cuda::local_conv", trace_only=True)
def lc_cuda_local_conv(
    input: TFloat,
    weight: TFloat,
    bias: TFloat | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    share: Sequence[int],
    share_mode: str,
    force_unfold: bool = False,
) -> TFloat:
    """lc_cuda::local_conv(Tensor input, Tensor weight, Tensor? bias, int[] stride,
    int[] padding, int[] dilation, int groups, int[] share, str share_mode,
    bool force_unfold=False) -> Tensor"""
    return _local_conv_graph(
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
        groups,
        share,
        share_mode,
    )


@torch_op("lc_cuda::local_conv_transpose", trace_only=True)
def lc_cuda_local_conv_transpose(
    input: TFloat,
    weight: TFloat,
    bias: TFloat | None,
    stride: Sequence[int],
    padding: Sequence[int],
    output_padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    share: Sequence[int],
    share_mode: str,
    force_unfold: bool = False,
) -> TFloat:
    """lc_cuda::local_conv_transpose(Tensor input, Tensor weight, Tensor? bias, int[] stride,
    int[] padding, int[] output_padding, int[] dilation, int groups, int[] share,
    str share_mode, bool force_unfold=False) -> Tensor"""
    return _local_conv_transpose_graph(
        _OnnxScriptGraph(),
        input,
        weight,
        bias,
        _shape(input),
        _shape(weight),
        0 if bias is None else len(bias.shape),
        stride,
        padding,
        output_padding,
        dilation,
        groups,
        share,
        share_mode,
    )
