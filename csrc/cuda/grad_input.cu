// Launches grad_input, a gather: the tensor-core kernel for float16 and bfloat16, and for float32
// where TF32 is allowed, if the GPU and the geometry allow it; otherwise the FFMA kernel (one CTA per input pixel, batch tile and
// C_in tile).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/grad_input_tensor_core.cuh"
#include "cuda/launch.cuh"

namespace lc_cuda {
namespace {

// Runs the tensor-core grad_input and returns true, or returns false (having done nothing)
// where it does not fit: more shared memory than a block may have (kernel widths times
// dilations in the hundreds), or more blocks than grid y or z holds.
template <typename scalar_t>
bool tensor_core_grad_input(const at::Tensor& grad_output, const at::Tensor& filters,
                            const Geometry& g, at::Tensor& grad_input, cudaStream_t stream) {
  using T = std::conditional_t<std::is_same_v<scalar_t, float>,
                               kernels::TensorCoreTF32GradInputTiles,
                               kernels::TensorCoreGradInputTiles>;
  const auto unpacked_shape = launch::conv_shape<int64_t>(g, grad_input, grad_output);
  const int64_t shared_bytes = kernels::tensor_core_grad_input_shared_bytes<T>(unpacked_shape);
  if (!launch::tensor_core_launch_fits(grad_output.get_device(), shared_bytes,
                                       kernels::tensor_core_grad_input_grid<T>(unpacked_shape)))
    return false;
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
  const auto stream = c10::cuda::getCurrentCUDAStream();

  if (allow_tensor_cores &&
      launch::with_tensor_core_type(
          grad_output.scalar_type(), grad_output.get_device(), [&](auto type_tag) {
            return tensor_core_grad_input<decltype(type_tag)>(grad_output, filters, g,
                                                              grad_input, stream);
          }))
    return grad_input;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "lc_cuda_grad_input", [&] {
    launch::with_index_type({grad_output, filters, grad_input}, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const auto shape = launch::conv_shape<index_t>(g, grad_input, grad_output);
      kernels::with_channel_tile(g.in_channels, [&](auto channel_tile) {
        using T = kernels::GradInputTiles<decltype(channel_tile)::value>;
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
