"""The registered operators: opcheck, torch.compile, autocast, dispatch, and the build record."""

import os

import pytest
import torch
from cases import make_case
from conftest import DEVICES

import lc_cuda

OPCHECK_CASES = {
    "no_bias": dict(
        n=2, size=(6, 5), kernel=(3, 2), stride=(1, 2), padding=(1, 0), dilation=(1, 1), bias="none"
    ),
    "shared_bias_dilated": dict(
        n=3,
        size=(7, 7),
        kernel=(2, 2),
        stride=(2, 1),
        padding=(0, 1),
        dilation=(2, 3),
        bias="shared",
    ),
    "per_location_bias": dict(
        n=1,
        size=(5, 6),
        kernel=(3, 3),
        stride=(1, 1),
        padding=(1, 1),
        dilation=(1, 1),
        bias="per_location",
    ),
    "empty_batch": dict(
        n=0,
        size=(4, 4),
        kernel=(2, 2),
        stride=(1, 1),
        padding=(0, 0),
        dilation=(1, 1),
        bias="per_location",
    ),
}


def case_tensors(case, dtype, device, requires_grad=True):
    input, weight, bias = make_case(
        case["n"],
        2,
        case["size"],
        3,
        case["kernel"],
        case["stride"],
        case["padding"],
        case["dilation"],
        case["bias"],
        dtype,
        device,
    )
    if requires_grad:
        for tensor in (input, weight, bias):
            if tensor is not None:
                tensor.requires_grad_()
    return input, weight, bias


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(OPCHECK_CASES))
@pytest.mark.parametrize("force_unfold", [False, True])
def test_opcheck_forward_and_backward(device, name, force_unfold):
    case = OPCHECK_CASES[name]
    input, weight, bias = case_tensors(case, torch.float64, device)
    geometry = [list(case["stride"]), list(case["padding"]), list(case["dilation"])]
    torch.library.opcheck(
        torch.ops.lc_cuda.local_conv2d.default, (input, weight, bias, *geometry, force_unfold)
    )
    out = torch.ops.lc_cuda.local_conv2d(input, weight, bias, *geometry, force_unfold)
    grad_output = torch.randn_like(out).requires_grad_()
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(
            torch.ops.lc_cuda.local_conv2d_backward.default,
            (grad_output, input, weight, *geometry, case["bias"] == "shared", mask, force_unfold),
        )


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(OPCHECK_CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_opcheck_half_precision_on_cuda(name, dtype):
    """float16 and bfloat16 take the tensor-core kernels on CUDA (sm_80+): the same checks."""
    case = OPCHECK_CASES[name]
    input, weight, bias = case_tensors(case, dtype, "cuda")
    geometry = [list(case["stride"]), list(case["padding"]), list(case["dilation"])]
    torch.library.opcheck(torch.ops.lc_cuda.local_conv2d.default, (input, weight, bias, *geometry))
    out = torch.ops.lc_cuda.local_conv2d(input, weight, bias, *geometry)
    grad_output = torch.randn_like(out)
    torch.library.opcheck(
        torch.ops.lc_cuda.local_conv2d_backward.default,
        (grad_output, input, weight, *geometry, case["bias"] == "shared", [True, True, True]),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(OPCHECK_CASES))
def test_outputs_are_fresh_tensors_not_views(device, name):
    """A view of a kernel's temporary would surprise autograd users (and FSDP's hooks)."""
    case = OPCHECK_CASES[name]
    input, weight, bias = case_tensors(case, torch.float32, device, requires_grad=False)
    geometry = [list(case["stride"]), list(case["padding"]), list(case["dilation"])]
    out = torch.ops.lc_cuda.local_conv2d(input, weight, bias, *geometry)
    grads = torch.ops.lc_cuda.local_conv2d_backward(
        torch.randn_like(out), input, weight, *geometry, False, [True, True, True]
    )
    for tensor in (out, *grads):
        assert not tensor._is_view()
        assert tensor.is_contiguous() and tensor.storage_offset() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_forward_and_backward(device):
    torch._dynamo.reset()
    input, weight, bias = case_tensors(OPCHECK_CASES["shared_bias_dilated"], torch.float32, device)
    other_input, other_weight, other_bias = (
        t.detach().clone().requires_grad_() for t in (input, weight, bias)
    )

    def layer(input, weight, bias):
        return torch.tanh(lc_cuda.local_conv2d(input, weight, bias, (2, 1), (0, 1), (2, 3)))

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(input, weight, bias)
    expected = layer(other_input, other_weight, other_bias)
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    for got, want in ((input, other_input), (weight, other_weight), (bias, other_bias)):
        torch.testing.assert_close(got.grad, want.grad)


def test_compile_fullgraph_inductor_module_and_same_padding():
    torch._dynamo.reset()
    layer = lc_cuda.LocallyConnected2d(3, 4, (6, 6), 2, padding="same")
    input = torch.randn(2, 3, 6, 6)
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(input), layer(input))


