// What the kernel launchers share: the index-type choice, the ConvShape built from a checked
// Geometry, the grid check, and the device queries and input packing of the tensor-core kernels.
// The decisions themselves are in launch_policy.cuh.
#pragma once

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/native/CanUse32BitIndexMath.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <mutex>
#include <type_traits>
#include <unordered_map>

#include "cuda/launch_policy.cuh"
#include "cuda/local_conv2d_kernels.cuh"
#include "local_conv.h"
#include "lc_cuda_build_config.h"

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

// The FFMA kernels' grids stay within the limits except for channel counts no layer has.
inline void check_grid(const dim3& grid) {
  TORCH_CHECK(grid_fits(grid),
              "lc_cuda: a launch needs more than 65535 blocks along grid y or z: got y=", grid.y,
              ", z=", grid.z);
}

inline int device_attribute(cudaDeviceAttr attribute, int device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}

// An empty kernel whose attributes tell which of this build's code a device runs. Every .cu file
// is compiled with the same -gencode flags, so its answer holds for every kernel.
template <int = 0>
__global__ void compiled_arch_probe_kernel() {}

// The architecture the code that runs on `device` was compiled for (cudaFuncAttributes::
// ptxVersion: 75 for sm_75 code, also where a newer GPU JIT-compiles compute_75 PTX), asked once
// per device. A build without code for the device fails here, naming the fix.
inline int compiled_arch(int device) {
  static std::mutex mutex;
  static std::unordered_map<int, int> by_device;
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto found = by_device.find(device); found != by_device.end()) return found->second;
  const c10::cuda::CUDAGuard device_guard(static_cast<c10::DeviceIndex>(device));
  cudaFuncAttributes attributes{};
  const cudaError_t status = cudaFuncGetAttributes(&attributes, compiled_arch_probe_kernel<>);
  if (status == cudaErrorNoKernelImageForDevice || status == cudaErrorInvalidDeviceFunction) {
    (void)cudaGetLastError();  // clears the error, so that it is not reported again later
    TORCH_CHECK(false, "lc_cuda: this build has no code for GPU ", device, " (compute capability ",
                device_attribute(cudaDevAttrComputeCapabilityMajor, device), ".",
                device_attribute(cudaDevAttrComputeCapabilityMinor, device), "): built for ",
                LC_CUDA_BUILD_ARCH_LIST, ". Rebuild with TORCH_CUDA_ARCH_LIST set to include it, "
                "or set LC_CUDA_BACKEND=unfold");
  }
  C10_CUDA_CHECK(status);
  return by_device[device] = attributes.ptxVersion;
}

// The tensor-core policy, one place for the three passes: calls run(scalar_t{}) with the type of
// the tensor-core kernel for `dtype` and returns its answer (true: it ran), where the code for
// this device was compiled for sm_80 or newer (compiled_with_tensor_cores): float16 and bfloat16
// always, float32 where torch's matmul policy allows TF32 (torch.backends.cuda.matmul.allow_tf32,
// or torch.set_float32_matmul_precision("high"/"medium")). Otherwise false, nothing run.
template <typename Run>
bool with_tensor_core_type(at::ScalarType dtype, int device, Run&& run) {
  if (!compiled_with_tensor_cores(compiled_arch(device))) return false;
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

inline bool tensor_core_launch_fits(int device, int64_t shared_bytes, const dim3& grid) {
  return tensor_core_launch_fits(
      shared_bytes, device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device), grid);
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
