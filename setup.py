"""Builds lc_cuda and its extension, lc_cuda._C.

A CUDA build (CUDAExtension, nvcc) is made when a CUDA toolkit is found and torch was built with
CUDA, or when FORCE_CUDA=1; FORCE_CUDA=0 forces a CPU-only build. The extension must be built
against the torch it runs with, so install with `pip install --no-build-isolation`.

Environment variables honoured:
  TORCH_CUDA_ARCH_LIST  architectures to compile for, e.g. "9.0". Unset: the visible GPUs'
                        (torch's behaviour) or, with no GPU visible, default_arch_list()
  MAX_JOBS              parallel compile jobs (ninja)
  NVCC_FLAGS            extra flags appended to every nvcc command line
  DEBUG=1               -O0 -g host code, -G device code
  FORCE_CUDA            1: CUDA build or fail; 0: CPU-only build
  CUDA_HOME / CUDA_PATH the toolkit; found automatically otherwise (see find_cuda_home)
"""

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def is_cuda_toolkit(path: Path) -> bool:
    """A usable toolkit has nvcc, the runtime headers and libcudart where torch links it."""
    return (
        (path / "bin" / "nvcc").is_file()
        and (path / "include" / "cuda_runtime.h").is_file()
        and any((path / "lib64").glob("libcudart.so*"))
    )


def _nvcc_reported_top(nvcc: str) -> Path | None:
    """Asks nvcc where its toolkit is; this sees through wrapper scripts on PATH."""
    try:
        dryrun = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", dryrun.stdout + dryrun.stderr, re.MULTILINE)
    # TOP is the toolkit's bin/.. directory.
    return Path(match.group(1).strip()).resolve() if match else None


def find_cuda_home() -> Path | None:
    """Finds the CUDA toolkit, or returns None when there is none.

    torch guesses CUDA_HOME as dirname(dirname(which nvcc)). Where nvcc on PATH is a wrapper
    script (/usr/local/bin/nvcc exec'ing /usr/local/cuda-13.0/bin/nvcc) that guess is /usr/local
    and linking fails with "-lcudart not found". So every candidate is checked for the files the
    build needs, and nvcc itself is asked where it lives.
    """
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            explicit = Path(os.environ[variable])
            if not is_cuda_toolkit(explicit):
                raise RuntimeError(
                    f"{variable}={explicit} is not a CUDA toolkit: expected bin/nvcc, "
                    "include/cuda_runtime.h and lib64/libcudart.so under it"
                )
            return explicit
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent)
        candidates.append(_nvcc_reported_top(nvcc))
    candidates.append(Path("/usr/local/cuda"))
    return next((path for path in candidates if path and is_cuda_toolkit(path)), None)


def nvcc_version(cuda_home: Path) -> str:
    output = subprocess.run(
        [str(cuda_home / "bin" / "nvcc"), "--version"], capture_output=True, text=True
    ).stdout
    match = re.search(r"release (\d+\.\d+)", output)
    return match.group(1) if match else "unknown"


def nvcc_virtual_archs(cuda_home: Path) -> set[int]:
    """The compute_XX targets this nvcc can compile for, as XX (75, 80, ...)."""
    output = subprocess.run(
        [str(cuda_home / "bin" / "nvcc"), "--list-gpu-arch"], capture_output=True, text=True
    ).stdout
    return {int(number) for number in re.findall(r"^compute_(\d+)$", output, re.MULTILINE)}


def torch_arch_list(torch) -> list[str]:
    """The architectures the installed torch was built for (sm_75 ...). torch.cuda.get_arch_list()
    reads the same record, but returns [] without a GPU before torch 2.14 (2.11, for one)."""
    record = getattr(torch._C, "_cuda_getArchFlags", lambda: None)()
    return record.split() if record else torch.cuda.get_arch_list()


def default_arch_list(torch_archs: list[str], nvcc_archs: set[int]) -> str:
    """The architectures to build for when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible
    (wheels built on CI machines and in containers): those the installed torch was built for
    (torch_arch_list(), e.g. sm_75 ... sm_120) that this nvcc supports, with PTX for
    the newest so that later GPUs can JIT-compile it. torch itself would fail here: it asks the
    visible GPUs and indexes an empty list."""
    numbers = sorted(
        {int(name[3:]) for name in torch_archs if re.fullmatch(r"sm_\d+", name)} & nvcc_archs
    )
    if not numbers:
        raise RuntimeError(
            f"no GPU is visible and no architecture is both in torch's list {torch_archs} and "
            f"supported by nvcc {sorted(nvcc_archs)}: set TORCH_CUDA_ARCH_LIST, e.g. to 9.0"
        )
    return ";".join(f"{number // 10}.{number % 10}" for number in numbers) + "+PTX"


