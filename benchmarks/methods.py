"""The implementations the benchmark compares. Those of METHODS take (input, weight, bias,
stride, padding) of a plain square 2D case; those of FAMILY_METHODS take (input, weight, bias,
case) of any case of the operator family (cases.FAMILY_CASES). Each returns the output; JAX runs
in its own process (jax_runner.py), as do Keras and neurite (keras_runner.py)."""

from __future__ import annotations

import math
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


def compiled_naive_snippet(function=naive_snippet):
    """A snippet under torch.compile. Dynamo compiles once per shape (and case), dtype and
    grad mode, and past its recompile limit (8 by default) it would silently run the snippet
    eagerly: the limit is raised above what a full run needs (at most 19 cases x 4 dtypes x 2
    grad modes per snippet), and hitting it anyway is an error rather than a wrong
    measurement."""
    config = torch._dynamo.config
    for name, value in (
        ("recompile_limit", 128),
        ("cache_size_limit", 128),
        ("fail_on_recompile_limit_hit", True),
    ):
        if hasattr(config, name):
            setattr(config, name, value)
    return torch.compile(function, dynamic=False)


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


def jax_takes(case) -> bool:
    """conv_general_dilated_local takes 1 to 3 dimensions, but no groups, sharing or transpose."""
    return case.plain or (case.groups, case.shares, case.transposed) == (1, None, False)


# tf-keras LocallyConnected2D, implementation 1 and 2, timed in their own process
KERAS = {"keras_lc2d_impl1": 1, "keras_lc2d_impl2": 2}


# The operator family. The weight is in lc_cuda's layout for the case: a filter bank per region
# (per location without sharing), C_in / groups input channels (the transposed op: C_out /
# groups); the bias is per region (the transposed op: per output position).


def lc_cuda_family(input, weight, bias, case):
    """lc_cuda's op for the case: local_conv1d/2d/3d or local_conv_transpose1d/2d/3d."""
    kind = "local_conv_transpose" if case.transposed else "local_conv"
    return getattr(lc_cuda, f"{kind}{case.dims}d")(input, weight, bias, **case.arguments())


def lc_cuda_family_unfold(input, weight, bias, case):
    """lc_cuda's unfold + bmm fallback for the case. lc_cuda has no public
    unfold_local_conv_transposeNd, so the transposed op's fallback is reached through the
    argument that the public unfold_local_convNd set (force_unfold)."""
    if not case.transposed:
        function = getattr(lc_cuda, f"unfold_local_conv{case.dims}d")
        return function(input, weight, bias, **case.arguments())
    arguments = case.arguments()
    return lc_cuda.ops._local_conv_transpose(
        case.dims, f"unfold_local_conv_transpose{case.dims}d", input, weight, bias,
        arguments["stride"], arguments["padding"], arguments["output_padding"],
        arguments["dilation"], arguments["groups"], arguments.get("share_block"),
        arguments.get("share_period"), True,
    )  # fmt: skip


def per_location(tensor, case, first_axis: int):
    """A tensor indexed by region along dims first_axis.. with each location's region's
    values: the weights (or bias) expanded to every location, as a user without a sharing op
    writes them (index_select: repeat_interleave for blocks, repeat for a period)."""
    if case.shares is None:
        return tensor
    for axis, (size, share) in enumerate(zip(case.bank_sizes, case.shares), first_axis):
        positions = torch.arange(size, device=tensor.device)
        regions = positions // share if case.share_mode == "block" else positions % share
        tensor = tensor.index_select(axis, regions)
    return tensor


def family_snippet(input, weight, bias, case):
    """The snippet a user writes for the case, weights expanded to every location (eager).
    Forward: the patches by F.unfold (2D) or Tensor.unfold along each dimension (1D, 3D), then
    one einsum over locations and groups. Transposed (2D): each input position's values times
    its filters (one einsum), then F.fold sums the overlapping windows."""
    dims, groups, k = case.dims, case.groups, case.kernel
    weight = per_location(weight, case, 0)
    locations = math.prod(case.bank_sizes)
    n = input.shape[0]
    if case.transposed:
        # (L, G, C_in / G, C_out / G, K) by (N, G, C_in / G, L) -> (N, G, C_out / G, K, L)
        filters = weight.reshape(locations, groups, input.shape[1] // groups, -1, k**dims)
        spread = torch.einsum("ngcl,lgcok->ngokl", input.reshape(n, groups, -1, locations), filters)
        out = F.fold(
            spread.reshape(n, -1, locations), case.out_sizes, k, case.dilation, case.padding,
            case.stride,
        )  # fmt: skip
        return out + bias
    filters = weight.reshape(locations, groups, case.out_channels // groups, -1, k**dims)
    channels = input.shape[1] // groups
    if dims == 2:
        columns = F.unfold(input, k, case.dilation, case.padding, case.stride)  # (N, C*K, L)
        columns = columns.view(n, groups, channels, k**dims, locations)
        out = torch.einsum("ngckl,lgock->ngol", columns, filters)
    else:
        span = case.dilation * (k - 1) + 1
        patches = F.pad(input, (case.padding,) * (2 * dims))
        for dim in range(2, dims + 2):  # appends each window's axis: (N, C, *out, *span)
            patches = patches.unfold(dim, span, case.stride)
        patches = patches[(..., *[slice(None, None, case.dilation)] * dims)]
        columns = patches.reshape(n, groups, channels, locations, k**dims)
        out = torch.einsum("ngclk,lgock->ngol", columns, filters)
    return out.reshape(n, case.out_channels, *case.out_sizes) + per_location(bias, case, 1)


def shared_conv(input, weight, bias, case):
    """F.conv1d/2d/3d (oneDNN on the CPU) with the one filter bank of a case whose weights are
    shared over the whole output (one region)."""
    conv = (F.conv1d, F.conv2d, F.conv3d)[case.dims - 1]
    filters = weight.reshape(weight.shape[case.dims :])
    return conv(
        input, filters, bias.reshape(-1), case.stride, case.padding, case.dilation, case.groups
    )


def everywhere(case) -> bool:
    return True


def one_region(case) -> bool:
    return not case.transposed and math.prod(case.region_sizes) == 1


@dataclass(frozen=True)
class FamilyMethod(Method):
    # Which cases the method takes (F.conv: those with one region).
    takes: Callable = everywhere


FAMILY_METHODS = {
    method.name: method
    for method in (
        FamilyMethod("lc_cuda", lc_cuda_family, description="lc_cuda's op for the case"),
        FamilyMethod(
            "lc_cuda_unfold", lc_cuda_family_unfold, description="lc_cuda's unfold + bmm fallback"
        ),
        FamilyMethod(
            "naive_snippet",
            family_snippet,
            description="unfold (F.unfold in 2D, Tensor.unfold per dim in 1D/3D) + einsum with "
            "the weights expanded to every location; transposed: einsum + F.fold; eager",
        ),
        FamilyMethod(
            "naive_compiled",
            compiled_naive_snippet(family_snippet),
            description="the same snippet under torch.compile (compile time excluded)",
        ),
        FamilyMethod(
            "torch_conv",
            shared_conv,
            description="F.conv1d/2d/3d (oneDNN on the CPU) with the one filter bank of a case "
            "shared over its whole output",
            takes=one_region,
        ),
    )
}


def methods_for(case) -> dict:
    """The methods that take the case: METHODS for a plain 2D case, else FAMILY_METHODS'."""
    if case.plain:
        return METHODS
    return {name: m for name, m in FAMILY_METHODS.items() if m.takes(case)}
