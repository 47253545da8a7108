// Checks csrc/cuda/launch_policy.cuh on the CPU: which compiled architectures may run the
// tensor-core kernels, and the grid and shared-memory limits every tensor-core launch must meet
// (the launchers fall back to the FFMA kernels otherwise). Prints each failed check; exits 1 on any.
#include "cuda_on_cpu.h"

#include <cstdio>

#include "cuda/forward_tensor_core.cuh"
#include "cuda/launch_policy.cuh"

using namespace lc_cuda;

int failures = 0;

void check(bool condition, const char* what) {
  if (!condition) {
    ++failures;
    std::printf("FAILED: %s\n", what);
  }
}

int main() {
  // ptxVersion of the code a device runs: 75 for a "7.5+PTX" build JIT-compiled on an H100
  check(!launch::compiled_with_tensor_cores(75), "sm_75 code has no tensor-core kernels");
  check(!launch::compiled_with_tensor_cores(70), "sm_70 code has no tensor-core kernels");
  check(launch::compiled_with_tensor_cores(80), "sm_80 code has them");
  check(launch::compiled_with_tensor_cores(90), "sm_90 code has them");
  check(launch::compiled_with_tensor_cores(120), "sm_120 code has them");

  const unsigned int limit = 65535;
  check(launch::grid_fits(dim3{1u << 30, limit, limit}), "y and z at the limit fit");
  check(!launch::grid_fits(dim3{1, limit + 1, 1}), "grid y past the limit");
  check(!launch::grid_fits(dim3{1, 1, limit + 1}), "grid z past the limit");

  const dim3 small{4, 8, 2};
  check(launch::tensor_core_launch_fits(48 * 1024, 227 * 1024, small), "fits");
  check(launch::tensor_core_launch_fits(227 * 1024, 227 * 1024, small), "shared memory at limit");
  check(!launch::tensor_core_launch_fits(227 * 1024 + 1, 227 * 1024, small), "too much shared");
  check(!launch::tensor_core_launch_fits(1024, 227 * 1024, dim3{1, 1, limit + 1}),
        "grid z past the limit falls back");
  check(!launch::tensor_core_launch_fits(1024, 227 * 1024, dim3{1, limit + 1, 1}),
        "grid y past the limit falls back");

  // The grid a huge channel count gives the tensor-core forward: z = C_out / 16 blocks.
  kernels::ConvShape<int64_t> shape{};
  shape.batch = 8;
  shape.out_h = shape.out_w = 2;
  shape.out_channels = 16 * (int64_t(limit) + 1);
  const dim3 grid = kernels::tensor_core_forward_grid<kernels::TensorCoreForwardTiles<2>>(shape);
  check(grid.z == limit + 1, "forward grid z counts C_out tiles");
  check(!launch::tensor_core_launch_fits(1024, 227 * 1024, grid), "so that launch falls back");

  std::printf("launch policy: %d failed checks\n", failures);
  return failures ? 1 : 0;
}
