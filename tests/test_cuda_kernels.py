"""The hand-written CUDA kernels: accuracy per dtype, determinism, 64-bit indexing, CPU
agreement. Everything here needs a GPU and a build with kernels; elsewhere it is skipped.
(The shared tests in test_forward, test_backward, test_op and test_modules also run on CUDA.)"""

import pytest
import torch
from cases import geometries, make_case
from hypothesis import given, settings

import lc_cuda
from lc_cuda.reference import allowed_error, reference_local_conv2d, relative_error

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