def check_cuda_versions(toolkit_version: str, torch_cuda_version: str, cuda_home: Path) -> None:
    """Fails at once, naming both versions and the way out, where the toolkit's CUDA major
    version differs from torch's: torch's own check would stop the build only after the CPU
    sources had compiled. Minor versions may differ (torch only warns then). A toolkit whose
    version nvcc does not report ("unknown") is left to torch's check."""
    if toolkit_version == "unknown":
        return
    if toolkit_version.split(".")[0] != torch_cuda_version.split(".")[0]:
        raise RuntimeError(
            f"the CUDA toolkit at {cuda_home} is CUDA {toolkit_version}, but this torch was built "
            f"with CUDA {torch_cuda_version}: the extension must be compiled with the same major "
            "version. Set FORCE_CUDA=0 for a CPU-only build (CUDA tensors then take the unfold "
            f"fallback), or point CUDA_HOME at a CUDA {torch_cuda_version.split('.')[0]}.x toolkit"
        )


def arch_names(arch_flags: list[str]) -> list[str]:
    """The sm_XX / compute_XX targets named by -gencode flags, in order, without repeats."""
    names = []
    for flag in arch_flags:
        match = re.search(r",code=\[?([^\]]+)\]?$", flag)
        names += [name for name in match.group(1).split(",") if name not in names] if match else []
    return names


# Written by tools/gpu_check.sh where every step passed on a GPU: the digest of the sources it
# passed on. A build of the same sources records that its kernels are verified, and the
# first-use check (csrc/backend_choice.h) then stays off by default.
GPU_CHECK_RECORD = ROOT / "csrc" / "cuda" / "gpu_check_passed.txt"


def kernel_sources_digest(root: Path = ROOT) -> str:
    """sha256 over csrc's sources and headers, each path and its contents, in path order."""
    digest = hashlib.sha256()
    for path in sorted((root / "csrc").rglob("*")):
        if path.suffix in (".h", ".cpp", ".cu", ".cuh"):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def gpu_verified(root: Path = ROOT) -> bool:
    """Whether the GPU check passed on exactly these sources (GPU_CHECK_RECORD's first line is
    `sources <digest>`)."""
    record = root / GPU_CHECK_RECORD.relative_to(ROOT)
    if not record.is_file():
        return False
    lines = record.read_text().splitlines()
    return bool(lines) and lines[0] == f"sources {kernel_sources_digest(root)}"


