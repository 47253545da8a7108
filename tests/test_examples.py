"""examples/train_digits.py, run for real on the bundled digits in a reduced form."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes of their own, exports, compiles: minutes in all

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_digits.py"


def test_train_digits_reduced(tmp_path):
    for module in ("sklearn", "matplotlib", "tqdm"):
        pytest.importorskip(module)
    plot, results_file = tmp_path / "curves.png", tmp_path / "results.json"
    run = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--epochs",
            "10",
            "--device",
            "cpu",
            "--plot",
            str(plot),
            "--json",
            str(results_file),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "LocallyConnected2d: test accuracy" in run.stdout
    assert "Conv2d: test accuracy" in run.stdout
    assert "epoch" in run.stderr  # tqdm's progress bar
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads(results_file.read_text())
    assert len(results["local"]["history"]["loss"]) == 10
    # The full run (30 epochs) ends near 0.98; ten epochs already pass 0.95.
    assert results["local"]["test_accuracy"] >= 0.95
    assert results["conv"]["test_accuracy"] >= 0.9
    assert results["local"]["parameters"] > results["conv"]["parameters"]
