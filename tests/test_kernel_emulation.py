"""The CUDA kernels' own source, run on the CPU (tests/emulation/cuda_on_cpu.h) against direct
float64 sums, so that their index arithmetic and tiling are tested on machines without a GPU.
Covers the FFMA kernels (float, double, c10::Half, c10::BFloat16; 32- and 64-bit indices; every
tile width) and the tensor-core forward and grad_weight (warp-level PTX emulated)."""

import shutil
import subprocess
from pathlib import Path

import pytest
from torch.utils.cpp_extension import include_paths

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20)")
def test_cuda_kernels_emulated_on_cpu(tmp_path):
    binary = tmp_path / "run_kernels"
    compile = subprocess.run(
        [
            "g++",
            "-std=c++20",
            "-O1",
            "-pthread",
            "-Wno-unknown-pragmas",
            "-DWITH_C10_HALF",
            f"-I{ROOT / 'csrc'}",
            f"-I{ROOT / 'tests' / 'emulation'}",
            f"-I{include_paths()[0]}",
            str(ROOT / "tests" / "emulation" / "run_kernels.cpp"),
            "-o",
            str(binary),
        ],
        capture_output=True,
        text=True,
    )
    assert compile.returncode == 0, compile.stderr[-3000:]
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and " 0 mismatches" in run.stdout, run.stdout[-3000:]


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
