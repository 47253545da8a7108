"""The documentation runs as written: every ```python block of README.md, each in a fresh process
from an empty folder, and the examples in the public docstrings. A block whose first line is
`# requires CUDA` is skipped without a GPU, one whose first line is `# requires torch X.Y ...`
below that release, and one that imports a framework that is not installed (the `keras` or
`jax` extra)."""

import ast
import doctest
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lc_cuda
from lc_cuda import convert

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    text = README.read_text()
    return [
        pytest.param(match.group(1), id=f"README.md:{text.count(chr(10), 0, match.start()) + 1}")
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    ]


def imported_modules(source):
    """The top-level names of the modules a block imports."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_readme_has_python_blocks():
    assert len(python_blocks()) >= 6


def required_torch(source):
    """(major, minor) from a block's first line `# requires torch X.Y ...`, or None."""
    match = re.match(r"# requires torch (\d+)\.(\d+)", source)
    return (int(match.group(1)), int(match.group(2))) if match else None


@pytest.mark.slow  # a fresh process each, the deployment block about a minute
@pytest.mark.parametrize("source", python_blocks())
def test_readme_block_runs(source, tmp_path):
    if source.startswith("# requires CUDA") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    needed = required_torch(source)
    if needed and tuple(int(p) for p in torch.__version__.split(".")[:2]) < needed:
        pytest.skip(f"{source.splitlines()[0][2:]} (Supported torch versions)")
    missing = sorted(m for m in imported_modules(source) if importlib.util.find_spec(m) is None)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    script = tmp_path / "block.py"
    script.write_text(source)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{source}\n---\n{result.stderr[-3000:]}"


@pytest.mark.parametrize(
    "documented",
    [
        lc_cuda.LocallyConnected1d,
        lc_cuda.LocallyConnected2d,
        lc_cuda.LocallyConnected3d,
        lc_cuda.LocallyConnectedTranspose1d,
        lc_cuda.LocallyConnectedTranspose2d,
        lc_cuda.LocallyConnectedTranspose3d,
        lc_cuda.local_conv1d,
        lc_cuda.local_conv2d,
        lc_cuda.local_conv3d,
        lc_cuda.local_conv_transpose2d,
        convert.from_keras,
        convert.from_jax,
        convert.conv_to_local,
        convert.share_weights,
        convert.average_filter_banks,
    ],
    ids=lambda obj: obj.__name__,
)
def test_docstring_examples(documented):
    tests = doctest.DocTestFinder(recurse=False).find(
        documented, globs={"torch": torch, "lc_cuda": lc_cuda}
    )
    assert tests and tests[0].examples, f"{documented.__name__} has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0
