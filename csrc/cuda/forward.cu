// Launches the forward kernel: one CTA per output location, batch tile and C_out tile.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/launch.cuh"

namespace lc_cuda {

at::Tensor cuda_forward(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, const Geometry& g) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  auto output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  if (output.numel() == 0) return output;
  const at::Tensor filters = weight.contiguous();
  const at::Tensor bias_values = bias.has_value() ? bias->contiguous() : at::Tensor();
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lc_cuda_forward", [&] {
    launch::with_index_type({input, filters, output}, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const auto shape = launch::conv_shape<index_t>(g, input, at::Tensor());
      kernels::with_channel_tile(g.out_channels, [&](auto channel_tile) {
        using T = kernels::ForwardTiles<decltype(channel_tile)::value>;
        const dim3 grid = kernels::forward_grid<T>(shape);
        launch::check_grid(grid);
        kernels::forward_kernel<scalar_t, index_t, T><<<grid, T::THREADS, 0, stream>>>(
            input.const_data_ptr<scalar_t>(), filters.const_data_ptr<scalar_t>(),
            bias_values.defined() ? bias_values.const_data_ptr<scalar_t>() : nullptr,
            bias_values.defined() && bias_values.dim() == 1, output.mutable_data_ptr<scalar_t>(),
            shape);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return output;
}

}  // namespace lc_cuda
