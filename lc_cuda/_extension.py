"""Loads the compiled extension lc_cuda._C, which registers the torch.ops.lc_cuda operators."""

import importlib.metadata
import re
from pathlib import Path

import torch


def built_against(package: Path) -> str | None:
    """The torch version the compiled extension in `package` was built against, from the marker
    in the binary's data (csrc/module.cpp): readable where the binary cannot be loaded."""
    for binary in [*package.glob("_C*.so"), *package.glob("_C*.pyd")]:
        match = re.search(rb"lc_cuda build: torch ([^;\0]+);", binary.read_bytes())
        if match:
            return match.group(1).decode()
    return None


def _missing_extension_hint() -> str:
    """What to do when lc_cuda._C cannot be imported, from where this package was found."""
    package = Path(__file__).resolve().parent
    built_for = built_against(package)
    if built_for is not None and built_for != torch.__version__:
        return (
            f"It was built against torch {built_for}, and this is torch {torch.__version__}: "
            "the extension must be rebuilt against the torch it runs with, "
            "`pip install --no-build-isolation .` from the source tree"
        )
    built_here = any(package.glob("_C*.so")) or any(package.glob("_C*.pyd"))
    if (package.parent / "setup.py").is_file() and not built_here:
        # A clone's source folder, found first on sys.path (the current folder, for `python -c`
        # or `python -m`), shadows the installed package.
        # pip leaves lc_cuda.egg-info in the source folder too; that one is not the install.
        locations = (
            Path(distribution.locate_file("lc_cuda"))
            for distribution in importlib.metadata.distributions(name="lc_cuda")
        )
        installed = next((path for path in locations if path.resolve() != package), None)
        if installed is not None:
            return (
                f"Python found the source folder {package} (the current folder comes first on "
                f"sys.path), not the installed lc_cuda at {installed}. Run from another folder, "
                "or build in place with `pip install --no-build-isolation -e .`"
            )
    return (
        f"Build it against the torch you run ({torch.__version__}) with "
        "`pip install --no-build-isolation .` from the source tree"
    )


try:
    from . import _C
except ImportError as error:
    raise ImportError(
        f"lc_cuda's compiled extension (lc_cuda._C) could not be loaded. "
        f"{_missing_extension_hint()}. Cause: {error}"
    ) from error


def build_info() -> dict:
    """What the installed extension was built with.

    Keys: torch_version (at build time), cuda_version ('' for a CPU-only build), arch_list
    (e.g. ['sm_90']), arch_flags (the -gencode flags), with_cuda (built with nvcc and linked to
    the CUDA runtime), cuda_kernels (hand-written CUDA kernels compiled in; without them CUDA
    tensors take the unfold fallback), gpu_verified (tools/gpu_check.sh passed on a GPU with
    exactly these sources: the first-use check stays off), debug, and openmp (the CPU kernels'
    loops run on torch's OpenMP threads; without it, on one thread).
    """
    info = _C.build_info()
    info["arch_list"] = info["arch_list"].split()
    info["arch_flags"] = info["arch_flags"].split()
    return info
