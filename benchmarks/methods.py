"""The implementations the benchmark compares. Each takes (input, weight, bias, stride,
padding) and returns the output; JAX runs in its own process (jax_runner.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import lc_cuda


def naive_snippet(input, weight, bias, stride, padding):
    """The unfold + matmul layer found in the wild: F.unfold, then one einsum over locations."""
    out_h, out_w, out_channels = weight.shape[:3]
    columns = F.unfold(input, weight.shape[-2:], padding=padding, stride=stride)  # (N, K, L)
    filters = weight.reshape(out_h * out_w, out_channels, -1)  # (L, C_out, K)
    out = torch.einsum("nkl,lok->nol", columns, filters).reshape(-1, out_channels, out_h, out_w)
    return out + bias


def compiled_naive_snippet():
    """The snippet under torch.compile. Dynamo compiles once per shape, dtype and grad mode,
    and past its recompile limit (8 by default) it would silently run the snippet eagerly: the
    limit is raised above what a full run needs (9 cases x 4 dtypes x 2 grad modes), and
    hitting it anyway is an error rather than a wrong measurement."""
    config = torch._dynamo.config
    for name, value in (
        ("recompile_limit", 128),
        ("cache_size_limit", 128),
        ("fail_on_recompile_limit_hit", True),
    ):
        if hasattr(config, name):
            setattr(config, name, value)
    return torch.compile(naive_snippet, dynamic=False)


@contextmanager
def environment(variables: tuple[tuple[str, str], ...]):
    """Sets environment variables for the duration of a block, then restores them."""
    previous = {name: os.environ.get(name) for name, _ in variables}
    os.environ.update(dict(variables))
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class Method:
    name: str
    function: Callable
    # "local": (OH, OW, C_out, C_in, KH, KW) weights and a per-location bias; "conv": the
    # shared (C_out, C_in, KH, KW) weight and (C_out,) bias of a Conv2d of the same shape.
    weights: str = "local"
    description: str = ""
    # Environment variables set around each timed call, forward and backward.
    environment: tuple[tuple[str, str], ...] = ()


METHODS = {
    method.name: method
    for method in (
        Method("lc_cuda", lc_cuda.local_conv2d, description="lc_cuda.local_conv2d"),
        Method(
            "lc_cuda_ffma",
            lc_cuda.local_conv2d,
            description="lc_cuda.local_conv2d on its FFMA kernels only (LC_CUDA_BACKEND=ffma)",
            environment=(("LC_CUDA_BACKEND", "ffma"),),
        ),
        Method(
            "lc_cuda_avx2",
            lc_cuda.local_conv2d,
            description="lc_cuda.local_conv2d on the CPU's AVX2 kernels, as on CPUs without "
            "AVX-512 (LC_CUDA_CPU_ISA=avx2)",
            environment=(("LC_CUDA_CPU_ISA", "avx2"),),
        ),
        Method(
            "lc_cuda_blas",
            lc_cuda.local_conv2d,
            description="lc_cuda.local_conv2d on the CPU with a BLAS call per location instead "
            "of the vector kernels (LC_CUDA_CPU_ISA=blas)",
            environment=(("LC_CUDA_CPU_ISA", "blas"),),
        ),
        Method(
            "lc_cuda_unfold",
            lc_cuda.unfold_local_conv2d,
            description="lc_cuda's unfold + bmm fallback",
        ),
        Method("naive_snippet", naive_snippet, description="F.unfold + einsum, eager"),
        Method(
            "naive_compiled",
            compiled_naive_snippet(),
            description="F.unfold + einsum under torch.compile (compile time excluded)",
        ),
        Method(
            "cudnn_conv2d",
            F.conv2d,
            weights="conv",
            description="F.conv2d of the same shape: shared weights, for scale",
        ),
    )
}
JAX = "jax"  # lax.conv_general_dilated_local, timed in its own process
# tf-keras LocallyConnected2D, implementation 1 and 2, timed in their own process
KERAS = {"keras_lc2d_impl1": 1, "keras_lc2d_impl2": 2}
