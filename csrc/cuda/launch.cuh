// What the kernel launchers share: the index-type choice, the ConvShape built from a checked
// Geometry (the one place that builds it), the grid check, the device queries, the tensor-core
// kernels' staging plan and input packing, and the log of which kernel a call took. The
// decisions themselves are in launch_policy.cuh.
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
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <limits>
#include <mutex>
#include <type_traits>
#include <unordered_map>

#include "cuda/ffma_kernels.cuh"
#include "cuda/launch_policy.cuh"
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

// The kernels' copy of a checked Geometry. input and grad_output are (N, C, D, H, W) views
// (as_5d), described by their strides; grad_output may be undefined (the forward pass), its
// strides then unused zeros.
template <typename index_t>
kernels::ConvShape<index_t> conv_shape(const Geometry& g, const at::Tensor& input,
                                       const at::Tensor& grad_output) {
  TORCH_INTERNAL_ASSERT(input.dim() == 5 && (!grad_output.defined() || grad_output.dim() == 5),
                        "conv_shape takes (N, C, D, H, W) views");
  const auto i = [](int64_t value) { return static_cast<index_t>(value); };
  const auto grad_stride = [&](int64_t dim) {
    return grad_output.defined() ? i(grad_output.stride(dim)) : index_t(0);
  };
  kernels::ConvShape<index_t> s{};
  s.batch = i(g.batch), s.in_channels = i(g.in_channels);
  s.in_d = i(g.in_d), s.in_h = i(g.in_h), s.in_w = i(g.in_w);
  s.out_channels = i(g.out_channels);
  s.out_d = i(g.out_d), s.out_h = i(g.out_h), s.out_w = i(g.out_w);
  s.kernel_d = i(g.kernel_d), s.kernel_h = i(g.kernel_h), s.kernel_w = i(g.kernel_w);
  s.stride_d = i(g.stride_d), s.stride_h = i(g.stride_h), s.stride_w = i(g.stride_w);
  s.pad_d = i(g.pad_d), s.pad_h = i(g.pad_h), s.pad_w = i(g.pad_w);
  s.dilation_d = i(g.dilation_d), s.dilation_h = i(g.dilation_h), s.dilation_w = i(g.dilation_w);
  s.groups = i(g.groups);
  s.group_in_channels = i(g.group_in_channels()), s.group_out_channels = i(g.group_out_channels());
  s.share_tile = g.share_mode == ShareMode::tile;
  s.share_d = i(g.share_d), s.share_h = i(g.share_h), s.share_w = i(g.share_w);
  s.regions_d = i(g.regions_d), s.regions_h = i(g.regions_h), s.regions_w = i(g.regions_w);
  s.input_stride_n = i(input.stride(0)), s.input_stride_c = i(input.stride(1));
  s.input_stride_d = i(input.stride(2)), s.input_stride_h = i(input.stride(3));
  s.input_stride_w = i(input.stride(4));
  s.grad_stride_n = grad_stride(0), s.grad_stride_c = grad_stride(1);
  s.grad_stride_d = grad_stride(2), s.grad_stride_h = grad_stride(3);
  s.grad_stride_w = grad_stride(4);
  return s;
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
// or torch.set_float32_matmul_precision("high"/"medium")). Otherwise false, nothing run, and the
// reason in *why_not (for the kernel log).
template <typename Run>
bool with_tensor_core_type(at::ScalarType dtype, int device, std::string* why_not, Run&& run) {
  const int arch = compiled_arch(device);
  if (!compiled_with_tensor_cores(arch)) {
    *why_not = "the code for this GPU was compiled for sm_" + std::to_string(arch) +
               ", tensor cores need sm_80";
    return false;
  }
  switch (dtype) {
    case at::kBFloat16:
      return run(at::BFloat16{});
    case at::kHalf:
      return run(at::Half{});
    case at::kFloat:
      if (!at::globalContext().allowTF32CuBLAS()) {
        *why_not = "TF32 not allowed by torch's matmul precision";
        return false;
      }
      return run(float{});
    default:
      *why_not = "no tensor-core kernel for this dtype";
      return false;
  }
}

// The batch rounded up to whole 16-byte pieces of 8 samples.
inline int64_t padded_batch(int64_t batch) { return (batch + 7) / 8 * 8; }

// The input as the tensor-core kernels read it: (C_in, D, H, W, N8), samples innermost, the
// batch padded with zeros to padded_batch, from an (N, C, D, H, W) view. A new tensor (so 16-byte
// aligned).
inline at::Tensor pack_input(const at::Tensor& input) {
  const int64_t batch = input.size(0), batch_padded = padded_batch(batch);
  auto packed = at::empty(
      {input.size(1), input.size(2), input.size(3), input.size(4), batch_padded}, input.options());
  packed.narrow(4, 0, batch).copy_(input.permute({1, 2, 3, 4, 0}));
  if (batch_padded > batch) packed.narrow(4, batch, batch_padded - batch).zero_();
  return packed;
}

// The packed input seen as (N8, C, D, H, W), the view whose strides conv_shape reads.
inline at::Tensor packed_view(const at::Tensor& packed) { return packed.permute({4, 0, 1, 2, 3}); }

// LC_CUDA_LOG_KERNELS=1 (read at every call): each pass of each call writes one line to stderr
// naming the kernel it launched and why, e.g.
//   lc_cuda: forward Float: tensor cores (TF32), 16 output channels per CTA, 32 patch columns
//   per stage, 152,592 bytes of shared memory
// so that a layer that silently ran the FFMA kernels can be found. Any other value than 1 (or
// unset) logs nothing.
inline bool logging_kernels() {
  const char* value = std::getenv("LC_CUDA_LOG_KERNELS");
  return value != nullptr && std::string(value) == "1";
}

inline void log_kernel(const char* pass, at::ScalarType dtype, const std::string& what) {
  if (logging_kernels())
    std::fprintf(stderr, "lc_cuda: %s %s: %s\n", pass, c10::toString(dtype), what.c_str());
}

// The log line of a tensor-core launch.
inline std::string tensor_core_description(const char* kernel, int channels, int stage_k,
                                           int64_t shared_bytes) {
  std::string text = std::string("tensor cores (") + kernel + "), " + std::to_string(channels) +
                     " channels per CTA";
  if (stage_k > 0) text += ", " + std::to_string(stage_k) + " patch columns per stage";
  return text + ", " + std::to_string(shared_bytes) + " bytes of shared memory";
}

// The log's reason where a tensor-core grid would not fit.
constexpr const char* kGridTooLarge = "the tensor-core grid exceeds 65535 blocks in y or z";

// Why a call that might have taken tensor cores took the FFMA kernels instead, for the log.
inline std::string ffma_description(int tile_width, const std::string& reason) {
  return "FFMA, " + std::to_string(tile_width) + "-wide channel tiles" +
         (reason.empty() ? "" : " (" + reason + ")");
}

}  // namespace launch
}  // namespace lc_cuda
