"""The examples, run for real on the bundled digits in a reduced form."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # processes of their own, exports, compiles: minutes in all

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name, epochs, tmp_path):
    """Runs examples/<name> on the CPU for `epochs` epochs; returns (stdout, stderr, its
    results JSON, the picture's path)."""
    for module in ("sklearn", "matplotlib", "tqdm"):
        pytest.importorskip(module)
    picture, results_file = tmp_path / "picture.png", tmp_path / "results.json"
    run = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / name),
            "--epochs",
            str(epochs),
            "--device",
            "cpu",
            "--plot",
            str(picture),
            "--json",
            str(results_file),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "epoch" in run.stderr  # tqdm's progress bar
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return run.stdout, run.stderr, json.loads(results_file.read_text())


def test_train_digits_reduced(tmp_path):
    stdout, _, results = run_example("train_digits.py", 10, tmp_path)
    assert "LocallyConnected2d: test accuracy" in stdout
    assert "Conv2d: test accuracy" in stdout
    assert len(results["local"]["history"]["loss"]) == 10
    # The full run (30 epochs) ends near 0.98; ten epochs already pass 0.95.
    assert results["local"]["test_accuracy"] >= 0.95
    assert results["conv"]["test_accuracy"] >= 0.9
    assert results["local"]["parameters"] > results["conv"]["parameters"]


def test_autoencoder_digits_reduced(tmp_path):
    stdout, _, results = run_example("autoencoder_digits.py", 5, tmp_path)
    assert "LocallyConnectedTranspose2d decoder: reconstruction MSE train" in stdout
    assert "ConvTranspose2d decoder: reconstruction MSE train" in stdout
    assert "the training mean image: reconstruction MSE train" in stdout
    local, conv, mean_image = results["local"], results["conv"], results["mean_image"]
    assert len(local["history"]["test_error"]) == 5
    # Five epochs bring both decoders to about 0.011 per pixel on the test images (the full run,
    # 60 epochs, to about 0.005), against 0.074 for always answering the mean image.
    for result in (local, conv):
        assert result["test_error"] < 0.3 * mean_image["test_error"]
        assert result["train_error"] < 0.3 * mean_image["train_error"]
    assert local["history"]["test_error"][-1] < local["history"]["test_error"][0]
    assert local["parameters"] > conv["parameters"]
