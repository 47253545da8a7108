"""An independent float64 oracle for local_conv2d: a direct sum over each output location's
patch, written without unfold, as_strided or bmm; and the errors allowed against it. The test
suite and `python -m lc_cuda.selftest` both check against these."""

import torch


def reference_local_conv2d(
    input, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1)
):
    """out[n, o, i, j] = bias + sum_{c,p,q} w[i, j, o, c, p, q] * xpad[n, c, i*sh+p*dh, j*sw+q*dw].

    padding is (top, bottom, left, right), so that asymmetric ('same', even kernel) cases can be
    checked too. Computes in float64 and returns float64; autograd flows through it.
    """
    input, weight = input.double(), weight.double()
    top, bottom, left, right = padding
    n, c, h, w = input.shape
    padded = input.new_zeros((n, c, h + top + bottom, w + left + right))
    padded[:, :, top : top + h, left : left + w] = input
    out_h, out_w, _, _, kernel_h, kernel_w = weight.shape
    (stride_h, stride_w), (dil_h, dil_w) = stride, dilation
    rows = []
    for i in range(out_h):
        row = []
        for j in range(out_w):
            patch = padded[
                :,
                :,
                i * stride_h : i * stride_h + dil_h * (kernel_h - 1) + 1 : dil_h,
                j * stride_w : j * stride_w + dil_w * (kernel_w - 1) + 1 : dil_w,
            ]
            row.append(torch.einsum("ncpq,ocpq->no", patch, weight[i, j]))
        rows.append(torch.stack(row, dim=-1))
    out = torch.stack(rows, dim=-2)
    if bias is not None:
        bias = bias.double()
        out = out + (bias.view(1, -1, 1, 1) if bias.dim() == 1 else bias.unsqueeze(0))
    return out


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
