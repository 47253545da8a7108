// Launches grad_input, a gather: the tensor-core kernel for float16 and bfloat16, and for float32
// where TF32 is allowed, if the GPU and the geometry allow it; otherwise the FFMA kernel (one CTA
// per input pixel, batch tile and C_in tile of a group).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda/grad_input_tensor_core.cuh"
#include "cuda/launch.cuh"

namespace lc_cuda {
namespace {

// Runs the tensor-core grad_input and returns true, or returns false (having done nothing, and
// said why in *why_not) where it does not fit: more shared memory than a block may have (kernel
// widths times dilations in the hundreds), or more blocks than grid y or z holds. grad_output and
// grad_input: (N, C, D, H, W) views.
template <typename scalar_t>
bool tensor_core_grad_input(const at::Tensor& grad_output, const at::Tensor& filters,
                            const Geometry& g, const at::Tensor& grad_input,
                            cudaStream_t stream, std::string* why_not) {
  using T = std::conditional_t<std::is_same_v<scalar_t, float>,
                               kernels::TensorCoreTF32GradInputTiles,
                               kernels::TensorCoreGradInputTiles>;
  const auto unpacked_shape = launch::conv_shape<int64_t>(g, grad_input, grad_output);
  const int64_t shared_bytes = kernels::tensor_core_grad_input_shared_bytes<T>(unpacked_shape);
  const int64_t limit =
      launch::device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, grad_output.get_device());
  if (!launch::tensor_core_launch_fits(shared_bytes, limit,
                                       kernels::tensor_core_grad_input_grid<T>(unpacked_shape))) {
    *why_not = shared_bytes > limit ? "the staged taps need " + std::to_string(shared_bytes) +
                                          " bytes of shared memory"
                                    : launch::kGridTooLarge;
    return false;
  }
  launch::log_kernel("grad_input", grad_output.scalar_type(),
                     launch::tensor_core_description(
                         std::is_same_v<scalar_t, float> ? "TF32" : "mma.sync m16n8k16",
                         T::CHANNELS, 0, shared_bytes));
  constexpr bool kBFloat16 = std::is_same_v<scalar_t, at::BFloat16>;

  launch::with_index_type({grad_output, filters, grad_input}, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    const auto shape = launch::conv_shape<index_t>(g, grad_input, grad_output);
    const auto kernel = kernels::grad_input_tensor_core_kernel<scalar_t, kBFloat16, index_t, T>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared_bytes)));
    kernel<<<kernels::tensor_core_grad_input_grid<T>(shape), T::THREADS, shared_bytes, stream>>>(
        grad_output.const_data_ptr<scalar_t>(), filters.const_data_ptr<scalar_t>(),
        grad_input.mutable_data_ptr<scalar_t>(), shape);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return true;
}

}  // namespace

at::Tensor cuda_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                           const Geometry& g, bool allow_tensor_cores) {
  const c10::cuda::CUDAGuard device_guard(grad_output.device());
  auto grad_input = at::empty(input_shape(g), grad_output.options());
  if (grad_input.numel() == 0) return grad_input;
  const at::Tensor filters = weight.contiguous();
  const at::Tensor grads_5d = as_5d(grad_output, g), grad_input_5d = as_5d(grad_input, g);
  const auto stream = c10::cuda::getCurrentCUDAStream();

  std::string why_not = "LC_CUDA_BACKEND=ffma";
  if (allow_tensor_cores &&
      launch::with_tensor_core_type(
          grad_output.scalar_type(), grad_output.get_device(), &why_not, [&](auto type_tag) {
            return tensor_core_grad_input<decltype(type_tag)>(grads_5d, filters, g, grad_input_5d,
                                                              stream, &why_not);
          }))
    return grad_input;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "lc_cuda_grad_input", [&] {
    launch::with_index_type({grad_output, filters, grad_input}, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const auto shape = launch::conv_shape<index_t>(g, grad_input_5d, grads_5d);
      kernels::with_channel_tile(g.group_in_channels(), [&](auto channel_tile) {
        using T = kernels::GradInputTiles<decltype(channel_tile)::value>;
        launch::log_kernel("grad_input", grad_output.scalar_type(),
                           launch::ffma_description(T::BLOCK_N, why_not));
        const dim3 grid = kernels::grad_input_grid<T>(shape);
        launch::check_grid(grid);
        kernels::grad_input_kernel<scalar_t, index_t, T><<<grid, T::THREADS, 0, stream>>>(
            grad_output.const_data_ptr<scalar_t>(), filters.const_data_ptr<scalar_t>(),
            grad_input.mutable_data_ptr<scalar_t>(), shape);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return grad_input;
}

}  // namespace lc_cuda
