// What the kernel launchers share: the index-type choice, the ConvShape built from a checked
// Geometry, the grid check, and the device queries and input packing of the tensor-core kernels.
#pragma once

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/native/CanUse32BitIndexMath.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <type_traits>

#include "cuda/local_conv2d_kernels.cuh"
#include "lc_conv2d.h"

namespace lc_cuda {
namespace launch {

// Calls body(int32_t{}) when every tensor's element offsets fit in 32 bits, else
// body(int64_t{}): 64-bit index arithmetic only where some tensor needs it.
template <typename Body>
void with_index_type(std::initializer_list<at::Tensor> tensors, Body&& body) {
  for (const auto& tensor : tensors) {
    if (!at::native::canUse32BitIndexMath(tensor)) return body(int64_t{});
  }
  body(int32_t{});
}

// grad_output may be undefined (the forward pass); its strides are then unused zeros.
template <typename index_t>
kernels::ConvShape<index_t> conv_shape(const Geometry& g, const at::Tensor& input,
                                       const at::Tensor& grad_output) {
  const auto s = input.strides();
  const std::array<int64_t, 4> gs =
      grad_output.defined()
          ? std::array<int64_t, 4>{grad_output.stride(0), grad_output.stride(1),
                                   grad_output.stride(2), grad_output.stride(3)}
          : std::array<int64_t, 4>{0, 0, 0, 0};
  return {static_cast<index_t>(g.batch),      static_cast<index_t>(g.in_channels),
          static_cast<index_t>(g.in_h),       static_cast<index_t>(g.in_w),
          static_cast<index_t>(g.out_channels), static_cast<index_t>(g.out_h),
          static_cast<index_t>(g.out_w),      static_cast<index_t>(g.kernel_h),
          static_cast<index_t>(g.kernel_w),   static_cast<index_t>(g.stride_h),
          static_cast<index_t>(g.stride_w),   static_cast<index_t>(g.pad_h),
          static_cast<index_t>(g.pad_w),      static_cast<index_t>(g.dilation_h),
          static_cast<index_t>(g.dilation_w), static_cast<index_t>(s[0]),
          static_cast<index_t>(s[1]),         static_cast<index_t>(s[2]),
          static_cast<index_t>(s[3]),         static_cast<index_t>(gs[0]),
          static_cast<index_t>(gs[1]),        static_cast<index_t>(gs[2]),
          static_cast<index_t>(gs[3])};
}

// Grid y and z are limited to 65535 blocks; the kernels' grids stay within that except for
// channel counts no layer has.
inline void check_grid(const dim3& grid) {
  TORCH_CHECK(grid.y <= kernels::kMaxGridYZ && grid.z <= kernels::kMaxGridYZ,
              "lc_cuda: a launch needs more than 65535 blocks along grid y or z: got y=", grid.y,
              ", z=", grid.z);
}

inline int device_attribute(cudaDeviceAttr attribute, int device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

// The tensor-core policy, one place for the three passes: calls run(scalar_t{}) with the type of
// the tensor-core kernel for `dtype` and returns its answer (true: it ran), on sm_80 and newer
// (cp.async, ldmatrix, bf16 and TF32 mma.sync): float16 and bfloat16 always, float32 where
// torch's matmul policy allows TF32 (torch.backends.cuda.matmul.allow_tf32, or
// torch.set_float32_matmul_precision("high"/"medium")). Otherwise false, nothing run.
template <typename Run>
bool with_tensor_core_type(at::ScalarType dtype, int device, Run&& run) {
  if (device_attribute(cudaDevAttrComputeCapabilityMajor, device) < 8) return false;
  switch (dtype) {
    case at::kBFloat16:
      return run(at::BFloat16{});
    case at::kHalf:
      return run(at::Half{});
    case at::kFloat:
      return at::globalContext().allowTF32CuBLAS() && run(float{});
    default:
      return false;
  }
}

// Whether a tensor-core launch fits the device: dynamic shared memory within the per-block
// opt-in limit, grid y within 65535 (the kernels put (row, column group) there).
inline bool tensor_core_launch_fits(int device, int64_t shared_bytes, const dim3& grid) {
  return shared_bytes <= device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device) &&
         grid.y <= kernels::kMaxGridYZ;
}

// The batch rounded up to whole 16-byte pieces of 8 samples.
inline int64_t padded_batch(int64_t batch) { return (batch + 7) / 8 * 8; }

// The input as the tensor-core kernels read it: (C_in, H, W, N8), samples innermost, the batch
// padded with zeros to padded_batch. A new tensor (so 16-byte aligned).
inline at::Tensor pack_input(const at::Tensor& input) {
  const int64_t batch = input.size(0), batch_padded = padded_batch(batch);
  auto packed = at::empty({input.size(1), input.size(2), input.size(3), batch_padded},
                          input.options());
  packed.narrow(3, 0, batch).copy_(input.permute({1, 2, 3, 0}));
  if (batch_padded > batch) packed.narrow(3, batch, batch_padded - batch).zero_();
  return packed;
}

}  // namespace launch
}  // namespace lc_cuda
