// Launches the grad_weight kernel: one CTA per output location, C_out tile and patch-column
// tile, each reducing over the whole batch.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/launch.cuh"

namespace lc_cuda {

at::Tensor cuda_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                            const Geometry& g) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  auto grad_weight = at::empty(
      {g.out_h, g.out_w, g.out_channels, g.in_channels, g.kernel_h, g.kernel_w}, input.options());
  if (grad_weight.numel() == 0) return grad_weight;
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lc_cuda_grad_weight", [&] {
    launch::with_index_type({grad_output, input, grad_weight}, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const auto shape = launch::conv_shape<index_t>(g, input, grad_output);
      kernels::with_channel_tile(g.out_channels, [&](auto channel_tile) {
        using T = kernels::GradWeightTiles<decltype(channel_tile)::value>;
        const dim3 grid = kernels::grad_weight_grid<T>(shape);
        launch::check_grid(grid);
        kernels::grad_weight_kernel<scalar_t, index_t, T><<<grid, T::THREADS, 0, stream>>>(
            grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
            grad_weight.mutable_data_ptr<scalar_t>(), shape);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return grad_weight;
}

}  // namespace lc_cuda
