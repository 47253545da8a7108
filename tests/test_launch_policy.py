"""The CUDA launchers' policy (csrc/cuda/launch_policy.cuh), compiled with g++ and run on the CPU:
tensor-core kernels only where the code for the device was compiled for sm_80 or newer, and
only for grids and shared memory within the limits; the input staged in stages sized by the tile,
so that every benchmark layer, 2D and 3D (and issue 21's too-big TF32 layers), fits an sm_90 CTA
in every tensor-core kernel."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20)")
def test_launch_policy(tmp_path):
    binary = tmp_path / "launch_policy_test"
    compile = subprocess.run(
        [
            "g++",
            "-std=c++20",
            "-O0",
            "-pthread",
            f"-I{ROOT / 'csrc'}",
            f"-I{ROOT / 'tests' / 'emulation'}",
            str(ROOT / "tests" / "cpp" / "launch_policy_test.cpp"),
            "-o",
            str(binary),
        ],
        capture_output=True,
        text=True,
    )
    assert compile.returncode == 0, compile.stderr[-3000:]
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "0 failed checks" in run.stdout, run.stdout[-3000:]
    # the plan of every layer is printed, the 3D ones among them
    assert "volume_32" in run.stdout and "fmri_decoder" in run.stdout
