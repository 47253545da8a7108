"""Checks every kernel path of this build on this machine against a float64 reference.

    python -m lc_cuda.selftest

On each visible GPU it runs the forward pass and all three gradients (input, weight, bias) of
every path the build has: each dtype; LC_CUDA_BACKEND auto and ffma; float32 with TF32 off and
on; every tile width, the wide tensor-core tiles, the fallback to FFMA where the staged input
would not fit in shared memory; contiguous and channels-last inputs; 1D, 2D and 3D layers,
channel groups, weight shared in blocks and periodically, and the transposed op; on small random
geometries. Each result is compared with lc_cuda.reference (a direct float64 sum) within the
test suite's tolerances. It prints one row per path and exits 1 if any fails. Without a GPU it
checks the CPU path and says that no GPU was found. Also what tools/gpu_check.sh runs under
compute-sanitizer.
"""

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass

import torch

import lc_cuda
from lc_cuda._autograd import conv, conv_transpose
from lc_cuda.reference import (
    allowed_error,
    reference_local_conv,
    reference_local_conv_transpose,
    relative_error,
)

PASSES = ("forward", "grad_input", "grad_weight", "grad_bias")


@dataclass(frozen=True)
class Case:
    n: int
    c_in: int
    size: tuple  # the input's spatial size: 1 to 3 values
    c_out: int
    kernel: tuple
    stride: tuple
    padding: tuple  # (before, after) per spatial dimension, flat
    dilation: tuple
    bias: str  # "shared" or "per_location" (every path has a bias, so grad_bias is checked)
    gpu_launch_variant: bool = False  # steers the CUDA launchers only; skipped on the CPU
    groups: int = 1
    share: tuple = ()  # per dimension; () for none
    share_mode: str = "block"
    transposed: bool = False  # the transposed op, with `size` its input's size
    output_padding: tuple = ()

    @property
    def dims(self):
        return len(self.size)

    @property
    def share_args(self):
        return self.share or (1,) * self.dims

    @property
    def out_size(self):
        """The op's output size: the forward's, or for the transposed op its result's."""
        pairs = zip(self.padding[0::2], self.padding[1::2])
        if self.transposed:
            extra = self.output_padding or (0,) * self.dims
            return tuple(
                (n - 1) * s - before - after + d * (k - 1) + 1 + e
                for n, k, s, (before, after), d, e in zip(
                    self.size, self.kernel, self.stride, pairs, self.dilation, extra
                )
            )
        return tuple(
            (n + before + after - d * (k - 1) - 1) // s + 1
            for n, k, s, (before, after), d in zip(
                self.size, self.kernel, self.stride, pairs, self.dilation
            )
        )

    @property
    def regions(self):
        """The weight's region sizes: over the forward's output positions (for the transposed
        op, over its input positions)."""
        positions = self.size if self.transposed else self.out_size
        share = self.share_args
        if self.share_mode == "tile":
            return share
        return tuple(-(-p // b) for p, b in zip(positions, share))


def _pad(*pairs):
    return tuple(side for pair in pairs for side in pair)


CASES = {
    # FFMA channel tiles of 16 and fewer, a stride and an uneven kernel
    "c_out_3": Case(3, 2, (7, 6), 3, (3, 2), (1, 2), _pad((1, 1), (0, 0)), (1, 1), "shared"),
    # tiles of 32 (C_out and C_in 20), dilation
    "c_out_20": Case(
        5, 20, (6, 7), 20, (2, 3), (2, 1), _pad((0, 0), (1, 1)), (2, 1), "per_location"
    ),
    # the widest tiles (40 channels)
    "c_out_40": Case(2, 40, (5, 5), 40, (3, 3), (1, 1), _pad((1, 1), (1, 1)), (1, 1), "shared"),
    # one channel, a batch that is no multiple of any tile
    "batch_67": Case(
        67, 1, (4, 4), 1, (1, 1), (1, 1), _pad((0, 0), (0, 0)), (1, 1), "per_location"
    ),
    # tensor-core forward: three groups of 8 columns, a batch padded to 16, a partial last stage
    "columns_21": Case(9, 16, (9, 21), 18, (3, 3), (1, 1), _pad((1, 1), (1, 1)), (1, 2), "shared"),
    # the forward's 32-channel tensor-core tiles (chosen where the grid fills the GPU twice)
    "wide_tiles": Case(
        128, 4, (34, 34), 64, (3, 3), (1, 1), _pad((0, 0), (0, 0)), (1, 1), "shared", True
    ),
    # staged input too wide for shared memory: every pass falls back to its FFMA kernel
    "dilation_400": Case(
        4, 2, (3, 820), 8, (1, 3), (1, 1), _pad((0, 0), (0, 0)), (1, 400), "shared", True
    ),
    # 1D: a long sequence, causal padding (one side only)
    "causal_1d": Case(4, 2, (300,), 3, (5,), (1,), _pad((4, 0)), (1,), "per_location"),
    # 3D: strides, padding per side and an uneven kernel on a small volume
    "volume_3d": Case(
        3,
        2,
        (5, 6, 4),
        4,
        (3, 2, 3),
        (1, 2, 1),
        _pad((1, 0), (0, 1), (1, 1)),
        (1, 1, 1),
        "per_location",
    ),
    # depthwise channel groups (C_in = groups, two outputs per input channel)
    "depthwise": Case(
        5, 4, (6, 7), 8, (3, 3), (1, 1), _pad((1, 1), (1, 1)), (1, 1), "shared", groups=4
    ),
    # locally-shared weights in blocks, the last partial along both dimensions
    "share_block": Case(
        4,
        3,
        (8, 9),
        5,
        (3, 2),
        (1, 1),
        _pad((0, 0), (1, 0)),
        (1, 2),
        "per_location",
        groups=1,
        share=(4, 3),
    ),
    # tiled weights: position i uses bank i % period, with groups
    "share_tile": Case(
        3,
        4,
        (7, 8),
        6,
        (2, 3),
        (1, 1),
        _pad((0, 1), (1, 1)),
        (1, 1),
        "per_location",
        groups=2,
        share=(2, 3),
        share_mode="tile",
    ),
    # the transposed op: stride 2, output_padding, a bias per output location
    "transpose_2d": Case(
        3,
        5,
        (5, 4),
        3,
        (3, 3),
        (2, 2),
        _pad((1, 1), (1, 0)),
        (1, 1),
        "per_location",
        transposed=True,
        output_padding=(1, 0),
    ),
    # the transposed op in 3D with groups and blocks of shared weights
    "transpose_3d": Case(
        2,
        4,
        (3, 4, 3),
        2,
        (2, 2, 2),
        (2, 1, 2),
        _pad((0, 0), (1, 1), (0, 1)),
        (1, 1, 1),
        "shared",
        groups=2,
        share=(2, 2, 1),
        transposed=True,
    ),
}


@dataclass(frozen=True)
class KernelPath:
    dtype: torch.dtype
    backend: str = ""  # LC_CUDA_BACKEND on CUDA; "" on the CPU, where it has no effect
    tf32: bool = False

    def __str__(self):
        name = str(self.dtype).removeprefix("torch.")
        return " ".join(filter(None, (name, self.backend, "tf32" if self.tf32 else "")))


def gpu_paths(has_kernels):
    """Every distinct path of a CUDA build: exact float64/float32 run the FFMA kernels under
    either backend; float16/bfloat16 run tensor cores (auto) or FFMA; float32 TF32 tensor cores."""
    if not has_kernels:  # CUDA tensors take the fallback whatever the backend
        return [
            KernelPath(dtype, "auto") for dtype in (torch.float64, torch.float32, torch.bfloat16)
        ]
    return [
        KernelPath(torch.float64, "auto"),
        KernelPath(torch.float32, "auto"),
        KernelPath(torch.float32, "auto", tf32=True),
        KernelPath(torch.float16, "auto"),
        KernelPath(torch.float16, "ffma"),
        KernelPath(torch.bfloat16, "auto"),
        KernelPath(torch.bfloat16, "ffma"),
    ]


CPU_PATHS = [KernelPath(dtype) for dtype in (torch.float64, torch.float32, torch.bfloat16)]


@contextlib.contextmanager
def settings(path):
    """LC_CUDA_BACKEND and torch's TF32 matmul policy for one path, restored afterwards."""
    previous_backend = os.environ.get("LC_CUDA_BACKEND")
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    if path.backend:
        os.environ["LC_CUDA_BACKEND"] = path.backend
    torch.backends.cuda.matmul.allow_tf32 = path.tf32
    try:
        yield
    finally:
        if previous_backend is None:
            os.environ.pop("LC_CUDA_BACKEND", None)
        else:
            os.environ["LC_CUDA_BACKEND"] = previous_backend
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32


def make_tensors(case, dtype, seed=0):
    """input, weight, bias and grad_output, drawn in float64 and rounded to dtype (on the CPU)."""
    generator = torch.Generator().manual_seed(seed)
    out_size, regions = case.out_size, case.regions
    if case.transposed:  # the forward op's weight, whose C_out is this op's input channels
        weight = (*regions, case.c_in, case.c_out // case.groups, *case.kernel)
        bias = (case.c_out,) if case.bias == "shared" else (case.c_out, *out_size)
    else:
        weight = (*regions, case.c_out, case.c_in // case.groups, *case.kernel)
        bias = (case.c_out,) if case.bias == "shared" else (case.c_out, *regions)
    shapes = [(case.n, case.c_in, *case.size), weight, bias, (case.n, case.c_out, *out_size)]
    return [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in shapes]


def call(case, input, weight, bias, force_unfold=False):
    """The case's operator (local_conv, or local_conv_transpose) on the given tensors."""
    if case.transposed:
        return conv_transpose(
            input, weight, bias, case.stride, case.padding,
            case.output_padding or (0,) * case.dims, case.dilation, case.groups, case.share_args,
            case.share_mode, force_unfold,
        )  # fmt: skip
    return conv(
        input, weight, bias, case.stride, case.padding, case.dilation, case.groups,
        case.share_args, case.share_mode, force_unfold,
    )  # fmt: skip


def fallback(case, input, weight, bias):
    return call(case, input, weight, bias, force_unfold=True)


def forward_and_gradients(function, tensors, case, device, channels_last=False):
    """The output and the gradients of input, weight and bias, as float64 on the CPU."""
    input, weight, bias, grad_output = (t.to(device) for t in tensors)
    if channels_last:
        layout = {4: torch.channels_last, 5: torch.channels_last_3d}.get(input.dim())
        if layout is not None:
            input = input.contiguous(memory_format=layout)
        else:  # 1D: the channels innermost, as channels-last would have them
            input = input.transpose(1, 2).contiguous().transpose(1, 2)
    leaves = [t.detach().requires_grad_() for t in (input, weight, bias)]
    out = function(case, *leaves)
    grads = torch.autograd.grad(out, leaves, grad_output.to(out.dtype))
    return [t.detach().double().cpu() for t in (out, *grads)]


def reference(tensors, case):
    """The float64 reference for the (already rounded) tensors."""

    def oracle(case, input, weight, bias):
        if case.transposed:
            return reference_local_conv_transpose(
                input, weight, bias, case.stride, case.padding, case.output_padding or None,
                case.dilation, case.groups, case.share_args, case.share_mode,
            )  # fmt: skip
        return reference_local_conv(
            input, weight, bias, case.stride, case.padding, case.dilation, case.groups,
            case.share_args, case.share_mode,
        )  # fmt: skip

    return forward_and_gradients(oracle, [t.double() for t in tensors], case, "cpu")


@dataclass
class Row:
    device: str
    path: str
    case: str
    errors: dict  # pass -> relative error (max over the input layouts)
    allowed: dict  # pass -> allowed relative error
    failure: str = ""  # an exception raised by the path

    @property
    def passed(self):
        return not self.failure and all(self.errors[p] <= self.allowed[p] for p in PASSES)


def check_path(device, path, case_name, function, references):
    """Runs one path on one case, contiguous and channels-last, and compares it."""
    case = CASES[case_name]
    errors, allowed = dict.fromkeys(PASSES, 0.0), dict.fromkeys(PASSES, float("inf"))
    tensors = make_tensors(case, path.dtype)
    key = (case_name, path.dtype)
    if key not in references:
        references[key] = reference(tensors, case)
    expected = references[key]
    try:
        with settings(path):
            for channels_last in (False, True):
                got = forward_and_gradients(function, tensors, case, device, channels_last)
                # The plain PyTorch path at the same precision, which half precision and TF32
                # are measured against; the CPU path is that fallback itself.
                unfolded = (
                    forward_and_gradients(fallback, tensors, case, device, channels_last)
                    if device != "cpu"
                    else None
                )
                for index, name in enumerate(PASSES):
                    errors[name] = max(errors[name], relative_error(got[index], expected[index]))
                    fallback_error = (
                        None
                        if unfolded is None
                        else relative_error(unfolded[index], expected[index])
                    )
                    allowed[name] = min(
                        allowed[name], allowed_error(path.dtype, fallback_error, path.tf32)
                    )
            if device != "cpu":
                torch.cuda.synchronize(device)
    except Exception as error:  # a failing path is reported, and the others still run
        return Row(
            device, str(path), case_name, errors, allowed, f"{type(error).__name__}: {error}"
        )
    return Row(device, str(path), case_name, errors, allowed)


def print_table(rows, out):
    print(f"{'device':<8} {'path':<20} {'case':<14}", end="", file=out)
    print("".join(f" {name:>20}" for name in PASSES), " result", file=out)
    for row in rows:
        cells = "".join(
            f" {row.errors[name]:>9.2e} <= {row.allowed[name]:<7.1e}" for name in PASSES
        )
        result = "PASS" if row.passed else "FAIL"
        print(f"{row.device:<8} {row.path:<20} {row.case:<14}{cells}  {result}", file=out)
        if row.failure:
            print(f"    {row.failure}", file=out)


def run(function=call, out=None, case_names=tuple(CASES)):
    """Checks every path on every visible GPU, or the CPU path where there is none, on the
    cases named; prints the table and returns whether everything passed. `function(case,
    input, weight, bias)` is the implementation under test; the table goes to `out`
    (sys.stdout by default)."""
    out = out or sys.stdout
    info = lc_cuda.build_info()
    print(
        f"lc_cuda {lc_cuda.__version__}, torch {torch.__version__}; built for "
        f"{' '.join(info['arch_list']) or 'the CPU only'}"
        + ("" if info["cuda_kernels"] or not info["with_cuda"] else " (no CUDA kernels)"),
        file=out,
    )
    references = {}
    rows = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            print(
                f"cuda:{index}: {torch.cuda.get_device_name(index)}, "
                f"compute capability {major}.{minor}",
                file=out,
            )
            for path in gpu_paths(info["cuda_kernels"]):
                for name in case_names:
                    rows.append(check_path(f"cuda:{index}", path, name, function, references))
    else:
        print("No GPU found: checking the CPU path only.", file=out)
        for path in CPU_PATHS:
            for name in case_names:
                if not CASES[name].gpu_launch_variant:
                    rows.append(check_path("cpu", path, name, function, references))
    print_table(rows, out)
    failed = sum(not row.passed for row in rows)
    print(f"{len(rows) - failed} passed, {failed} failed", file=out)
    return failed == 0


def main(argv=None, function=call):
    parser = argparse.ArgumentParser(
        prog="python -m lc_cuda.selftest", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--cases", nargs="+", choices=list(CASES), default=list(CASES), help="the cases to run"
    )
    args = parser.parse_args(argv)
    return 0 if run(function, case_names=args.cases) else 1


if __name__ == "__main__":
    sys.exit(main())
