"""The whole operator family against the float64 oracle (lc_cuda/reference.py): 1D, 2D and 3D,
channel groups and depthwise, weight shared in blocks (partial regions included) and
periodically, padding per side, and the transposed op; in every dtype, forward and all three
gradients, contiguous and channels-last input; and the adjoint identity between the op and its
transpose."""

import random

import pytest
import torch
from conftest import DEVICES
from random_cases import FAMILY_FORWARD as FORWARD
from random_cases import FAMILY_UNFOLD as UNFOLD

import lc_cuda
from lc_cuda.reference import (
    allowed_error,
    reference_local_conv,
    reference_local_conv_transpose,
    relative_error,
)

TRANSPOSE = {
    1: lc_cuda.local_conv_transpose1d,
    2: lc_cuda.local_conv_transpose2d,
    3: lc_cuda.local_conv_transpose3d,
}


def random_geometry(rng, dims=None, transposed=False):
    """A geometry whose kernel fits its padded input, as keyword arguments and shapes."""
    while True:
        dims = dims or rng.choice([1, 2, 3])
        groups = rng.choice([1, 1, 2, 3])
        c_in, c_out = groups * rng.randint(1, 2), groups * rng.randint(1, 2)
        kernel = [rng.randint(1, 3) for _ in range(dims)]
        stride = [rng.randint(1, 2) for _ in range(dims)]
        dilation = [rng.randint(1, 2) for _ in range(dims)]
        pairs = [(rng.randint(0, 2), rng.randint(0, 2)) for _ in range(dims)]
        size = [rng.randint(2, 6) for _ in range(dims)]
        out = [
            (n + b + a - d * (k - 1) - 1) // s + 1
            for n, (b, a), k, s, d in zip(size, pairs, kernel, stride, dilation)
        ]
        if min(out) >= 1:
            break
    mode = rng.choice(["none", "block", "tile"])
    sharing, share, regions = {}, [1] * dims, out
    if mode == "block":
        share = [rng.randint(1, 3) for _ in range(dims)]
        sharing, regions = {"share_block": share}, [-(-o // b) for o, b in zip(out, share)]
    elif mode == "tile":
        share = [rng.randint(1, o) for o in out]
        sharing, regions = {"share_period": share}, share
    return {
        "dims": dims, "groups": groups, "c_in": c_in, "c_out": c_out, "kernel": kernel,
        "stride": stride, "dilation": dilation, "pairs": pairs, "size": size, "out": out,
        "sharing": sharing, "share": share, "mode": "tile" if mode == "tile" else "block",
        "regions": regions,
    }  # fmt: skip


def forward_tensors(geometry, n, dtype, device, generator, bias_kind):
    g = geometry
    input = torch.randn(n, g["c_in"], *g["size"], generator=generator, dtype=torch.float64)
    weight = torch.randn(
        *g["regions"], g["c_out"], g["c_in"] // g["groups"], *g["kernel"],
        generator=generator, dtype=torch.float64,
    )  # fmt: skip
    bias_shape = {"none": None, "shared": (g["c_out"],), "per_region": (g["c_out"], *g["regions"])}
    shape = bias_shape[bias_kind]
    bias = None if shape is None else torch.randn(shape, generator=generator, dtype=torch.float64)
    return [None if t is None else t.to(device, dtype) for t in (input, weight, bias)]


def flat(pairs):
    return [side for pair in pairs for side in pair]


def geometry_kwargs(geometry):
    """The op's keyword arguments for a random_geometry (the transposed op adds output_padding)."""
    g = geometry
    return dict(
        stride=g["stride"], padding=g["pairs"], dilation=g["dilation"], groups=g["groups"],
        **g["sharing"],
    )  # fmt: skip


def forward_oracle(geometry):
    """reference_local_conv on a random_geometry, as a function of (input, weight, bias)."""
    g = geometry

    def oracle(input, weight, bias=None):
        return reference_local_conv(
            input, weight, bias, g["stride"], flat(g["pairs"]), g["dilation"], g["groups"],
            g["share"], g["mode"],
        )  # fmt: skip

    return oracle


def run_with_gradients(function, tensors, grad_output=None):
    leaves = [t.detach().requires_grad_() for t in tensors if t is not None]
    out = function(*leaves)
    if grad_output is None:
        grad_output = torch.randn(
            out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64
        ).to(out)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad_output.to(out))], grad_output


def check_against_oracle(function, oracle, tensors, dtype, fallback=None):
    got, grad_output = run_with_gradients(function, tensors)
    expected, _ = run_with_gradients(
        oracle, [None if t is None else t.double().cpu() for t in tensors], grad_output.cpu()
    )
    baseline = None
    if fallback is not None and dtype in (torch.float16, torch.bfloat16):
        baseline, _ = run_with_gradients(fallback, tensors, grad_output)
    for index, (g, e) in enumerate(zip(got, expected)):
        error = relative_error(g.cpu(), e)
        fallback_error = None if baseline is None else relative_error(baseline[index].cpu(), e)
        assert error <= allowed_error(dtype, fallback_error), (index, error, fallback_error)


DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", range(12))
def test_forward_and_gradients_match_the_oracle(device, dtype, seed):
    rng = random.Random(seed)
    g = random_geometry(rng, dims=1 + seed % 3)
    bias_kind = ("none", "shared", "per_region")[seed % 3]
    tensors = forward_tensors(
        g, rng.randint(1, 3), dtype, device, torch.Generator().manual_seed(seed), bias_kind
    )
    kwargs, oracle = geometry_kwargs(g), forward_oracle(g)

    check_against_oracle(
        lambda *t: FORWARD[g["dims"]](*t, **kwargs),
        oracle,
        tensors,
        dtype,
        fallback=lambda *t: UNFOLD[g["dims"]](*t, **kwargs),
    )


@pytest.mark.parametrize("seed", range(40))
def test_shared_weights_match_the_oracle_on_many_geometries(seed):
    """Block and tile sharing in float64 over many seeds: the unfold fallback's region grid (a
    strided view, csrc/regions.h) reaches past the output wherever the share does not divide it,
    and with groups its rows interleave regions, groups and members."""
    rng = random.Random(1000 + seed)
    g = random_geometry(rng)
    while not g["sharing"]:
        g = random_geometry(rng)
    tensors = forward_tensors(
        g, rng.randint(1, 3), torch.float64, "cpu", torch.Generator().manual_seed(seed),
        ("none", "shared", "per_region")[seed % 3],
    )  # fmt: skip
    kwargs, oracle = geometry_kwargs(g), forward_oracle(g)

    check_against_oracle(lambda *t: UNFOLD[g["dims"]](*t, **kwargs), oracle, tensors, torch.float64)


