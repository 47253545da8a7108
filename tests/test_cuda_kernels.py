"""The hand-written CUDA kernels: accuracy per dtype, determinism, 64-bit indexing, CPU
agreement. Everything here needs a GPU and a build with kernels; elsewhere it is skipped.
(The shared tests in test_forward, test_backward, test_op and test_modules also run on CUDA.)"""

import pytest
import torch
from hypothesis import given, settings
from random_cases import family_case as make_family_case
from random_cases import family_reference, family_results, geometries, make_case

import lc_cuda
from lc_cuda.reference import (
    allowed_error,
    reference_local_conv2d,
    relative_error,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not lc_cuda.build_info()["cuda_kernels"], reason="this build has no CUDA kernels"
    ),
]

GEOMETRIES = {
    # name: n, c_in, (h, w), c_out, kernel, stride, padding, dilation
    "deepface_like": (8, 16, (15, 13), 16, (5, 5), (1, 1), (0, 0), (1, 1)),
    "strided_dilated": (5, 3, (17, 11), 20, (3, 2), (2, 3), (1, 2), (2, 1)),
    "wide_channels": (3, 70, (6, 6), 70, (3, 3), (1, 1), (1, 1), (1, 1)),
    "pointwise": (65, 33, (4, 4), 40, (1, 1), (1, 1), (0, 0), (1, 1)),
}


def run_all(input, weight, bias, args, function=lc_cuda.local_conv2d):
    """The output and the gradients of input, weight (and bias) for a fixed grad_output."""
    leaves = [t.detach().requires_grad_() for t in (input, weight, bias) if t is not None]
    out = function(leaves[0], leaves[1], leaves[2] if bias is not None else None, *args)
    grad_output = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64
    ).to(out)
    return (out.detach(), *torch.autograd.grad(out, leaves, grad_output))


def reference_all(input, weight, bias, args):
    stride, padding, dilation = args
    pads = (padding[0], padding[0], padding[1], padding[1])
    return run_all(
        *(None if t is None else t.double().cpu() for t in (input, weight, bias)),
        (stride, pads, dilation),
        function=reference_local_conv2d,
    )


def tensors(name, dtype, bias="per_location"):
    n, c_in, size, c_out, kernel, stride, padding, dilation = GEOMETRIES[name]
    return make_case(n, c_in, size, c_out, kernel, stride, padding, dilation, bias, dtype, "cuda")


def geometry_args(name):
    return GEOMETRIES[name][5:]


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("bias", ["shared", "per_location"])
def test_float32_and_float64_within_tolerance(name, bias):
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        got = run_all(*tensors(name, dtype, bias), geometry_args(name))
        expected = reference_all(*tensors(name, dtype, bias), geometry_args(name))
        for label, g, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), got, expected):
            error = relative_error(g.cpu(), e)
            assert error <= tolerance, f"{dtype} {label}: relative error {error:.3g}"


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_error_at_most_twice_the_fallbacks(name, dtype):
    args = tensors(name, dtype)
    expected = reference_all(*args, geometry_args(name))
    kernels = run_all(*args, geometry_args(name))
    fallback = run_all(*args, geometry_args(name), function=lc_cuda.unfold_local_conv2d)
    for label, k, f, e in zip(
        ("output", "grad_input", "grad_weight", "grad_bias"), kernels, fallback, expected
    ):
        kernel_error, fallback_error = relative_error(k.cpu(), e), relative_error(f.cpu(), e)
        # with a floor of one rounding step, where the fallback happens to be nearly exact
        assert kernel_error <= allowed_error(dtype, fallback_error), (
            f"{label}: kernels {kernel_error:.3g} vs fallback {fallback_error:.3g}"
        )


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_deterministic(name, dtype):
    first = run_all(*tensors(name, dtype), geometry_args(name))
    second = run_all(*tensors(name, dtype), geometry_args(name))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@settings(max_examples=40, deadline=None)
@given(geometry=geometries(max_size=12))
def test_cpu_and_cuda_agree(geometry):
    cpu = geometry.tensors(torch.float64, "cpu")
    got = run_all(*(None if t is None else t.cuda() for t in cpu), geometry.args)
    for g, e in zip(got, run_all(*cpu, geometry.args)):
        torch.testing.assert_close(g.cpu(), e, rtol=1e-10, atol=1e-10)


