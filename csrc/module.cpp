// The Python module lc_cuda._C. Importing it loads this library, whose static initialisers
// register the lc_cuda operators with the dispatcher; its functions report the build and the
// memory the CPU kernels keep.
#include <Python.h>

#include <cstdint>

#include "lc_cuda_build_config.h"

namespace lc_cuda {
namespace cpu {
int64_t kept_output_bytes();  // cpu/output_memory.h, without torch's headers here
}  // namespace cpu
}  // namespace lc_cuda

// The torch this binary was built against, as a marker in its read-only data: lc_cuda/_extension.py
// reads it from the file where the binary cannot be loaded (another torch's ABI), to say which.
extern "C" __attribute__((used)) const char lc_cuda_build_marker[] =
    "lc_cuda build: torch " LC_CUDA_BUILD_TORCH_VERSION ";";

namespace {

// Whether the CPU kernels' at::parallel_for loops run on torch's OpenMP threads: a header
// template, it is parallel only where this library is compiled with OpenMP (setup.py).
#ifdef _OPENMP
constexpr bool kOpenMP = true;
#else
constexpr bool kOpenMP = false;
#endif

PyObject* build_info(PyObject* /*self*/, PyObject* /*args*/) {
  return Py_BuildValue("{s:s,s:s,s:s,s:s,s:O,s:O,s:O,s:O,s:O}",             //
                       "torch_version", LC_CUDA_BUILD_TORCH_VERSION,          //
                       "cuda_version", LC_CUDA_BUILD_CUDA_VERSION,            //
                       "arch_list", LC_CUDA_BUILD_ARCH_LIST,                  //
                       "arch_flags", LC_CUDA_BUILD_ARCH_FLAGS,                //
                       "with_cuda", LC_CUDA_BUILD_WITH_CUDA ? Py_True : Py_False,
                       "cuda_kernels", LC_CUDA_BUILD_CUDA_KERNELS ? Py_True : Py_False,
                       "gpu_verified", LC_CUDA_BUILD_GPU_VERIFIED ? Py_True : Py_False,
                       "debug", LC_CUDA_BUILD_DEBUG ? Py_True : Py_False,
                       "openmp", kOpenMP ? Py_True : Py_False);
}

PyObject* kept_output_bytes(PyObject* /*self*/, PyObject* /*args*/) {
  return PyLong_FromLongLong(lc_cuda::cpu::kept_output_bytes());
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "What this extension was built with."},
    {"kept_output_bytes", kept_output_bytes, METH_NOARGS,
     "Bytes of freed CPU outputs kept for reuse (LC_CUDA_CPU_KEEP_MB)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
