"""Loads the compiled extension lc_cuda._C, which registers the torch.ops.lc_cuda operators."""

import torch

try:
    from . import _C
except ImportError as error:
    raise ImportError(
        "lc_cuda's compiled extension (lc_cuda._C) could not be loaded. Build it against the torch "
        f"you run ({torch.__version__}) with `pip install --no-build-isolation .` "
        f"from the source tree. Cause: {error}"
    ) from error


def build_info() -> dict:
    """What the installed extension was built with.

    Keys: torch_version (at build time), cuda_version ('' for a CPU-only build), arch_list
    (e.g. ['sm_90']), arch_flags (the -gencode flags), with_cuda (built with nvcc and linked to
    the CUDA runtime), cuda_kernels (hand-written CUDA kernels compiled in; without them CUDA
    tensors take the unfold fallback) and debug.
    """
    info = _C.build_info()
    info["arch_list"] = info["arch_list"].split()
    info["arch_flags"] = info["arch_flags"].split()
    return info