def test_non_contiguous_weight_grad_output_and_batch_one_launch_paths():
    input, weight, bias = tensors("strided_dilated", torch.float32)
    transposed_weight = weight.transpose(2, 3).contiguous().transpose(2, 3)
    assert not transposed_weight.is_contiguous()
    for args in ((input, transposed_weight, bias), (input[:1], weight, bias)):
        got = lc_cuda.local_conv2d(*args, (2, 3), (1, 2), (2, 1))
        expected = lc_cuda.unfold_local_conv2d(*args, (2, 3), (1, 2), (2, 1))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_above_two_to_the_31_elements_uses_64_bit_indexing():
    """An input and an output of 2^31 + 2^16 elements each, in bfloat16 (4.3 GB apiece)."""
    n, size = 32769, 256
    assert n * size * size > 2**31
    input = (
        torch.randn(1, 1, size, size, device="cuda", dtype=torch.bfloat16)
        .expand(n, -1, -1, -1)
        .contiguous()
    )
    input[-1].mul_(-2)  # the last sample, past the 32-bit range, differs from the first
    weight = torch.randn(size, size, 1, 1, 1, 1, device="cuda", dtype=torch.bfloat16)
    out = lc_cuda.local_conv2d(input, weight)
    assert out.shape == (n, 1, size, size)
    expected_last = (input[-1, 0].float() * weight[:, :, 0, 0, 0, 0].float()).to(torch.bfloat16)
    torch.testing.assert_close(out[-1, 0], expected_last)
    torch.testing.assert_close(
        out[0, 0], (-0.5 * input[-1, 0].float() * weight[:, :, 0, 0, 0, 0].float()).bfloat16()
    )
    del out
    grad_weight = torch.ops.lc_cuda.local_conv2d_backward(
        torch.ones(n, 1, size, size, device="cuda", dtype=torch.bfloat16),
        input,
        weight,
        [1, 1],
        [0, 0],
        [1, 1],
        False,
        [False, True, False],
    )[1]
    # sum over the batch of the input: (n - 1) copies of x and one of -2x
    expected = ((n - 3) * input[0, 0].float()).view(size, size, 1, 1, 1, 1)
    torch.testing.assert_close(grad_weight.float(), expected, rtol=2e-2, atol=1e-2)


def test_backend_variable_is_validated(monkeypatch):
    input, weight, bias = tensors("pointwise", torch.float32)
    monkeypatch.setenv("LC_CUDA_BACKEND", "cudnn")
    with pytest.raises(RuntimeError, match="LC_CUDA_BACKEND must be 'auto', 'ffma' or 'unfold'"):
        lc_cuda.local_conv2d(input, weight, bias)


def event_names(input, weight, bias, *args, backward=False):
    """The names of the operators and kernels one forward call (and its backward) runs."""
    leaves = [t.detach().requires_grad_(backward) for t in (input, weight, bias) if t is not None]
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as p:
        out = lc_cuda.local_conv2d(
            leaves[0], leaves[1], leaves[2] if bias is not None else None, *args
        )
        if backward:
            out.sum().backward()
        torch.cuda.synchronize()
    return " ".join(event.name for event in p.events())


def test_unfold_backend_runs_the_fallback(monkeypatch):
    """With LC_CUDA_BACKEND=unfold the profile shows the fallback's bmm, not the kernels."""
    input, weight, bias = tensors("pointwise", torch.float32)
    assert "forward_kernel" in event_names(input, weight, bias)
    monkeypatch.setenv("LC_CUDA_BACKEND", "unfold")
    names = event_names(input, weight, bias)
    assert "forward_kernel" not in names and "aten::baddbmm" in names


needs_sm80 = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
    reason="the tensor-core kernels need sm_80 or newer",
)

# Geometries that steer the tensor-core launchers: the forward's 32-channel tiles (picked only
# where the grid still fills the GPU twice over; 512 CTAs here) and a dilation so wide that the
# staged input would not fit in shared memory (every pass then runs its FFMA kernel).
TENSOR_CORE_GEOMETRIES = {
    "wide_tiles": (128, 16, (34, 34), 64, (3, 3), (1, 1), (0, 0), (1, 1)),
    "too_wide_for_shared_memory": (4, 2, (3, 820), 8, (1, 3), (1, 1), (0, 0), (1, 400)),
}


