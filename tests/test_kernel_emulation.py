"""The CUDA kernels' own source, run on the CPU (tests/emulation/cuda_on_cpu.h) against direct
float64 sums, so that their index arithmetic and tiling are tested on machines without a GPU.
Covers the FFMA kernels (float, double, c10::Half, c10::BFloat16; 32- and 64-bit indices; every
tile width) and the tensor-core kernels (warp-level PTX emulated; each launch variant), on
geometries of the whole family: 1D, 2D and 3D, channel groups and depthwise, weights shared in
blocks (partial ones included) and periodically.

The emulation is run as strictly as the hardware allows a kernel to go wrong: with cp.async
landing at the copy and at the covering wait_group (the earliest and the latest completion),
under AddressSanitizer and UBSan (dynamic shared memory past the launch's request poisoned, as
compute-sanitizer's memcheck would see it) and under ThreadSanitizer (shared-memory accesses no
__syncthreads orders, as racecheck would see them). Each build runs a reduced case set by default
(CI), every case under LC_EMULATION_CASES=all (tools/gpu_check.sh's CPU pre-flight). The
planted-bug tests show that the family's index arithmetic is checked (a depth tap and a weight
region gone wrong, in CI) and, under LC_EMULATION_CASES=all, that each of these checks catches a
bug of its kind in a copy of csrc/.
"""

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
from torch.utils.cpp_extension import include_paths

ROOT = Path(__file__).resolve().parent.parent
EMULATION = ROOT / "tests" / "emulation"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20)"),
]

# Compiler flags per build: plain, AddressSanitizer with UBSan (both abort at the first error),
# ThreadSanitizer.
SANITIZER_FLAGS = {
    "plain": [],
    "asan": [
        "-g",
        "-fno-omit-frame-pointer",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
    ],
    "tsan": ["-g", "-fsanitize=thread"],
}
# TSan's halt_on_error: the planted-bug run stops at the first report instead of finishing.
SANITIZER_ENVIRONMENT = {"UBSAN_OPTIONS": "print_stacktrace=1", "TSAN_OPTIONS": "halt_on_error=1"}
# The cases (indices into run_kernels.cpp's list) each build runs by default, chosen so that CI
# spends less time here than before the family's cases came: every kernel feature once, on its
# cheapest case. Plain and AddressSanitizer: the 2D cases 0, 1 and 3-6 (strides, dilations,
# channels-last, a batch past one 64-sample tile, gaps, C_out past 64, a patch past 64) and 8
# (seven pipeline stages); the family's 10 (3D, groups, blocks of shared weights, partial ones,
# summed across warps), 11 (1D depthwise, weights shared periodically over more regions than a
# CTA's columns) and 12 (groups of two channel tiles, blocks wider than a CTA). ThreadSanitizer,
# slower: the smallest ones that still take every kernel through several CTAs and pipeline
# stages, case 10 among them. The others (2, 7 and 9 repeat those features on bigger 2D
# layers; 13-16: tiled 3D, blocks of exactly a CTA's width, a whole-output block, a 3x3x3
# depthwise volume) run under LC_EMULATION_CASES=all.
# AddressSanitizer/UBSan leaves out 8 and 12 as well, the slowest under it (22 s together, its
# other eight cases 16 s); both still run in the plain builds.
DEFAULT_CASES = ["0", "1", "3", "4", "5", "6", "8", "10", "11", "12"]
ASAN_DEFAULT_CASES = ["0", "1", "3", "4", "5", "6", "10", "11"]
TSAN_DEFAULT_CASES = ["0", "4", "10"]


def cases(default: list[str]) -> list[str]:
    """The cases to run: `default`, or every case (no argument) under LC_EMULATION_CASES=all."""
    chosen = os.environ.get("LC_EMULATION_CASES", "")
    if chosen not in ("", "default", "all"):
        raise ValueError(
            f"LC_EMULATION_CASES must be 'all' or 'default' (or unset), got {chosen!r}"
        )
    return [] if chosen == "all" else default


