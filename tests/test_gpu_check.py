"""tools/gpu_check.sh --dry-run: every step of the GPU check except the build, each script run
with --help (pytest with --collect-only), as on a fresh GPU machine where the package is not
installed and only the in-place build in the repository can be imported."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes of their own, exports, compiles: minutes in all

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run(tmp_path):
    if not any((ROOT / "lc_cuda").glob("_C*.so")):
        pytest.skip("no in-place build in the repository (installed with pip install -e?)")
    # `python -S` skips site-packages' .pth files, so the editable install's import hook is off
    # and lc_cuda can be found only the way gpu_check.sh makes it findable; the folders that
    # hold torch, pytest and the rest are passed on by PYTHONPATH instead.
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    site_folders = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    env = dict(os.environ, PYTHON=str(python), OUT=str(tmp_path / "logs"))
    env["PYTHONPATH"] = os.pathsep.join(site_folders)
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    summary = result.stdout.split("== summary")[-1]
    for step in ("import", "selftest", "tests", "memcheck", "racecheck", "bench"):
        assert f"\n{step} " in summary and "FAILED" not in summary, summary