@pytest.mark.parametrize(
    "device, dtype",
    [
        ("cpu", torch.bfloat16),
        pytest.param("cuda", torch.float16, marks=pytest.mark.cuda),
        pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda),
    ],
)
def test_autocast_runs_in_autocast_dtype(device, dtype):
    input, weight, bias = case_tensors(OPCHECK_CASES["per_location_bias"], torch.float32, device)
    with torch.autocast(device, dtype=dtype):
        out = lc_cuda.local_conv2d(input, weight, bias, 1, 1)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert input.grad.dtype == weight.grad.dtype == bias.grad.dtype == torch.float32
    expected = lc_cuda.local_conv2d(input.to(dtype), weight.to(dtype), bias.to(dtype), 1, 1)
    torch.testing.assert_close(out, expected)


def test_autocast_under_compile():
    torch._dynamo.reset()
    input, weight, bias = case_tensors(
        OPCHECK_CASES["per_location_bias"], torch.float32, "cpu", requires_grad=False
    )

    @torch.compile(fullgraph=True, backend="aot_eager")
    def layer(input, weight, bias):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return lc_cuda.local_conv2d(input, weight, bias, 1, 1)

    assert layer(input, weight, bias).dtype == torch.bfloat16


def op_calls_made_by_lc_cuda(function, *args):
    """How often the lc_cuda operator itself calls each op (not what those ops call inside)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        function(*args)
    counts = {}
    for event in profile.events():
        if event.cpu_parent is not None and event.cpu_parent.name.startswith("lc_cuda::"):
            counts[event.name] = counts.get(event.name, 0) + 1
    return counts


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_fallback_has_no_per_sample_loop(monkeypatch, direction):
    """The ATen ops the fallback runs, and how often, do not depend on the batch size."""
    monkeypatch.setenv("LC_CUDA_BACKEND", "unfold")  # on the CPU, the fallback only on request

    def run(n):
        input, weight, bias = make_case(
            n, 3, (9, 9), 4, (3, 3), (1, 1), (1, 1), (1, 1), "per_location", torch.float32, "cpu"
        )
        geometry = ([1, 1], [1, 1], [1, 1])
        if direction == "forward":
            return op_calls_made_by_lc_cuda(
                torch.ops.lc_cuda.local_conv2d, input, weight, bias, *geometry
            )
        grad_output = torch.randn(n, 4, 9, 9)
        return op_calls_made_by_lc_cuda(
            torch.ops.lc_cuda.local_conv2d_backward,
            grad_output,
            input,
            weight,
            *geometry,
            False,
            [True, True, True],
        )

    counts = run(1)
    assert counts == run(16)
    matmuls = sum(counts.get(name, 0) for name in ("aten::bmm", "aten::baddbmm"))
    assert matmuls == (1 if direction == "forward" else 2), counts


def test_build_info_describes_this_build():
    info = lc_cuda.build_info()
    assert set(info) == {
        "torch_version",
        "cuda_version",
        "arch_list",
        "arch_flags",
        "with_cuda",
        "cuda_kernels",
        "debug",
        "openmp",
    }
    assert info["torch_version"] == torch.__version__
    assert isinstance(info["arch_list"], list)
    if info["with_cuda"]:
        assert info["cuda_version"] and info["arch_list"], info
        assert all(arch.startswith(("sm_", "compute_")) for arch in info["arch_list"])
    else:
        assert info["cuda_version"] == "" and info["arch_list"] == [] and not info["cuda_kernels"]
    if os.environ.get("LC_CUDA_EXPECT_ARCH"):  # set by .ci/run, which builds for one arch
        assert info["arch_list"] == [os.environ["LC_CUDA_EXPECT_ARCH"]], info


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["auto", "unfold"])
def test_cuda_backend_environment_variable(monkeypatch, backend):
    monkeypatch.setenv("LC_CUDA_BACKEND", backend)
    input, weight, bias = case_tensors(OPCHECK_CASES["per_location_bias"], torch.float64, "cuda")
    out = lc_cuda.local_conv2d(input, weight, bias, 1, 1)
    expected = lc_cuda.local_conv2d(input.cpu(), weight.cpu(), bias.cpu(), 1, 1)
    torch.testing.assert_close(out.cpu(), expected)