@needs_sm80
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_on_tensor_cores_unless_ffma_is_asked_for(monkeypatch, dtype):
    """The forward, grad_input and grad_weight all take their tensor-core kernels."""
    input, weight, bias = tensors("deepface_like", dtype)
    args = geometry_args("deepface_like")
    names = event_names(input, weight, bias, *args, backward=True)
    for kernel in ("forward", "grad_input", "grad_weight"):
        assert f"{kernel}_tensor_core_kernel" in names
    monkeypatch.setenv("LC_CUDA_BACKEND", "ffma")
    names = event_names(input, weight, bias, *args, backward=True)
    assert "tensor_core" not in names
    for kernel in ("forward", "grad_input", "grad_weight"):
        assert f"{kernel}_kernel" in names


@needs_sm80
@pytest.mark.parametrize("name", sorted(TENSOR_CORE_GEOMETRIES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tensor_core_launcher_choices_stay_accurate(name, dtype):
    n, c_in, size, c_out, kernel, stride, padding, dilation = TENSOR_CORE_GEOMETRIES[name]
    args = make_case(
        n, c_in, size, c_out, kernel, stride, padding, dilation, "shared", dtype, "cuda"
    )
    geometry = (stride, padding, dilation)
    names = event_names(*args, *geometry, backward=True)
    on_tensor_cores = name == "wide_tiles"
    # the tile width is a template argument, so it shows in the kernel's name
    assert ("TensorCoreForwardTiles<4>" in names) == on_tensor_cores
    assert ("forward_tensor_core_kernel" in names) == on_tensor_cores
    assert ("grad_weight_tensor_core_kernel" in names) == on_tensor_cores
    assert ("grad_input_tensor_core_kernel" in names) == on_tensor_cores
    expected = reference_all(*args, geometry)
    got = run_all(*args, geometry)
    fallback = run_all(*args, geometry, function=lc_cuda.unfold_local_conv2d)
    for label, k, f, e in zip(
        ("output", "grad_input", "grad_weight", "grad_bias"), got, fallback, expected
    ):
        error, fallback_error = relative_error(k.cpu(), e), relative_error(f.cpu(), e)
        assert error <= allowed_error(dtype, fallback_error), (
            label,
            error,
            fallback_error,
        )


@pytest.fixture
def allow_tf32():
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


@needs_sm80
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_float32_takes_tf32_only_where_allowed(name, allow_tf32):
    """With TF32 allowed (torch's matmul policy), every float32 pass runs on TF32 tensor
    cores, each error within 2x the fallback's (whose bmm then runs in TF32 too); not allowed,
    everything stays on the exact FFMA kernels (test_float32_and_float64_within_tolerance)."""
    input, weight, bias = tensors(name, torch.float32)
    args = geometry_args(name)
    names = event_names(input, weight, bias, *args, backward=True)
    assert "forward_tf32_kernel" in names
    for kernel in ("grad_input", "grad_weight"):
        assert f"{kernel}_tensor_core_kernel<float" in names
    expected = reference_all(input, weight, bias, args)
    got = run_all(input, weight, bias, args)
    fallback = run_all(input, weight, bias, args, function=lc_cuda.unfold_local_conv2d)
    for label, k, f, e in zip(
        ("output", "grad_input", "grad_weight", "grad_bias"), got, fallback, expected
    ):
        error, fallback_error = relative_error(k.cpu(), e), relative_error(f.cpu(), e)
        assert error <= allowed_error(torch.float32, fallback_error, tf32=True), (
            label,
            error,
            fallback_error,
        )
    torch.backends.cuda.matmul.allow_tf32 = False
    names = event_names(input, weight, bias, *args, backward=True)
    assert "tf32" not in names and "tensor_core" not in names


@needs_sm80
def test_tensor_core_and_ffma_kernels_agree(monkeypatch):
    """The two half-precision paths sum the same products in different orders."""
    args = tensors("strided_dilated", torch.bfloat16)
    geometry = geometry_args("strided_dilated")
    tensor_core = run_all(*args, geometry)
    monkeypatch.setenv("LC_CUDA_BACKEND", "ffma")
    ffma = run_all(*args, geometry)
    for t, f in zip(tensor_core, ffma):
        torch.testing.assert_close(t, f, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("layout", ["expanded", "channels_last", "sliced"])
def test_strided_grad_output_is_read_in_place(layout):
    """Autograd hands the backward an expanded grad_output after a sum, a channels-last one
    after channels-last layers; the kernels read either through its strides."""
    input, weight, bias = tensors("strided_dilated", torch.float64)
    out = lc_cuda.local_conv2d(input, weight, bias, *geometry_args("strided_dilated"))
    grad_output = {
        "expanded": torch.ones(1, 1, 1, 1, device="cuda", dtype=torch.float64).expand(out.shape),
        "channels_last": torch.randn_like(out).to(memory_format=torch.channels_last),
        "sliced": torch.randn(*out.shape[:3], 2 * out.shape[3], device="cuda", dtype=torch.float64)[
            ..., ::2
        ],
    }[layout]
    assert not grad_output.is_contiguous()
    stride, padding, dilation = geometry_args("strided_dilated")

    def backward(force_unfold):
        return torch.ops.lc_cuda.local_conv2d_backward(
            grad_output,
            input,
            weight,
            stride,
            padding,
            dilation,
            False,
            [True, True, True],
            force_unfold,
        )

    for got, want in zip(backward(False), backward(True)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# The family's geometries, each run through every kernel (and tile and launch variant its sizes
# pick): name -> (n, c_in, size, c_out, kernel, stride, padding (before, after) per dimension,
# dilation, groups, sharing keyword arguments).
FAMILY = {
    # 3D: stride, dilation and one-sided padding along the depth
    "volume_3d": (
        3, 4, (6, 5, 7), 6, (3, 2, 3), (2, 1, 1), ((1, 0), (0, 1), (1, 1)), (2, 1, 1), 1, {},
    ),
    # groups of 18 input and 20 output channels: two channel tiles per group in every kernel
    "groups_of_18_and_20": (
        3, 36, (6, 9), 40, (2, 3), (1, 1), ((1, 0), (1, 1)), (1, 1), 2, {},
    ),
    # depthwise, two outputs per input channel, a dilation along the width
    "depthwise": (4, 8, (7, 10), 16, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 2), 8, {}),
    "depthwise_3d": (
        2, 4, (4, 5, 9), 4, (3, 3, 3), (1, 1, 1), ((1, 1), (1, 1), (1, 1)), (1, 1, 1), 4, {},
    ),
    # blocks of 4 x 10 (wider than a tensor-core CTA's 8 columns), the last partial both ways
    "block_wide_partial": (
        3, 5, (9, 23), 6, (3, 3), (1, 1), ((1, 1), (0, 1)), (1, 1), 1, {"share_block": (4, 10)},
    ),
    # 3D, groups, blocks of 2 x 3 (several per CTA), partial along the height and the width
    "block_3d_groups": (
        2, 4, (5, 3, 4), 4, (2, 2, 3), (2, 1, 1), ((1, 0), (0, 1), (1, 1)), (2, 1, 1), 2,
        {"share_block": (1, 2, 3)},
    ),
    # 1D depthwise, causal, weights repeating every 11 positions (more than a CTA's columns)
    "tile_1d": (3, 3, (40,), 6, (4,), (1,), ((3, 0),), (2,), 3, {"share_period": (11,)}),
    "tile_3d": (
        4, 5, (6, 5, 6), 7, (1, 1, 1), (2, 1, 1), ((0, 0), (0, 0), (0, 0)), (1, 1, 1), 1,
        {"share_period": (2, 3, 2)},
    ),
    # one block over the whole output: an ordinary convolution; a batch past 64 samples
    "whole_output_block": (
        66, 2, (5, 6), 3, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, {"share_block": (5, 6)},
    ),
}  # fmt: skip


def family_case(name, dtype, bias="per_region"):
    """The tensors of a FAMILY geometry on the GPU, the call, its fallback and its oracle."""
    return make_family_case(FAMILY[name], dtype, "cuda", len(name), bias)


@pytest.mark.parametrize("name", sorted(FAMILY))
@pytest.mark.parametrize("bias", ["shared", "per_region"])
def test_family_float32_and_float64_match_the_oracle(name, bias):
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        tensors, call, _, oracle = family_case(name, dtype, bias)
        got, expected = family_results(tensors, call), family_reference(tensors, oracle)
        for label, g, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), got, expected):
            error = relative_error(g.cpu(), e)
            assert error <= tolerance, f"{dtype} {label}: relative error {error:.3g}"


@pytest.mark.parametrize("name", sorted(FAMILY))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_family_half_precision_error_at_most_twice_the_fallbacks(name, dtype):
    tensors, call, unfold, oracle = family_case(name, dtype)
    expected = family_reference(tensors, oracle)
    kernels, fallback = family_results(tensors, call), family_results(tensors, unfold)
    for label, k, f, e in zip(
        ("output", "grad_input", "grad_weight", "grad_bias"), kernels, fallback, expected
    ):
        kernel_error, fallback_error = relative_error(k.cpu(), e), relative_error(f.cpu(), e)
        assert kernel_error <= allowed_error(dtype, fallback_error), (
            f"{label}: kernels {kernel_error:.3g} vs fallback {fallback_error:.3g}"
        )


@needs_sm80
@pytest.mark.parametrize("name", sorted(FAMILY))
def test_family_tf32_error_at_most_twice_the_fallbacks(name, allow_tf32):
    tensors, call, unfold, oracle = family_case(name, torch.float32)
    expected = family_reference(tensors, oracle)
    kernels, fallback = family_results(tensors, call), family_results(tensors, unfold)
    for label, k, f, e in zip(
        ("output", "grad_input", "grad_weight", "grad_bias"), kernels, fallback, expected
    ):
        error, fallback_error = relative_error(k.cpu(), e), relative_error(f.cpu(), e)
        assert error <= allowed_error(torch.float32, fallback_error, tf32=True), (
            label,
            error,
            fallback_error,
        )


def family_event_names(name, dtype):
    """The operators and kernels a FAMILY forward and backward runs."""
    tensors, call, _, _ = family_case(name, dtype)
    leaves = [t.detach().requires_grad_() for t in tensors]
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as p:
        call(*leaves).sum().backward()
        torch.cuda.synchronize()
    return " ".join(event.name for event in p.events())


@needs_sm80
@pytest.mark.parametrize("name", sorted(FAMILY))
def test_family_takes_the_kernels_not_the_fallback(name, monkeypatch):
    """3D, groups and sharing run the tensor-core kernels in bfloat16 and the FFMA kernels in
    float64, never the unfold fallback's bmm (the first-use check, which runs it, is off)."""
    monkeypatch.setenv("LC_CUDA_FIRST_USE_CHECK", "off")
    names = family_event_names(name, torch.bfloat16)
    for kernel in ("forward", "grad_input", "grad_weight"):
        assert f"{kernel}_tensor_core_kernel" in names
    names = family_event_names(name, torch.float64)
    for kernel in ("forward", "grad_input", "grad_weight"):
        assert f"{kernel}_kernel<double" in names
    assert "bmm" not in names


@pytest.mark.parametrize("name", ["block_wide_partial", "block_3d_groups", "tile_1d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_family_bitwise_deterministic(name, dtype):
    """The region sums of grad_weight (across warps, in tiled and block sharing) run in a fixed
    order."""
    tensors, call, _, _ = family_case(name, dtype)
    for a, b in zip(family_results(tensors, call), family_results(tensors, call)):
        assert torch.equal(a, b)


@needs_sm80
def test_kernel_log_names_the_kernel_each_pass_took(monkeypatch, capfd, allow_tf32):
    """LC_CUDA_LOG_KERNELS=1: one line per pass. A 1x1 kernel over 128 channels stages 64 kernel
    rows at 64 patch columns a stage, more than a CTA's shared memory in TF32: its forward takes
    32 columns a stage (launch_policy.cuh) instead of falling back to FFMA."""
    input = torch.randn(8, 128, 16, 16, device="cuda")
    weight = torch.randn(16, 16, 128, 128, 1, 1, device="cuda", requires_grad=True)
    monkeypatch.setenv("LC_CUDA_LOG_KERNELS", "1")
    lc_cuda.local_conv2d(input, weight).sum().backward()
    torch.cuda.synchronize()
    log = capfd.readouterr().err
    tf32_forward = "forward Float: tensor cores (TF32), 16 channels per CTA, 32 patch columns"
    assert f"lc_cuda: {tf32_forward}" in log
    assert "lc_cuda: grad_weight Float: tensor cores (TF32)" in log
    torch.backends.cuda.matmul.allow_tf32 = False
    lc_cuda.local_conv2d(input, weight)
    log = capfd.readouterr().err
    assert "lc_cuda: forward Float: FFMA, 64-wide channel tiles (TF32 not allowed" in log
    monkeypatch.setenv("LC_CUDA_LOG_KERNELS", "0")
    lc_cuda.local_conv2d(input, weight)
    assert "lc_cuda:" not in capfd.readouterr().err