def test_empty_grid_slots_do_not_reach_the_gradients():
    """A period of 3 over 8 outputs leaves a slot past the output in region 2 of the fallback's
    grid. It reads inputs 8 and 9, which real locations read too: an inf at input 9 (read by
    location 7, region 1, whose grad_output is zero) makes region 1's weight gradient NaN, as in
    the oracle, and must leave region 2's finite."""
    input = torch.randn(1, 1, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    input[0, 0, 9] = float("inf")
    weight = torch.randn(3, 1, 1, 3, dtype=torch.float64)
    grad_output = torch.ones(1, 1, 8, dtype=torch.float64)
    grad_output[0, 0, 7] = 0

    def gradients(function):
        leaves = [input.clone().requires_grad_(), weight.clone().requires_grad_()]
        out = function(*leaves)
        return torch.autograd.grad(out, leaves, grad_output)

    got = gradients(lambda x, w: lc_cuda.unfold_local_conv1d(x, w, share_period=3))
    expected = gradients(lambda x, w: reference_local_conv(x, w, share=[3], share_mode="tile"))
    assert torch.isnan(expected[1][1]).any() and torch.isfinite(expected[1][2]).all()
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", range(12))
def test_transpose_matches_the_oracle(device, dtype, seed):
    rng = random.Random(100 + seed)
    g = random_geometry(rng, dims=1 + seed % 3)
    output_padding = [rng.randint(0, max(s, d) - 1) for s, d in zip(g["stride"], g["dilation"])]
    generator = torch.Generator().manual_seed(seed)
    n = rng.randint(1, 3)
    input = torch.randn(n, g["c_out"], *g["out"], generator=generator, dtype=torch.float64)
    weight = torch.randn(
        *g["regions"], g["c_out"], g["c_in"] // g["groups"], *g["kernel"],
        generator=generator, dtype=torch.float64,
    )  # fmt: skip
    size = [
        (o - 1) * s - b - a + d * (k - 1) + 1 + e
        for o, s, (b, a), d, k, e in zip(
            g["out"], g["stride"], g["pairs"], g["dilation"], g["kernel"], output_padding
        )
    ]
    bias_shape = (g["c_in"], *size) if seed % 2 else (g["c_in"],)  # per location, or shared
    bias = torch.randn(bias_shape, generator=generator, dtype=torch.float64)
    tensors = [t.to(device, dtype) for t in (input, weight, bias)]
    kwargs = dict(geometry_kwargs(g), output_padding=output_padding)

    def oracle(input, weight, bias):
        return reference_local_conv_transpose(
            input, weight, bias, g["stride"], flat(g["pairs"]), output_padding, g["dilation"],
            g["groups"], g["share"], g["mode"],
        )  # fmt: skip

    check_against_oracle(lambda *t: TRANSPOSE[g["dims"]](*t, **kwargs), oracle, tensors, dtype)


@pytest.mark.parametrize("seed", range(20))
def test_adjoint_identity(seed):
    """<local_conv(x, w), y> == <x, local_conv_transpose(y, w)> to float64 rounding."""
    rng = random.Random(1000 + seed)
    g = random_geometry(rng)
    # below the stride: the forward op on the transposed op's result has its input's positions
    output_padding = [rng.randint(0, s - 1) for s in g["stride"]]
    generator = torch.Generator().manual_seed(seed)
    # the input size that output_padding describes: the transposed op's result
    size = [
        (o - 1) * s - b - a + d * (k - 1) + 1 + e
        for o, s, (b, a), d, k, e in zip(
            g["out"], g["stride"], g["pairs"], g["dilation"], g["kernel"], output_padding
        )
    ]
    if any(n < 1 for n in size):
        pytest.skip("the padding leaves no input")
    x = torch.randn(2, g["c_in"], *size, generator=generator, dtype=torch.float64)
    w = torch.randn(
        *g["regions"], g["c_out"], g["c_in"] // g["groups"], *g["kernel"],
        generator=generator, dtype=torch.float64,
    )  # fmt: skip
    kwargs = geometry_kwargs(g)
    y_x = FORWARD[g["dims"]](x, w, **kwargs)
    y = torch.randn(y_x.shape, generator=generator, dtype=torch.float64)
    t_y = TRANSPOSE[g["dims"]](y, w, output_padding=output_padding, **kwargs)
    left, right = (y_x * y).sum(), (x * t_y).sum()
    assert t_y.shape == x.shape
    assert abs(left - right) <= 1e-12 * max(1.0, left.abs().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_channels_last_input_is_read_in_place(device, dims):
    """Input in channels-last order (channels_last, channels_last_3d, or (N, L, C) transposed
    for 1D) gives the same result as contiguous input."""
    rng = random.Random(dims)
    g = random_geometry(rng, dims=dims)
    input, weight, bias = forward_tensors(
        g, 3, torch.float32, device, torch.Generator().manual_seed(0), "per_region"
    )
    layout = {2: torch.channels_last, 3: torch.channels_last_3d}.get(dims)
    permuted = (
        input.contiguous(memory_format=layout)
        if layout
        else input.transpose(1, 2).contiguous().transpose(1, 2)
    )
    kwargs = geometry_kwargs(g)
    torch.testing.assert_close(
        FORWARD[dims](permuted, weight, bias, **kwargs),
        FORWARD[dims](input, weight, bias, **kwargs),
    )


def test_long_1d_genomics_layer():
    """One channel, 50,000 positions, kernel 5: deepGBLUP's shape."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(4, 1, 50_000, generator=generator, dtype=torch.float64)
    weight = torch.randn(49_996, 2, 1, 5, generator=generator, dtype=torch.float64)
    bias = torch.randn(2, 49_996, generator=generator, dtype=torch.float64)
    check_against_oracle(
        lc_cuda.local_conv1d,
        lambda x, w, b: reference_local_conv(x, w, b),
        [input.float(), weight.float(), bias.float()],
        torch.float32,
    )


def test_gradcheck_and_gradgradcheck_of_shared_grouped_and_transposed_calls():
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape):
        return torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)

    x, w, b = tensor(2, 4, 3, 4, 2), tensor(2, 2, 1, 4, 2, 2, 2, 2), tensor(4, 2, 2, 1)
    layer = lambda x, w, b: lc_cuda.local_conv3d(  # noqa: E731
        x, w, b, padding=((1, 0), (0, 1), (0, 0)), groups=2, share_block=(2, 3, 2)
    )
    assert torch.autograd.gradcheck(layer, (x, w, b))
    assert torch.autograd.gradgradcheck(layer, (x, w, b))
    y, wt, bt = tensor(2, 4, 3, 3), tensor(2, 3, 4, 1, 2, 2), tensor(2)
    decoder = lambda y, w, b: lc_cuda.local_conv_transpose2d(  # noqa: E731
        y, w, b, stride=2, output_padding=1, groups=2, share_period=(2, 3)
    )
    assert torch.autograd.gradcheck(decoder, (y, wt, bt))
    assert torch.autograd.gradgradcheck(decoder, (y, wt, bt))


@pytest.mark.parametrize("after", [0, 1, 3])
def test_transpose_output_padding_beyond_the_stride(after):
    """ConvTranspose allows output_padding up to the dilation where that is larger than the
    stride; the extra positions reach no input position, and the gradients (local_conv calls
    over the result) must still see only the input's positions: checked where the after-padding
    absorbs them (after >= 1) and where it does not (after = 0)."""
    generator = torch.Generator().manual_seed(after)
    y = torch.randn(2, 3, 4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    arguments = dict(stride=(1, 2), padding=((1, after), (0, 0)), output_padding=(2, 1))
    arguments["dilation"] = (3, 2)
    out = lc_cuda.local_conv_transpose2d(y, w, **arguments)
    expected = reference_local_conv_transpose(y, w, None, (1, 2), (1, after, 0, 0), (2, 1), (3, 2))
    torch.testing.assert_close(out, expected)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    got = torch.autograd.grad(out, (y, w), grad)
    want = torch.autograd.grad(expected, (y, w), grad)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)
    assert torch.autograd.gradcheck(
        lambda y, w: lc_cuda.local_conv_transpose2d(y, w, **arguments), (y, w)
    )
