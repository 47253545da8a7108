// The launchers' decisions that depend on plain numbers only: whether the code compiled for a
// device has the tensor-core kernels, whether a grid fits the hardware's limits, and how much of
// the input a tensor-core kernel stages per pipeline stage. Free of torch and of CUDA runtime
// calls, so that tests/test_launch_policy.py checks them on any machine.
#pragma once

#include <cstdint>

#include "cuda/conv_shape.cuh"

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

// The opt-in shared memory of an sm_90 block (cudaDevAttrMaxSharedMemoryPerBlockOptin), for the
// tests; the launchers ask the device.
constexpr int64_t kSm90SharedBytesPerBlock = 227 * 1024;

// How a tensor-core forward or grad_weight launch stages the input: stage_k patch columns per
// pipeline stage and the dynamic shared memory that takes; stage_k 0 where no stage size fits.
struct StagingPlan {
  int stage_k;
  int64_t shared_bytes;
};

// The staging of a launch whose shared memory at stage_k patch columns per stage is
// shared_bytes(stage_k): the largest of max_stage_k, max_stage_k / 2, ... down to min_stage_k
// (whole MMA k steps) that fits shared_bytes_limit. Layers that fit at max_stage_k keep it, as
// before stages were sized; a 1x1 kernel of many channels needs fewer columns (64 patch columns
// are 64 kernel rows there: 293 KB in TF32), and so do wide strides and dilations.
template <typename SharedBytes>
StagingPlan plan_staging(int max_stage_k, int min_stage_k, SharedBytes shared_bytes,
                         int64_t shared_bytes_limit) {
  for (int stage_k = max_stage_k; stage_k >= min_stage_k; stage_k /= 2) {
    const int64_t bytes = shared_bytes(stage_k);
    if (bytes <= shared_bytes_limit) return {stage_k, bytes};
  }
  return {0, shared_bytes(min_stage_k)};
}

}  // namespace launch
}  // namespace lc_cuda
