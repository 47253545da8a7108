"""The first-use check (csrc/backend_choice.h): a kernel path that disagrees with the fallback
on the check's small input is switched off for the process with one warning, and its calls take
the fallback. Shown on the CPU with LC_CUDA_FIRST_USE_CHECK=test_fault, which perturbs the
kernels' results inside the check: a wrong kernel, as a GPU that miscomputes would give. Each
case runs in a fresh process, since the check remembers its verdicts per process."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lc_cuda

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, warnings, torch, lc_cuda
from lc_cuda.reference import reference_local_conv
x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 4, 5, 3, 3, 3)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = lc_cuda.local_conv2d(x, w)
    second = lc_cuda.local_conv1d(x[:, :, 0], w[0, :, :, :, 0])  # another call, same path
    backward = torch.autograd.grad(lc_cuda.local_conv2d(x.requires_grad_(), w).sum(), x)
with torch.profiler.profile() as profile:
    lc_cuda.local_conv2d(x, w)
print(json.dumps({
    "warnings": [str(c.message) for c in caught if "lc_cuda" in str(c.message)],
    "error": (first - reference_local_conv(x, w)).abs().max().item(),
    "fallback": any(e.name in ("aten::bmm", "aten::baddbmm") for e in profile.events()),
}))
"""


def run(mode):
    env = dict(os.environ, LC_CUDA_FIRST_USE_CHECK=mode)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    return json.loads(result.stdout.splitlines()[-1])


def test_a_path_that_disagrees_is_switched_off_with_one_warning():
    outcome = run("test_fault")
    (warning,) = outcome["warnings"]
    assert "the CPU kernels for Float on cpu disagreed with the unfold fallback" in warning
    assert "switched off for this process" in warning and "LC_CUDA_FIRST_USE_CHECK=off" in warning
    assert outcome["fallback"]  # the calls took the fallback
    assert outcome["error"] < 1e-5  # and their results are right


@pytest.mark.parametrize("mode", ["all", "auto", "off"])
def test_paths_that_agree_keep_their_kernels(mode):
    outcome = run(mode)
    assert outcome["warnings"] == []
    assert not outcome["fallback"]
    assert outcome["error"] < 1e-5


def test_bad_value_is_an_error():
    env = dict(os.environ, LC_CUDA_FIRST_USE_CHECK="sometimes")
    code = (
        "import torch, lc_cuda\n"
        "lc_cuda.local_conv2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 1, 1, 3, 3))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "LC_CUDA_FIRST_USE_CHECK must be 'auto', 'off', 'all' or 'test_fault'" in result.stderr


def test_build_records_whether_the_gpu_check_passed_on_these_sources(tmp_path):
    """setup.py's digest of csrc/ matches a record of the same sources only."""
    spec = importlib.util.spec_from_file_location("lc_cuda_setup", ROOT / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "csrc", copy / "csrc")
    record = copy / "csrc" / "cuda" / "gpu_check_passed.txt"
    record.unlink(missing_ok=True)
    assert not setup.gpu_verified(copy)
    record.write_text(f"sources {setup.kernel_sources_digest(copy)}\ndevice test\n")
    assert setup.gpu_verified(copy)
    kernel = copy / "csrc" / "cuda" / "forward.cu"
    kernel.write_text(kernel.read_text() + "\n// changed\n")
    assert not setup.gpu_verified(copy)
    assert lc_cuda.build_info()["gpu_verified"] is setup.gpu_verified()