# The planted bugs that show each sanitizer and completion mode catching a bug of its kind: they
# check the harness, which changes rarely, and cost 47 s of compiling; they run with every case.
harness_check = pytest.mark.skipif(
    os.environ.get("LC_EMULATION_CASES") != "all",
    reason="a check of the emulation harness: runs under LC_EMULATION_CASES=all",
)


def build(directory: Path, sanitizer: str, csrc: Path = ROOT / "csrc") -> Path:
    binary = directory / f"run_kernels_{sanitizer}"
    compile = subprocess.run(
        [
            "g++",
            "-std=c++20",
            "-O1",
            "-pthread",
            "-Wno-unknown-pragmas",
            *SANITIZER_FLAGS[sanitizer],
            "-DWITH_C10_HALF",
            f"-I{csrc}",
            f"-I{EMULATION}",
            f"-I{include_paths()[0]}",
            str(EMULATION / "run_kernels.cpp"),
            "-o",
            str(binary),
        ],
        capture_output=True,
        text=True,
    )
    assert compile.returncode == 0, compile.stderr[-3000:]
    return binary


def run(binary: Path, completion: str, cases=()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary), completion, *cases],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, **SANITIZER_ENVIRONMENT},
    )


def assert_clean(run: subprocess.CompletedProcess):
    assert run.returncode == 0 and " 0 mismatches" in run.stdout, (
        run.stdout[-3000:] + run.stderr[-3000:]
    )


def mutated_csrc(directory: Path, header: str, old: str, new: str) -> Path:
    """A copy of csrc/ with one edit in one kernel header: a planted bug."""
    csrc = directory / "csrc"
    shutil.copytree(ROOT / "csrc", csrc)
    path = csrc / "cuda" / header
    text = path.read_text()
    assert text.count(old) == 1, f"{header} no longer has exactly one {old!r}"
    path.write_text(text.replace(old, new))
    return csrc


@pytest.fixture(scope="module")
def plain_binary(tmp_path_factory):
    return build(tmp_path_factory.mktemp("plain"), "plain")


@pytest.mark.parametrize("completion", ["immediate", "late"])
def test_cuda_kernels_emulated_on_cpu(plain_binary, completion):
    assert_clean(run(plain_binary, completion, cases(DEFAULT_CASES)))


def test_cuda_kernels_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    assert_clean(run(build(tmp_path, "asan"), "late", cases(ASAN_DEFAULT_CASES)))


def test_cuda_kernels_under_thread_sanitizer(tmp_path):
    assert_clean(run(build(tmp_path, "tsan"), "late", cases(TSAN_DEFAULT_CASES)))


# The planted bugs, each in the tensor-core forward, on case 0 (its forward has one stage).


def run_planted_forward_bug(tmp_path: Path, sanitizer: str, old: str, new: str):
    """Case 0, cp.async landing late, built with `sanitizer` from csrc/ with one edit (`old` to
    `new`) in the tensor-core forward."""
    csrc = mutated_csrc(tmp_path, "forward_tensor_core.cuh", old, new)
    return run(build(tmp_path, sanitizer, csrc), "late", ["0"])


@harness_check
def test_late_completion_catches_a_stage_read_before_its_wait(tmp_path):
    """The pipeline waits for all but the last two copy groups instead of all but the last one,
    so it reads a stage whose copies may still be in flight. Copies landing at once hide it."""
    csrc = mutated_csrc(
        tmp_path, "forward_tensor_core.cuh", "wait_async_copies<1>();", "wait_async_copies<2>();"
    )
    binary = build(tmp_path, "plain", csrc)
    assert_clean(run(binary, "immediate", ["0"]))
    late = run(binary, "late", ["0"])
    assert late.returncode == 1 and "MISMATCH case 0 tensor-core forward" in late.stdout


