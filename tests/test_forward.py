"""Forward results against the float64 oracle, over geometry, dtypes, bias kinds and layouts."""

import pytest
import torch
from conftest import DEVICES
from hypothesis import given, settings
from random_cases import geometries, make_case

import lc_cuda
from lc_cuda.reference import assert_matches_reference, expected_size, reference_local_conv2d


def check(input, weight, bias, stride, padding, dilation, function=lc_cuda.local_conv2d):
    out = function(input, weight, bias, stride, padding, dilation)
    expected = reference_local_conv2d(
        input, weight, bias, stride, (padding[0], padding[0], padding[1], padding[1]), dilation
    )
    assert_matches_reference(out.cpu(), expected.cpu(), input.dtype)
    assert out.is_contiguous()
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", ["none", "shared", "per_location"])
def test_matches_reference_all_dtypes(device, dtype, bias):
    args = make_case(3, 4, (9, 7), 5, (3, 2), (2, 1), (1, 2), (1, 2), bias, dtype, device)
    check(*args, (2, 1), (1, 2), (1, 2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("function", [lc_cuda.local_conv2d, lc_cuda.unfold_local_conv2d])
@settings(max_examples=60, deadline=None)
@given(geometry=geometries())
def test_random_geometry(device, function, geometry):
    check(*geometry.tensors(torch.float64, device), *geometry.args, function=function)


@pytest.mark.parametrize("device", DEVICES)
def test_unfold_fallback_equals_local_conv2d(device):
    input, weight, bias = make_case(
        2, 3, (8, 8), 4, (3, 3), (1, 1), (1, 1), (1, 1), "shared", torch.float32, device
    )
    out = lc_cuda.local_conv2d(input, weight, bias, 1, 1)
    torch.testing.assert_close(
        lc_cuda.unfold_local_conv2d(input, weight, bias, 1, 1), out, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", [(3, 3), (2, 4), (4, 1)])
@pytest.mark.parametrize("dilation", [(1, 1), (2, 1)])
def test_same_padding_matches_conv2d_split(device, kernel, dilation):
    """'same' keeps the size; for an even span the extra pad goes after, as in Conv2d."""
    n, c_in, c_out, h, w = 2, 3, 2, 7, 6
    input = torch.randn(n, c_in, h, w, dtype=torch.float64, device=device)
    weight = torch.randn(h, w, c_out, c_in, *kernel, dtype=torch.float64, device=device)
    out = lc_cuda.local_conv2d(input, weight, None, 1, "same", dilation)
    pads = []
    for k, d in zip(kernel, dilation):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    expected = reference_local_conv2d(input, weight, None, (1, 1), pads, dilation)
    assert_matches_reference(out.cpu(), expected.cpu(), torch.float64)
    # Same padding split as torch's Conv2d: a conv whose filters equal every location's.
    conv_weight = torch.randn(c_out, c_in, *kernel, dtype=torch.float64, device=device)
    tiled = conv_weight.expand(h, w, *conv_weight.shape)
    torch.testing.assert_close(
        lc_cuda.local_conv2d(input, tiled, None, 1, "same", dilation),
        torch.nn.functional.conv2d(input, conv_weight, None, 1, "same", dilation),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_valid_padding_is_zero_padding(device):
    input, weight, _ = make_case(
        2, 2, (6, 5), 3, (3, 2), (1, 1), (0, 0), (1, 1), "none", torch.float64, device
    )
    torch.testing.assert_close(
        lc_cuda.local_conv2d(input, weight, None, 1, "valid"),
        lc_cuda.local_conv2d(input, weight, None, 1, 0),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_batch_zero_returns_empty_output(device):
    input, weight, bias = make_case(
        0, 3, (5, 5), 4, (3, 3), (1, 1), (0, 0), (1, 1), "per_location", torch.float32, device
    )
    out = lc_cuda.local_conv2d(input, weight, bias)
    assert out.shape == (0, 4, 3, 3)
    assert out.device == input.device


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_channels_last_and_expanded_inputs(device):
    input, weight, bias = make_case(
        4, 3, (8, 7), 2, (3, 3), (2, 1), (1, 0), (1, 2), "per_location", torch.float64, device
    )
    args = ((2, 1), (1, 0), (1, 2))
    expected = lc_cuda.local_conv2d(input, weight, bias, *args)
    variants = {
        "channels_last": input.to(memory_format=torch.channels_last),
        "transposed": input.transpose(2, 3).contiguous().transpose(2, 3),
        "every other element": torch.stack([input, input], dim=-1)[..., 0],
        "storage offset": torch.cat([torch.zeros_like(input[:1]), input])[1:],
        "expanded batch": input[:1].expand(4, -1, -1, -1),
    }
    for name, variant in variants.items():
        reference = variant.contiguous()
        torch.testing.assert_close(
            lc_cuda.local_conv2d(variant, weight, bias, *args),
            lc_cuda.local_conv2d(reference, weight, bias, *args),
            msg=name,
        )
    torch.testing.assert_close(
        lc_cuda.local_conv2d(variants["channels_last"], weight, bias, *args), expected
    )
    # Non-contiguous weight and bias too.
    torch.testing.assert_close(
        lc_cuda.local_conv2d(
            input,
            weight.transpose(0, 1).contiguous().transpose(0, 1),
            bias.transpose(1, 2).contiguous().transpose(1, 2),
            *args,
        ),
        expected,
        msg="strided weight and bias",
    )


def test_local_conv1d_matches_2d_with_unit_height():
    n, c_in, length, c_out, k = 3, 4, 11, 5, 3
    input = torch.randn(n, c_in, length, dtype=torch.float64)
    out_len = expected_size(length, k, 2, 1, 1, 2)
    weight = torch.randn(out_len, c_out, c_in, k, dtype=torch.float64)
    bias = torch.randn(c_out, out_len, dtype=torch.float64)
    out = lc_cuda.local_conv1d(input, weight, bias, stride=2, padding=1, dilation=2)
    expected = lc_cuda.local_conv2d(
        input.unsqueeze(2),
        weight.unsqueeze(0).unsqueeze(4),
        bias.unsqueeze(1),
        (1, 2),
        (0, 1),
        (1, 2),
    ).squeeze(2)
    assert out.shape == (n, c_out, out_len)
    torch.testing.assert_close(out, expected)
    reference = reference_local_conv2d(
        input.unsqueeze(2),
        weight.unsqueeze(0).unsqueeze(4),
        bias.unsqueeze(1),
        (1, 2),
        (0, 0, 1, 1),
        (1, 2),
    )
    assert_matches_reference(out, reference.squeeze(2), torch.float64)


def test_local_conv1d_same_and_shared_bias():
    input = torch.randn(2, 3, 10, dtype=torch.float64)
    weight = torch.randn(10, 4, 3, 4, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    out = lc_cuda.local_conv1d(input, weight, bias, padding="same")
    expected = reference_local_conv2d(
        input.unsqueeze(2), weight.unsqueeze(0).unsqueeze(4), bias, (1, 1), (0, 0, 1, 2), (1, 1)
    ).squeeze(2)
    assert_matches_reference(out, expected, torch.float64)


def test_local_conv1d_passes_the_tensors_themselves(monkeypatch):
    """No copies on the way to the operator: it reads the caller's tensors in place."""
    input = torch.randn(2, 3, 10)
    weight = torch.randn(8, 4, 3, 3)
    bias = torch.randn(4, 8)
    seen = []
    real_op = lc_cuda._autograd._forward_op

    def recording_op(*args):
        seen.append(args[:3])
        return real_op(*args)

    monkeypatch.setattr(lc_cuda._autograd, "_forward_op", recording_op)
    lc_cuda.local_conv1d(input, weight, bias)
    ((input_seen, weight_seen, bias_seen),) = seen
    for original, seen_by_op in ((input, input_seen), (weight, weight_seen), (bias, bias_seen)):
        assert seen_by_op.data_ptr() == original.data_ptr()
        assert seen_by_op.untyped_storage().data_ptr() == original.untyped_storage().data_ptr()
