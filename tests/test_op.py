"""The registered operators: opcheck, torch.compile, autocast, dispatch, and the build record."""

import dataclasses
import os

import pytest
import torch
from conftest import DEVICES
from random_cases import make_case

import lc_cuda
from lc_cuda.selftest import CASES, make_tensors

# Every kind of call: 2D with each bias kind, an empty batch, 1D, 3D, groups, weight shared in
# blocks and periodically, and the transposed op (lc_cuda.selftest's cases, and one of N = 0).
OPCHECK_CASES = {
    **{name: CASES[name] for name in ("c_out_3", "causal_1d", "volume_3d", "depthwise")},
    **{name: CASES[name] for name in ("share_block", "share_tile", "transpose_2d", "transpose_3d")},
    "c_out_20": dataclasses.replace(CASES["c_out_20"], c_in=3, c_out=4),
    "empty_batch": dataclasses.replace(CASES["c_out_3"], n=0, bias="per_location"),
}


def case_tensors(case, dtype, device, requires_grad=True):
    """input, weight and bias of a case (grad_output is left out)."""
    input, weight, bias, _ = (t.to(device) for t in make_tensors(case, dtype))
    if requires_grad:
        for tensor in (input, weight, bias):
            tensor.requires_grad_()
    return input, weight, bias


def op_arguments(case, force_unfold=False):
    """The operator and its non-tensor arguments for a case."""
    share = list(case.share_args)
    if case.transposed:
        output_padding = list(case.output_padding or (0,) * case.dims)
        return torch.ops.lc_cuda.local_conv_transpose.default, [
            list(case.stride), list(case.padding), output_padding, list(case.dilation),
            case.groups, share, case.share_mode, force_unfold,
        ]  # fmt: skip
    return torch.ops.lc_cuda.local_conv.default, [
        list(case.stride), list(case.padding), list(case.dilation), case.groups, share,
        case.share_mode, force_unfold,
    ]  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(OPCHECK_CASES))