def write_build_config(path: Path, fields: dict[str, str | bool]) -> None:
    """Writes the header whose values lc_cuda.build_info() returns, so they describe this binary."""
    lines = ["#pragma once", "// Generated by setup.py; describes the build of this binary."]
    for name, value in fields.items():
        literal = ("1" if value else "0") if isinstance(value, bool) else f'"{value}"'
        lines.append(f"#define LC_CUDA_BUILD_{name.upper()} {literal}")
    text = "\n".join(lines) + "\n"
    # Rewritten only when it changes: the .cu files include it too (launch.cuh), and a new mtime
    # would recompile them on every build.
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def extension_modules(generated: Path = ROOT / "build" / "generated"):
    """The extension to build, and the build_ext command; writes the build record header into
    `generated`."""
    force_cuda = os.environ.get("FORCE_CUDA", "")
    if force_cuda not in ("", "0", "1"):
        raise RuntimeError(f"FORCE_CUDA must be 0 or 1, got {force_cuda!r}")
    cuda_home = find_cuda_home() if force_cuda != "0" else None
    if cuda_home:
        # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME once.
        os.environ["CUDA_HOME"] = str(cuda_home)

    import torch
    from torch.utils import cpp_extension

    with_cuda = force_cuda == "1" or (
        force_cuda == "" and cuda_home is not None and torch.version.cuda is not None
    )
    if with_cuda and (cuda_home is None or torch.version.cuda is None):
        raise RuntimeError(
            "FORCE_CUDA=1 needs a CUDA toolkit and a CUDA build of torch: "
            f"got CUDA_HOME={cuda_home}, torch {torch.__version__} (CUDA {torch.version.cuda})"
        )
    if with_cuda:
        check_cuda_versions(nvcc_version(cuda_home), torch.version.cuda, cuda_home)

    debug = os.environ.get("DEBUG", "0") == "1"
    # -g0: Python's own CFLAGS carry -g, and the debug information of torch's headers made the
    # CPU build 1.6x as long (129 s against 81 s on 2 cores) and the library 31 MB against 2
    # (DEBUG=1 keeps it).
    cxx_flags = ["-O0", "-g"] if debug else ["-O3", "-g0"]
    # at::parallel_for is a header template: the CPU kernels' loops run on torch's OpenMP threads
    # only where this library is compiled with OpenMP (without it they ran on one thread whatever
    # torch.set_num_threads said). torch's wheel has loaded its libgomp.so.1 by the time the
    # extension loads, and the extension's libgomp.so.1 resolves to that same runtime.
    openmp = sys.platform.startswith("linux") and torch.backends.openmp.is_available()
    openmp_flags = ["-fopenmp"] if openmp else []
    cxx_flags += openmp_flags
    nvcc_flags = (["-O0", "-g", "-G"] if debug else ["-O3", "-lineinfo"]) + shlex.split(
        os.environ.get("NVCC_FLAGS", "")
    )
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))
    cuda_sources = sorted(
        str(p.relative_to(ROOT))
        for pattern in ("*.cu", "*.cpp")
        for p in (ROOT / "csrc" / "cuda").glob(pattern)
    )
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.device_count():
        default = default_arch_list(torch_arch_list(torch), nvcc_virtual_archs(cuda_home))
        # torch's _get_cuda_arch_flags reads the variable; this build's value only.
        os.environ["TORCH_CUDA_ARCH_LIST"] = default
        print(
            f"lc_cuda build: no GPU visible and TORCH_CUDA_ARCH_LIST unset, so building for "
            f"{default!r} (torch's architectures that nvcc supports; each one adds to the build "
            f"time). Set TORCH_CUDA_ARCH_LIST to your GPUs' to build faster, e.g. "
            f"TORCH_CUDA_ARCH_LIST=9.0 for an H100.",
            flush=True,
        )
    arch_flags = cpp_extension._get_cuda_arch_flags() if with_cuda else []

    write_build_config(
        generated / "lc_cuda_build_config.h",
        {
            "torch_version": torch.__version__,
            "cuda_version": nvcc_version(cuda_home) if with_cuda else "",
            "arch_list": " ".join(arch_names(arch_flags)),
            "arch_flags": " ".join(arch_flags),
            "with_cuda": with_cuda,
            "cuda_kernels": with_cuda and bool(cuda_sources),
            "gpu_verified": with_cuda and bool(cuda_sources) and gpu_verified(),
            "debug": debug,
        },
    )

    print(
        "lc_cuda build: "
        + (f"CUDA {nvcc_version(cuda_home)} at {cuda_home}" if with_cuda else "CPU only")
        + f", torch {torch.__version__}, arch flags {arch_flags or 'none'}, "
        + f"MAX_JOBS={os.environ.get('MAX_JOBS', 'default')}, DEBUG={int(debug)}, "
        + f"NVCC_FLAGS={os.environ.get('NVCC_FLAGS', '')!r}, OpenMP={int(openmp)}, "
        + f"{len(sources) + (len(cuda_sources) if with_cuda else 0)} source files",
        flush=True,
    )

    common = dict(
        name="lc_cuda._C",
        include_dirs=[str(ROOT / "csrc"), str(generated)],
        define_macros=[("LC_CUDA_WITH_CUDA", "1" if with_cuda else "0")],
        extra_link_args=openmp_flags,
    )
    if with_cuda:
        extension = cpp_extension.CUDAExtension(
            sources=sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            **common,
        )
    else:
        extension = cpp_extension.CppExtension(
            sources=sources, extra_compile_args={"cxx": cxx_flags}, **common
        )
    return [extension], {"build_ext": cpp_extension.BuildExtension}


if __name__ == "__main__":
    from setuptools import setup

    ext_modules, cmdclass = extension_modules()
    setup(
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )
