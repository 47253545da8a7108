"""python -m lc_cuda.selftest: runs from any folder, prints its table and exits 0 on this
machine; reports a wrong implementation as FAIL and exits non-zero."""

import subprocess
import sys

import pytest
import torch

from lc_cuda import selftest


def test_selftest_passes_and_prints_its_table(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lc_cuda.selftest"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[-1].endswith(" 0 failed")
    assert "forward" in result.stdout and "grad_weight" in result.stdout
    assert "FAIL" not in result.stdout and "PASS" in result.stdout
    if not torch.cuda.is_available():
        assert "No GPU found: checking the CPU path only." in result.stdout


def off_by_a_thousandth(case, *tensors):
    return selftest.call(case, *tensors) * (1 + 1e-3)


def raising(case, *tensors):
    raise RuntimeError("no kernel image is available")


@pytest.mark.parametrize("implementation", [off_by_a_thousandth, raising])
@pytest.mark.parametrize("case", ["c_out_3", "volume_3d", "share_tile", "transpose_3d"])
def test_a_wrong_path_is_reported_and_fails(implementation, case, capsys):
    assert selftest.main(["--cases", case], function=implementation) == 1
    output = capsys.readouterr().out
    float64_rows = [line for line in output.splitlines() if "float64" in line]
    assert float64_rows and all(line.endswith("FAIL") for line in float64_rows)
    if implementation is raising:
        assert "RuntimeError: no kernel image is available" in output