@pytest.mark.parametrize("force_unfold", [False, True])
def test_opcheck_forward_and_backward(device, name, force_unfold):
    case = OPCHECK_CASES[name]
    input, weight, bias = case_tensors(case, torch.float64, device)
    op, arguments = op_arguments(case, force_unfold)
    torch.library.opcheck(op, (input, weight, bias, *arguments))
    if case.transposed:
        return  # its backward is the forward and backward ops, checked by the other cases
    out = op(input, weight, bias, *arguments)
    grad_output = torch.randn_like(out).requires_grad_()
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(
            torch.ops.lc_cuda.local_conv_backward.default,
            (
                grad_output, input, weight, *arguments[:6], case.bias == "shared", mask,
                force_unfold,
            ),
        )  # fmt: skip


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(OPCHECK_CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_opcheck_half_precision_on_cuda(name, dtype):
    """float16 and bfloat16 take the tensor-core kernels on CUDA (sm_80+): the same checks."""
    case = OPCHECK_CASES[name]
    input, weight, bias = case_tensors(case, dtype, "cuda")
    op, arguments = op_arguments(case)
    torch.library.opcheck(op, (input, weight, bias, *arguments))
    if case.transposed:
        return
    out = op(input, weight, bias, *arguments)
    torch.library.opcheck(
        torch.ops.lc_cuda.local_conv_backward.default,
        (
            torch.randn_like(out), input, weight, *arguments[:6], case.bias == "shared",
            [True, True, True],
        ),
    )  # fmt: skip


def test_the_earlier_releases_operators_compute_the_same(tmp_path):
    """lc_cuda::local_conv2d and local_conv2d_backward, which files saved by the earlier
    release call, give the N-D operators' results."""
    input, weight, bias = case_tensors(OPCHECK_CASES["c_out_3"], torch.float64, "cpu")
    old = torch.ops.lc_cuda.local_conv2d(input, weight, bias, [1, 2], [1, 0], [1, 1])
    new = lc_cuda.local_conv2d(input, weight, bias, (1, 2), (1, 0))
    torch.testing.assert_close(old, new, rtol=0, atol=0)
    grads = torch.autograd.grad(old.square().sum(), (input, weight, bias))
    expected = torch.autograd.grad(new.square().sum(), (input, weight, bias))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    backward = torch.ops.lc_cuda.local_conv2d_backward(
        torch.ones_like(old), input, weight, [1, 2], [1, 0], [1, 1], True, [True, True, True]
    )
    assert backward[2].shape == (3,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(OPCHECK_CASES))
def test_outputs_are_fresh_tensors_not_views(device, name):
    """A view of a kernel's temporary would surprise autograd users (and FSDP's hooks)."""
    case = OPCHECK_CASES[name]
    input, weight, bias = case_tensors(case, torch.float32, device, requires_grad=False)
    op, arguments = op_arguments(case)
    out = op(input, weight, bias, *arguments)
    outputs = [out]
    if not case.transposed:
        outputs += torch.ops.lc_cuda.local_conv_backward(
            torch.randn_like(out), input, weight, *arguments[:6], False, [True, True, True]
        )
    for tensor in outputs:
        assert not tensor._is_view()
        assert tensor.is_contiguous() and tensor.storage_offset() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_forward_and_backward(device):
    torch._dynamo.reset()
    input, weight, bias = case_tensors(OPCHECK_CASES["c_out_20"], torch.float32, device)
    other_input, other_weight, other_bias = (
        t.detach().clone().requires_grad_() for t in (input, weight, bias)
    )

    def layer(input, weight, bias):
        return torch.tanh(lc_cuda.local_conv2d(input, weight, bias, (2, 1), (0, 1), (2, 1)))

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
    input, weight, bias = case_tensors(OPCHECK_CASES["c_out_3"], torch.float32, device)
    with torch.autocast(device, dtype=dtype):
        out = lc_cuda.local_conv2d(input, weight, bias, (1, 2), (1, 0))
    assert out.dtype == dtype
    out.float().sum().backward()
    assert input.grad.dtype == weight.grad.dtype == bias.grad.dtype == torch.float32
    expected = lc_cuda.local_conv2d(
        input.to(dtype), weight.to(dtype), bias.to(dtype), (1, 2), (1, 0)
    )
    torch.testing.assert_close(out, expected)


def test_autocast_under_compile():
    torch._dynamo.reset()
    input, weight, bias = case_tensors(
        OPCHECK_CASES["c_out_3"], torch.float32, "cpu", requires_grad=False
    )

    @torch.compile(fullgraph=True, backend="aot_eager")
    def layer(input, weight, bias):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return lc_cuda.local_conv2d(input, weight, bias, (1, 2), (1, 0))

    assert layer(input, weight, bias).dtype == torch.bfloat16


def called_by_lc_cuda(event) -> bool:
    """Whether an ATen op's nearest ATen-or-lc_cuda ancestor is an lc_cuda operator: a call the
    operator makes itself, through whatever wrappers the torch release records between them."""
    parent = event.cpu_parent
    while parent is not None and not parent.name.startswith("aten::"):
        if parent.name.startswith("lc_cuda::"):
            return True
        parent = parent.cpu_parent
    return False


def op_calls_made_by_lc_cuda(function, *args):
    """How often the lc_cuda operator itself calls each ATen op (not what those ops call)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        function(*args)
    counts = {}
    for event in profile.events():
        if event.name.startswith("aten::") and called_by_lc_cuda(event):
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
        geometry = ([1, 1], [1, 1, 1, 1], [1, 1], 1, [1, 1], "block")
        if direction == "forward":
            return op_calls_made_by_lc_cuda(
                torch.ops.lc_cuda.local_conv, input, weight, bias, *geometry
            )
        grad_output = torch.randn(n, 4, 9, 9)
        return op_calls_made_by_lc_cuda(
            torch.ops.lc_cuda.local_conv_backward,
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
        "gpu_verified",
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
        assert not info["gpu_verified"]
    if os.environ.get("LC_CUDA_EXPECT_ARCH"):  # set by .ci/run, which builds for one arch
        assert info["arch_list"] == [os.environ["LC_CUDA_EXPECT_ARCH"]], info


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["auto", "unfold"])
def test_cuda_backend_environment_variable(monkeypatch, backend):
    monkeypatch.setenv("LC_CUDA_BACKEND", backend)
    input, weight, bias = case_tensors(OPCHECK_CASES["c_out_3"], torch.float64, "cuda")
    out = lc_cuda.local_conv2d(input, weight, bias, (1, 2), (1, 0))
    expected = lc_cuda.local_conv2d(input.cpu(), weight.cpu(), bias.cpu(), (1, 2), (1, 0))
    torch.testing.assert_close(out.cpu(), expected)


def test_autocast_leaves_float64_alone_like_conv():
    """ATen's autocast rule: float64 tensors keep their dtype (eager and compiled agree)."""
    input = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    weight = torch.randn(4, 4, 5, 3, 3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lc_cuda.local_conv2d(input, weight).dtype == torch.float64
        assert torch.nn.functional.conv2d(input, weight[0, 0]).dtype == torch.float64


FAMILY_LAYERS = {
    "volume_3d": lambda: lc_cuda.LocallyConnected3d(
        2, 3, (4, 5, 4), 2, padding=((1, 0), (0, 0), (0, 1))
    ),
    "grouped_shared": lambda: lc_cuda.LocallyConnected2d(
        4, 6, 7, 3, padding=1, groups=2, share_block=(3, 4)
    ),
    "tiled_circular_1d": lambda: lc_cuda.LocallyConnected1d(
        2, 3, 12, 3, padding=1, padding_mode="circular", share_period=4
    ),
    "transpose": lambda: lc_cuda.LocallyConnectedTranspose2d(
        4, 2, 5, 3, stride=2, output_padding=1, groups=2, share_period=(2, 5)
    ),
}


@pytest.mark.parametrize("name", sorted(FAMILY_LAYERS))
def test_compile_and_export_of_the_whole_family(name):
    """torch.compile(fullgraph) forward and backward, and torch.export with a dynamic batch, of
    3D, grouped and shared, tiled with a padding mode, and transposed layers."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = FAMILY_LAYERS[name]()
    input = torch.randn(3, layer.in_channels, *layer.input_size, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(input)
    torch.testing.assert_close(out, layer(input))
    (grad,) = torch.autograd.grad(out.square().sum(), input)
    (expected,) = torch.autograd.grad(layer(input).square().sum(), input)
    torch.testing.assert_close(grad, expected)
    batch = torch.export.Dim("batch")
    program = torch.export.export(layer, (input.detach(),), dynamic_shapes=({0: batch},))
    torch.testing.assert_close(program.module()(input[:2].detach()), layer(input[:2]).detach())


# Arguments of local_conv that its checks refuse, and the opening words of the refusal.
GOOD_ARGUMENTS = dict(
    stride=[1, 1], padding=[0] * 4, dilation=[1, 1], groups=1, share=[1, 1], share_mode="block"
)
BAD_ARGUMENTS = {
    "stride_count": (dict(stride=[1, 1, 1]), "stride must have 2 values"),
    "share_zero": (dict(share=[0, 1]), "share must be positive"),
    "share_mode": (dict(share_mode="blocks"), "share_mode must be 'block' or 'tile'"),
    "groups_zero": (dict(groups=0), "groups must be positive"),
    "negative_padding": (dict(padding=[0, -1, 0, 0]), "padding must be non-negative"),
    "weight_shape": (dict(weight=slice(0, 5)), r"weight\.shape is not valid"),
}


@pytest.mark.parametrize("name", sorted(BAD_ARGUMENTS))
def test_fake_kernels_fail_where_the_operator_fails(name):
    """Meta tensors (what torch.compile and torch.export trace with) raise like real ones."""
    changes, message = BAD_ARGUMENTS[name]
    arguments = {**GOOD_ARGUMENTS, **changes}
    rows = arguments.pop("weight", slice(None))
    input, weight = torch.randn(2, 3, 8, 8), torch.randn(6, 6, 4, 3, 3, 3)[:, rows]
    for device in ("cpu", "meta"):
        with pytest.raises(RuntimeError, match=message):
            torch.ops.lc_cuda.local_conv(input.to(device), weight.to(device), None, **arguments)


def test_fake_kernel_of_the_transpose_fails_where_the_operator_fails():
    y, w = torch.randn(2, 4, 6, 6), torch.randn(6, 6, 4, 3, 3, 3)
    for tensors in ((y, w), (y.to("meta"), w.to("meta"))):
        arguments = (*tensors, None, [1, 1], [0] * 4, [1, 0], [1, 1], 1, [1, 1], "block")
        with pytest.raises(RuntimeError, match="output_padding must be smaller than stride"):
            torch.ops.lc_cuda.local_conv_transpose(*arguments)
        arguments = (*tensors, None, [1, 1], [0] * 4, [0, 0], [1, 1], 1, [2, 2], "block")
        with pytest.raises(RuntimeError, match=r"weight\.shape is not valid"):
            torch.ops.lc_cuda.local_conv_transpose(*arguments)
