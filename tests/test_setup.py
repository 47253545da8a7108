"""setup.py's toolkit discovery and build record, tested without compiling anything."""

import importlib.util
import os
import re
import shutil
import stat
import sys
from pathlib import Path

import pytest

SETUP_PY = Path(__file__).resolve().parent.parent / "setup.py"


@pytest.fixture(scope="module")
def setup_module():
    spec = importlib.util.spec_from_file_location("lc_cuda_setup", SETUP_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself runs only under __main__
    return module


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_toolkit(root: Path) -> Path:
    """Just the files the build needs, and an nvcc that reports its TOP like the real one."""
    executable(root / "bin" / "nvcc", f'#!/bin/sh\necho "#$ TOP={root}/bin/.."\n')
    (root / "include").mkdir(parents=True)
    (root / "include" / "cuda_runtime.h").write_text("")
    (root / "lib64").mkdir()
    (root / "lib64" / "libcudart.so").write_text("")
    return root


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    return monkeypatch


def test_explicit_cuda_home_is_used(setup_module, clean_env, tmp_path):
    toolkit = fake_toolkit(tmp_path / "cuda-x")
    clean_env.setenv("CUDA_HOME", str(toolkit))
    assert setup_module.find_cuda_home() == toolkit


def test_explicit_cuda_home_that_is_no_toolkit_fails_loudly(setup_module, clean_env, tmp_path):
    clean_env.setenv("CUDA_PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=f"CUDA_PATH={tmp_path} is not a CUDA toolkit"):
        setup_module.find_cuda_home()


def test_wrapper_script_on_path_resolves_to_the_real_toolkit(setup_module, clean_env, tmp_path):
    """/usr/local/bin/nvcc exec'ing the toolkit's nvcc: torch would guess /usr/local."""
    toolkit = fake_toolkit(tmp_path / "cuda-13.0")
    wrapper_dir = tmp_path / "local" / "bin"
    executable(wrapper_dir / "nvcc", f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    clean_env.setenv("PATH", str(wrapper_dir))
    assert setup_module.find_cuda_home() == toolkit.resolve()


def test_symlinked_nvcc_resolves_to_its_toolkit(setup_module, clean_env, tmp_path):
    toolkit = fake_toolkit(tmp_path / "cuda-12.8")
    link_dir = tmp_path / "links"
    link_dir.mkdir()
    (link_dir / "nvcc").symlink_to(toolkit / "bin" / "nvcc")
    clean_env.setenv("PATH", str(link_dir))
    assert setup_module.find_cuda_home() == toolkit.resolve()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on this machine")
def test_this_machines_toolkit_is_found(setup_module):
    home = setup_module.find_cuda_home()
    assert home is not None and setup_module.is_cuda_toolkit(home)
    assert setup_module.nvcc_version(home)[0].isdigit()


def test_arch_names(setup_module):
    flags = [
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90a,code=[compute_90a,sm_90a]",
        "-gencode=arch=compute_80,code=compute_80",
        "-gencode=arch=compute_90,code=sm_90",
    ]
    assert setup_module.arch_names(flags) == ["sm_90", "compute_90a", "sm_90a", "compute_80"]


def test_build_config_header(setup_module, tmp_path):
    header = tmp_path / "config.h"
    setup_module.write_build_config(
        header, {"torch_version": "2.14.1", "with_cuda": True, "debug": False}
    )
    text = header.read_text()
    assert '#define LC_CUDA_BUILD_TORCH_VERSION "2.14.1"' in text
    assert "#define LC_CUDA_BUILD_WITH_CUDA 1" in text
    assert "#define LC_CUDA_BUILD_DEBUG 0" in text
    written = header.stat().st_mtime_ns
    os.utime(header, ns=(written - 10**9, written - 10**9))  # as if written a second earlier
    setup_module.write_build_config(
        header, {"torch_version": "2.14.1", "with_cuda": True, "debug": False}
    )
    assert header.stat().st_mtime_ns == written - 10**9, "unchanged, so not rewritten"


def build_record(directory: Path) -> str:
    return (directory / "lc_cuda_build_config.h").read_text()


def test_cpu_only_build_and_debug_flags(setup_module, monkeypatch, tmp_path):
    monkeypatch.setenv("FORCE_CUDA", "0")
    monkeypatch.setenv("DEBUG", "1")
    (extension,), cmdclass = setup_module.extension_modules(tmp_path)
    assert "cudart" not in extension.libraries
    import torch

    openmp = (
        ["-fopenmp"] if torch.backends.openmp.is_available() and sys.platform == "linux" else []
    )
    assert extension.extra_compile_args["cxx"] == ["-O0", "-g", *openmp]
    assert extension.extra_link_args == openmp  # at::parallel_for is serial without it
    assert not any(source.endswith(".cu") for source in extension.sources)
    record = build_record(tmp_path)
    assert "#define LC_CUDA_BUILD_WITH_CUDA 0" in record
    assert "#define LC_CUDA_BUILD_DEBUG 1" in record
    assert "build_ext" in cmdclass


def test_release_build_has_no_debug_information(setup_module, monkeypatch, tmp_path):
    """Python's CFLAGS carry -g; a release build overrides it (-g0 after it), so that torch's
    headers' debug information neither slows the build nor swells the library."""
    monkeypatch.setenv("FORCE_CUDA", "0")
    monkeypatch.delenv("DEBUG", raising=False)
    (extension,), _ = setup_module.extension_modules(tmp_path)
    assert extension.extra_compile_args["cxx"][:2] == ["-O3", "-g0"]
    assert "#define LC_CUDA_BUILD_DEBUG 0" in build_record(tmp_path)


def test_force_cuda_must_be_0_or_1(setup_module, monkeypatch, tmp_path):
    monkeypatch.setenv("FORCE_CUDA", "yes")
    with pytest.raises(RuntimeError, match="FORCE_CUDA must be 0 or 1, got 'yes'"):
        setup_module.extension_modules(tmp_path)


def skip_unless_torch_matches_the_toolkit(setup_module):
    """A CUDA build is refused where the toolkit's CUDA major version differs from torch's
    (test_toolkit_and_torch_cuda_major_versions_must_match): the build tests need them equal."""
    import torch

    if torch.version.cuda is None:
        pytest.skip("torch has no CUDA")
    toolkit = setup_module.nvcc_version(setup_module.find_cuda_home())
    if toolkit.split(".")[0] != torch.version.cuda.split(".")[0]:
        pytest.skip(f"this toolkit is CUDA {toolkit}, torch's is {torch.version.cuda}")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on this machine")
def test_cuda_build_honours_arch_list_and_nvcc_flags(setup_module, monkeypatch, tmp_path):
    skip_unless_torch_matches_the_toolkit(setup_module)
    monkeypatch.delenv("CUDA_HOME", raising=False)  # extension_modules sets it; undone after
    monkeypatch.setenv("FORCE_CUDA", "1")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    monkeypatch.setenv("NVCC_FLAGS", "-Xptxas -v --keep")
    monkeypatch.delenv("DEBUG", raising=False)
    (extension,), _ = setup_module.extension_modules(tmp_path)
    assert "cudart" in extension.libraries
    nvcc_flags = extension.extra_compile_args["nvcc"]
    assert nvcc_flags[-3:] == ["-Xptxas", "-v", "--keep"]
    assert "-O3" in nvcc_flags
    record = build_record(tmp_path)
    assert '#define LC_CUDA_BUILD_ARCH_LIST "sm_80 sm_90"' in record
    assert "#define LC_CUDA_BUILD_WITH_CUDA 1" in record


def test_default_arch_list_is_torchs_that_nvcc_supports_with_ptx_for_the_newest(setup_module):
    torch_archs = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    nvcc_archs = {80, 86, 87, 90, 100, 110}
    assert setup_module.default_arch_list(torch_archs, nvcc_archs) == "8.0;8.6;9.0;10.0+PTX"
    with pytest.raises(RuntimeError, match="set TORCH_CUDA_ARCH_LIST"):
        setup_module.default_arch_list(["sm_120"], {75, 80})


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on this machine")
def test_without_arch_list_or_gpu_the_build_takes_the_default(setup_module, monkeypatch, tmp_path):
    """torch alone fails here (IndexError in _get_cuda_arch_flags): CI machines, containers."""
    import torch

    skip_unless_torch_matches_the_toolkit(setup_module)
    if torch.cuda.device_count():
        pytest.skip("needs no visible GPU")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setenv("FORCE_CUDA", "1")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "")  # unset; restored after the test
    setup_module.extension_modules(tmp_path)
    expected = setup_module.default_arch_list(
        setup_module.torch_arch_list(torch),
        setup_module.nvcc_virtual_archs(setup_module.find_cuda_home()),
    )
    numbers = [arch.removesuffix("+PTX").replace(".", "") for arch in expected.split(";")]
    recorded = re.search(r'LC_CUDA_BUILD_ARCH_LIST "(.*)"', build_record(tmp_path)).group(1)
    # torch orders the -gencode flags as strings (sm_100 before sm_75)
    assert sorted(recorded.split()) == sorted(
        [f"sm_{number}" for number in numbers] + [f"compute_{numbers[-1]}"]
    )


def test_toolkit_and_torch_cuda_major_versions_must_match(setup_module, tmp_path):
    """A CUDA 13 toolkit with a torch built for CUDA 12.1 fails before anything compiles, with
    both versions and the CPU-only switch in the message; minor versions may differ."""
    with pytest.raises(RuntimeError) as error:
        setup_module.check_cuda_versions("13.0", "12.1", tmp_path)
    message = str(error.value)
    assert "CUDA 13.0" in message and "CUDA 12.1" in message and "FORCE_CUDA=0" in message
    setup_module.check_cuda_versions("13.0", "13.1", tmp_path)
    setup_module.check_cuda_versions("unknown", "12.1", tmp_path)
