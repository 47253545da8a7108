// The launchers' decisions that depend on plain numbers only: whether the code compiled for a
// device has the tensor-core kernels, and whether a grid fits the hardware's limits. Free of torch
// and of CUDA runtime calls, so that tests/test_launch_policy.py checks them on any machine.
#pragma once

#include <cstdint>

#include "cuda/local_conv2d_kernels.cuh"

namespace lc_cuda {
namespace launch {

// The tensor-core wrappers (tensor_core.cuh) use cp.async, ldmatrix and the bf16/TF32 mma.sync
// of sm_80; compiled for an older __CUDA_ARCH__ they are __trap(). What matters is the
// architecture the code that runs on the device was compiled for (cudaFuncAttributes::ptxVersion,
// 80 for compute_80), not the device's own capability: a "7.5+PTX" build on an H100 JIT-compiles
// its sm_75 PTX, and a tensor-core launch there would trap and kill the CUDA context.
constexpr int kTensorCoreMinCompiledArch = 80;

inline bool compiled_with_tensor_cores(int compiled_arch) {
  return compiled_arch >= kTensorCoreMinCompiledArch;
}

// Grid y and z are limited to 65535 blocks (x to 2^31 - 1, which no geometry reaches).
inline bool grid_fits(const dim3& grid) {
  return grid.y <= kernels::kMaxGridYZ && grid.z <= kernels::kMaxGridYZ;
}

// Whether a tensor-core launch fits the device: dynamic shared memory within the per-block
// opt-in limit, and the grid within its limits.
inline bool tensor_core_launch_fits(int64_t shared_bytes, int64_t shared_bytes_limit,
                                    const dim3& grid) {
  return shared_bytes <= shared_bytes_limit && grid_fits(grid);
}

}  // namespace launch
}  // namespace lc_cuda
