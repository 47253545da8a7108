"""Gradients against the float64 oracle's autograd, gradcheck and gradgradcheck."""

import pytest
import torch
from conftest import DEVICES
from hypothesis import given, settings
from random_cases import geometries, make_case

import lc_cuda
from lc_cuda.reference import assert_matches_reference, reference_local_conv2d


def gradients(function, input, weight, bias, grad_output, *args):
    leaves = [t.detach().requires_grad_() for t in (input, weight, bias) if t is not None]
    out = function(*leaves[:2], leaves[2] if bias is not None else None, *args)
    return torch.autograd.grad(out, leaves, grad_output.to(out.dtype))


def check_gradients(input, weight, bias, stride, padding, dilation, seed=1):
    pads = (padding[0], padding[0], padding[1], padding[1])
    out = lc_cuda.local_conv2d(input, weight, bias, stride, padding, dilation)
    grad_output = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    ).to(input.device)
    got = gradients(
        lc_cuda.local_conv2d, input, weight, bias, grad_output, stride, padding, dilation
    )
    expected = gradients(
        reference_local_conv2d,
        input.double(),
        weight.double(),
        None if bias is None else bias.double(),
        grad_output,
        stride,
        pads,
        dilation,
    )
    for name, g, e in zip(("input", "weight", "bias"), got, expected):
        assert g.shape == e.shape, name
        assert_matches_reference(g.cpu(), e.cpu(), input.dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", ["none", "shared", "per_location"])
def test_gradients_match_reference(device, dtype, bias):
    args = make_case(3, 4, (9, 7), 5, (3, 2), (2, 1), (1, 2), (1, 2), bias, dtype, device)
    check_gradients(*args, (2, 1), (1, 2), (1, 2))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None)
@given(geometry=geometries(max_size=8))
def test_random_geometry_gradients(device, geometry):
    check_gradients(*geometry.tensors(torch.float64, device), *geometry.args)


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_with_same_padding_even_kernel(device):
    input = torch.randn(2, 3, 6, 5, dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.randn(6, 5, 2, 3, 2, 4, dtype=torch.float64, device=device, requires_grad=True)
    out = lc_cuda.local_conv2d(input, weight, None, 1, "same")
    expected = reference_local_conv2d(input, weight, None, (1, 1), (0, 1, 1, 2), (1, 1))
    grad_output = torch.randn_like(out)
    got = torch.autograd.grad(out, (input, weight), grad_output)
    want = torch.autograd.grad(expected, (input, weight), grad_output)
    for g, e in zip(got, want):
        assert_matches_reference(g.cpu(), e.cpu(), torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", ["none", "shared", "per_location"])
@pytest.mark.parametrize("function", [lc_cuda.local_conv2d, lc_cuda.unfold_local_conv2d])
def test_gradcheck_and_gradgradcheck(device, bias, function):
    input, weight, bias_tensor = make_case(
        2, 2, (5, 4), 2, (2, 3), (2, 1), (1, 1), (1, 1), bias, torch.float64, device
    )
    tensors = [t.requires_grad_() for t in (input, weight, bias_tensor) if t is not None]

    def call(*tensors):
        return function(
            tensors[0],
            tensors[1],
            tensors[2] if len(tensors) == 3 else None,
            (2, 1),
            (1, 1),
            (1, 1),
        )

    assert torch.autograd.gradcheck(call, tensors)
    assert torch.autograd.gradgradcheck(call, tensors)


def test_gradgradcheck_local_conv1d_same_padding():
    input = torch.randn(2, 2, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)

    def call(input, weight, bias):
        return lc_cuda.local_conv1d(input, weight, bias, padding="same")

    assert torch.autograd.gradcheck(call, (input, weight, bias))
    assert torch.autograd.gradgradcheck(call, (input, weight, bias))


def test_only_requested_gradients_are_computed(monkeypatch):
    """The backward op's output_mask follows requires_grad, so frozen weights cost nothing."""
    input = torch.randn(2, 3, 6, 6, requires_grad=True)
    weight = torch.randn(4, 4, 2, 3, 3, 3)
    masks = []
    real_op = lc_cuda._autograd._backward_op

    def recording_op(*args):
        masks.append(list(args[10]))
        return real_op(*args)

    monkeypatch.setattr(lc_cuda._autograd, "_backward_op", recording_op)
    lc_cuda.local_conv2d(input, weight).sum().backward()
    assert masks == [[True, False, False]]
    assert input.grad.shape == input.shape