@harness_check
def test_address_sanitizer_catches_shared_memory_past_the_request(tmp_path):
    """The launch asks for 16 bytes less than the kernel uses: its zero row (16 bytes past the
    two buffers) lies past the request, inside the emulation's 227 KB array."""
    asan = run_planted_forward_bug(
        tmp_path,
        "asan",
        "return 2 * tensor_core_buffer_bytes<T>(s, stage_k) + 16;",
        "return 2 * tensor_core_buffer_bytes<T>(s, stage_k);",
    )
    assert asan.returncode != 0
    assert "AddressSanitizer: use-after-poison" in asan.stderr
    assert "forward_tensor_core.cuh" in asan.stderr


@harness_check
@pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the emulation runs fibers on x86-64 only"
)
def test_a_barrier_not_every_thread_reaches_fails_rather_than_hangs(tmp_path):
    """Thread 0 skips a stage's __syncthreads, so the others' last one can never complete: the
    fibers' scheduler sees a round in which no thread moves and fails (std::threads would wait
    for ever)."""
    stuck = run_planted_forward_bug(
        tmp_path,
        "plain",
        "wait_async_copies<1>();\n    __syncthreads();\n",
        "wait_async_copies<1>();\n    if (threadIdx.x != 0) __syncthreads();\n",
    )
    assert stuck.returncode != 0
    assert "emulated CUDA fault: deadlock" in stuck.stderr


@harness_check
def test_thread_sanitizer_catches_a_missing_barrier(tmp_path):
    """No __syncthreads between a stage's copies (and table) and the reads of other threads."""
    tsan = run_planted_forward_bug(
        tmp_path,
        "tsan",
        "wait_async_copies<1>();\n    __syncthreads();\n",
        "wait_async_copies<1>();\n",
    )
    assert tsan.returncode != 0
    assert "ThreadSanitizer: data race" in tsan.stderr
    assert "forward_tensor_core" in tsan.stderr


# The planted bugs in the family's index arithmetic, each on case 10 (3D with a dilation along the
# depth only; blocks of shared weights along the height and the width): the header, the edit, the
# kernels that must report a mismatch, and words no report may hold.
FAMILY_INDEX_BUGS = {
    # Issue 21: the staged input's depth taps step by the height's dilation instead of the
    # depth's, so every tensor-core forward and grad_weight reads the wrong depth slices.
    "depth_tap_by_the_height_dilation": (
        "input_staging.cuh",
        "const index_t z = origin.front + a * s.dilation_d;",
        "const index_t z = origin.front + a * s.dilation_h;",
        ("tensor-core forward bf16", "tf32 forward", "tensor-core grad_weight f16"),
        (),
    ),
    # Issue 22: each block of shared weights also takes the first location of the next block, so
    # grad_weight sums one region's locations into its neighbour's (the FFMA kernel along every
    # dimension, the tensor-core one along the height).
    "region_summed_into_its_neighbour": (
        "conv_shape.cuh",
        "return {region * share, end < out ? end : out, 1};",
        "return {region * share, end + 1 < out ? end + 1 : out, 1};",
        ("grad_weight", "tensor-core grad_weight bf16", "tf32 grad_weight"),
        ("forward", "grad_input"),
    ),
}


@pytest.mark.parametrize("name", sorted(FAMILY_INDEX_BUGS))
def test_a_family_index_bug_fails_the_emulation(tmp_path, name):
    header, old, new, failing, absent = FAMILY_INDEX_BUGS[name]
    result = run(build(tmp_path, "plain", mutated_csrc(tmp_path, header, old, new)), "late", ["10"])
    assert result.returncode == 1
    for kernel in failing:
        assert f"MISMATCH case 10 {kernel}" in result.stdout, result.stdout[-3000:]
    for word in absent:
        assert word not in result.stdout, result.stdout[-3000:]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_standalone_kernel_bench_compiles(tmp_path):
    """tools/kernel_bench.cu builds the kernel header without torch; keep it building."""
    compile = subprocess.run(
        [
            "nvcc",
            "-std=c++17",
            "-O1",
            "-arch=sm_90",
            f"-I{ROOT / 'csrc'}",
            str(ROOT / "tools" / "kernel_bench.cu"),
            "-o",
            str(tmp_path / "kernel_bench"),
        ],
        capture_output=True,
        text=True,
    )
    assert compile.returncode == 0, compile.stderr[-3000:]
