"""An independent float64 oracle for lc_cuda's operators: each output position's patch picked by
explicit indices and summed against its region's filters (and, for the transposed op, each input
position's values spread over its window, one position at a time), written without unfold,
as_strided, bmm or the operators' own code; and the errors allowed against it. The test suite
and `python -m lc_cuda.selftest` both check against these."""

import itertools

import torch


def reference_local_conv(
    input, weight, bias=None, stride=None, padding=None, dilation=None, groups=1, share=None,
    share_mode="block",
):  # fmt: skip
    """out[n, o, *i] = bias[o, *r(i)] + sum_{c in o's group, *k} w[*r(i), o, c, *k]
    * xpad[n, c, *(i*s + k*d)], for 1 to 3 spatial dimensions.

    padding is (before, after) per dimension, flat; share is the region size (block) or period
    (tile) per dimension; r(i) = i // share or i % share. Every patch element is picked by an
    explicit index (i*s + k*d per dimension) and every position's filters by its region's
    index, then one einsum sums the products. Computes in float64 and returns float64; autograd
    flows through it."""
    dims = input.dim() - 2
    stride = stride or (1,) * dims
    dilation = dilation or (1,) * dims
    padding = padding or (0,) * (2 * dims)
    share = share or (1,) * dims
    input, weight = input.double(), weight.double()
    before, after = padding[0::2], padding[1::2]
    padded = torch.nn.functional.pad(
        input, [side for b, a in zip(reversed(before), reversed(after)) for side in (b, a)]
    )
    kernel = weight.shape[dims + 2 :]
    out_channels, group_channels = weight.shape[dims], weight.shape[dims + 1]
    out_size = [
        (n - d * (k - 1) - 1) // s + 1
        for n, k, s, d in zip(padded.shape[2:], kernel, stride, dilation)
    ]
    # The padded positions the windows read, and the regions, per dimension, shaped to broadcast
    # to (*out, *kernel) and (*out) respectively.
    reads, regions = [], []
    for dim, (out, k, s, d, b) in enumerate(zip(out_size, kernel, stride, dilation, share)):
        position = torch.arange(out)
        read = position[:, None] * s + torch.arange(k)[None, :] * d
        shape = [1] * (2 * dims)
        shape[dim], shape[dims + dim] = out, k
        reads.append(read.reshape(shape))
        region = position // b if share_mode == "block" else position % b
        regions.append(region.reshape([out if i == dim else 1 for i in range(dims)]))
    patches = padded[(slice(None), slice(None), *reads)]  # (N, C_in, *out, *kernel)
    filters = weight[tuple(regions)]  # (*out, C_out, C_in / groups, *kernel)
    locations, taps = int(torch.tensor(out_size).prod()), int(torch.tensor(kernel).prod())
    patches = patches.reshape(input.shape[0], groups, group_channels, locations, taps)
    filters = filters.reshape(locations, groups, out_channels // groups, group_channels, taps)
    out = torch.einsum("ngclk,lgock->ngol", patches, filters)
    out = out.reshape(input.shape[0], out_channels, *out_size)
    if bias is not None:
        bias = bias.double()
        if bias.dim() == 1:
            out = out + bias.view(-1, *[1] * dims)
        else:
            out = out + bias[(slice(None), *regions)]
    return out


def reference_local_conv_transpose(
    input, weight, bias=None, stride=None, padding=None, output_padding=None, dilation=None,
    groups=1, share=None, share_mode="block",
):  # fmt: skip
    """The transpose by its own definition: every input position spreads its values, through
    its region's filters, over the output window it covers (ConvTranspose's scatter), then the
    padding is cut off. Computes in float64."""
    dims = input.dim() - 2
    stride = stride or (1,) * dims
    dilation = dilation or (1,) * dims
    padding = padding or (0,) * (2 * dims)
    output_padding = output_padding or (0,) * dims
    share = share or (1,) * dims
    input, weight = input.double(), weight.double()
    kernel = weight.shape[dims + 2 :]
    in_channels, group_out = weight.shape[dims], weight.shape[dims + 1]
    group_in = in_channels // groups
    before, after = padding[0::2], padding[1::2]
    full = [
        (o - 1) * s + d * (k - 1) + 1 + extra
        for o, s, d, k, extra in zip(input.shape[2:], stride, dilation, kernel, output_padding)
    ]
    out = input.new_zeros((input.shape[0], group_out * groups, *full))
    for position in itertools.product(*[range(o) for o in input.shape[2:]]):
        region = tuple(i // b if share_mode == "block" else i % b for i, b in zip(position, share))
        window = tuple(
            slice(i * s, i * s + d * (k - 1) + 1, d)
            for i, s, d, k in zip(position, stride, dilation, kernel)
        )
        for g in range(groups):
            values = input[(slice(None), slice(g * group_in, (g + 1) * group_in), *position)]
            filters = weight[region][g * group_in : (g + 1) * group_in]  # (C_in/G, C_out/G, *K)
            spread = torch.einsum("nc,co...->no...", values, filters)
            out[(slice(None), slice(g * group_out, (g + 1) * group_out), *window)] += spread
    out = out[
        (slice(None), slice(None), *[slice(b, size - a) for b, a, size in zip(before, after, full)])
    ]
    if bias is not None:
        bias = bias.double()
        out = out + (bias.view(-1, *[1] * dims) if bias.dim() == 1 else bias)
    return out


def reference_local_conv2d(
    input, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1)
):
    """reference_local_conv for 2D layers without groups or sharing; padding is (top, bottom,
    left, right)."""
    return reference_local_conv(input, weight, bias, stride, padding, dilation)


def expected_size(size, kernel, stride, pad_before, pad_after, dilation):
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


# Error allowed relative to the largest |reference| value, per dtype of the computation.
RELATIVE_TOLERANCE = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}


# TF32 keeps 10 mantissa bits; the floor of allowed_error where TF32 runs.
TF32_EPS = 2.0**-11


def allowed_error(dtype, fallback_error=None, tf32=False):
    """The relative error allowed against the reference: RELATIVE_TOLERANCE for float64 and exact
    float32, and for the fallback itself (fallback_error None). A kernel in half precision or TF32
    may have twice the error of the plain PyTorch path at the same precision (`fallback_error`,
    the unfold + bmm fallback's), and at least one rounding step (flash-attention's rule)."""
    if fallback_error is None or (dtype in (torch.float64, torch.float32) and not tf32):
        return RELATIVE_TOLERANCE[dtype]
    return 2 * max(fallback_error, TF32_EPS if tf32 else torch.finfo(dtype).eps)


def relative_error(actual, expected):
    """max |actual - expected| / max |expected| (0 for empty tensors)."""
    if expected.numel() == 0:
        return 0.0
    scale = expected.abs().max().clamp_min(1e-30)
    return ((actual.double() - expected).abs().max() / scale).item()


def assert_matches_reference(actual, expected, dtype):
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == dtype, f"dtype {actual.dtype} != {dtype}"
    error = relative_error(actual, expected)
    assert error <= RELATIVE_TOLERANCE[dtype], f"relative error {error:.3g} for {dtype}"
