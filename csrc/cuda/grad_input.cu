// Launches the grad_input gather kernel: one CTA per input pixel, batch tile and C_in tile.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/launch.cuh"

namespace lc_cuda {

at::Tensor cuda_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                           const Geometry& g) {
  const c10::cuda::CUDAGuard device_guard(grad_output.device());
  auto grad_input = at::empty({g.batch, g.in_channels, g.in_h, g.in_w}, grad_output.options());
  if (grad_input.numel() == 0) return grad_input;
  const at::Tensor filters = weight.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();

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
