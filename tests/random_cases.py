"""Random test cases: tensors for a geometry, and a hypothesis strategy over geometries; the
operator family's cases (any dimension, groups, shared weights) with their op, fallback and
float64 oracle."""

from dataclasses import dataclass

import torch
from hypothesis import assume
from hypothesis import strategies as st

import lc_cuda
from lc_cuda.reference import expected_size, reference_local_conv

BIAS_KINDS = ["none", "shared", "per_location"]
FAMILY_FORWARD = {1: lc_cuda.local_conv1d, 2: lc_cuda.local_conv2d, 3: lc_cuda.local_conv3d}
FAMILY_UNFOLD = {
    1: lc_cuda.unfold_local_conv1d,
    2: lc_cuda.unfold_local_conv2d,
    3: lc_cuda.unfold_local_conv3d,
}


def make_case(n, c_in, size, c_out, kernel, stride, padding, dilation, bias, dtype, device, seed=0):
    """Random input, weight and bias (kind 'none', 'shared' or 'per_location') for symmetric
    padding (pad_h, pad_w)."""
    generator = torch.Generator().manual_seed(seed)
    (h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw) = size, kernel, stride, padding, dilation
    out_h = expected_size(h, kh, sh, ph, ph, dh)
    out_w = expected_size(w, kw, sw, pw, pw, dw)
    bias_shape = {"none": None, "shared": (c_out,), "per_location": (c_out, out_h, out_w)}[bias]
    shapes = [(n, c_in, h, w), (out_h, out_w, c_out, c_in, kh, kw), bias_shape]
    return tuple(
        None
        if shape is None
        else torch.randn(shape, generator=generator, dtype=torch.float64).to(device, dtype)
        for shape in shapes
    )


@dataclass(frozen=True)
class Geometry:
    n: int
    c_in: int
    c_out: int
    size: tuple
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    bias: str

    def tensors(self, dtype, device):
        return make_case(
            self.n,
            self.c_in,
            self.size,
            self.c_out,
            self.kernel,
            self.stride,
            self.padding,
            self.dilation,
            self.bias,
            dtype,
            device,
        )

    @property
    def args(self):
        return self.stride, self.padding, self.dilation


@st.composite
def geometries(draw, max_size=9):
    """Non-square inputs and kernels, every stride, padding and dilation, C_in = 1, C_out = 1
    and N = 1 included; the kernel always fits the padded input (bad input is tested apart)."""
    pair = lambda low, high: (draw(st.integers(low, high)), draw(st.integers(low, high)))  # noqa: E731
    geometry = Geometry(
        n=draw(st.integers(1, 3)),
        c_in=draw(st.integers(1, 3)),
        c_out=draw(st.integers(1, 3)),
        size=pair(1, max_size),
        kernel=pair(1, 4),
        stride=pair(1, 3),
        padding=pair(0, 2),
        dilation=pair(1, 3),
        bias=draw(st.sampled_from(BIAS_KINDS)),
    )
    for dim in range(2):
        span = geometry.dilation[dim] * (geometry.kernel[dim] - 1) + 1
        assume(span <= geometry.size[dim] + 2 * geometry.padding[dim])
    return geometry


def family_case(geometry, dtype, device, seed, bias="per_region"):
    """A family geometry, (n, c_in, size, c_out, kernel, stride, (before, after) per dimension,
    dilation, groups, sharing: {} or {"share_block" or "share_period": one per dimension}):
    input, weight (a bank per region) and bias ((C_out,) "shared" or (C_out, *regions)
    "per_region"), drawn in float64 from `seed` and rounded to dtype on device; and the op, its
    unfold fallback and the float64 oracle, each a function of (input, weight, bias)."""
    n, c_in, size, c_out, kernel, stride, pairs, dilation, groups, sharing = geometry
    dims = len(size)
    out = [
        (s + b + a - d * (k - 1) - 1) // st + 1
        for s, (b, a), k, st, d in zip(size, pairs, kernel, stride, dilation)
    ]
    if "share_block" in sharing:
        share, mode = sharing["share_block"], "block"
        regions = [-(-o // b) for o, b in zip(out, share)]
    elif "share_period" in sharing:
        share, mode = sharing["share_period"], "tile"
        regions = list(share)
    else:
        share, mode, regions = None, "block", out
    generator = torch.Generator().manual_seed(seed)
    shapes = [
        (n, c_in, *size),
        (*regions, c_out, c_in // groups, *kernel),
        {"shared": (c_out,), "per_region": (c_out, *regions)}[bias],
    ]
    tensors = [
        torch.randn(shape, generator=generator, dtype=torch.float64).to(device, dtype)
        for shape in shapes
    ]
    kwargs = dict(stride=stride, padding=pairs, dilation=dilation, groups=groups, **sharing)
    flat_pairs = [side for pair in pairs for side in pair]

    def call(input, weight, bias):
        return FAMILY_FORWARD[dims](input, weight, bias, **kwargs)

    def unfold(input, weight, bias):
        return FAMILY_UNFOLD[dims](input, weight, bias, **kwargs)

    def oracle(input, weight, bias):
        return reference_local_conv(
            input, weight, bias, stride, flat_pairs, dilation, groups, share, mode
        )

    return tensors, call, unfold, oracle


def family_results(tensors, function):
    """The output and the gradients of input, weight and bias for a fixed grad_output."""
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = function(*leaves)
    grad_output = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64
    ).to(out)
    return (out.detach(), *torch.autograd.grad(out, leaves, grad_output))


def family_reference(tensors, oracle):
    """family_results of the float64 oracle on the tensors, on the CPU."""
    return family_results([t.double().cpu() for t in tensors], oracle)
