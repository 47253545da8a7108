import importlib.util

import pytest
import torch

# TensorFlow (the keras extra's tests) bundles an LLVM that makes a later `import triton`
# (torch.compile, or an optimizer step) segfault; the other order works. So triton is loaded first.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def needs_torch(major: int, minor: int, feature: str):
    """Skips a test below the torch release that brought `feature` (README: Supported torch
    versions)."""
    version = tuple(int(part) for part in torch.__version__.split(".")[:2])
    return pytest.mark.skipif(
        version < (major, minor), reason=f"{feature} needs torch {major}.{minor} or later"
    )


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
