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


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
