"""Random test cases: tensors for a geometry, and a hypothesis strategy over geometries."""

from dataclasses import dataclass

import torch
from hypothesis import assume
from hypothesis import strategies as st

from lc_cuda.reference import expected_size

BIAS_KINDS = ["none", "shared", "per_location"]


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
