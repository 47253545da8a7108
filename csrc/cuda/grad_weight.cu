// Launches grad_weight: the tensor-core kernel for float16 and bfloat16, and for float32 where
// TF32 is allowed, if the GPU and the geometry allow it; otherwise the FFMA kernel (one CTA per output location, C_out tile and
// patch-column tile, each reducing over the whole batch).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/grad_weight_tensor_core.cuh"
#include "cuda/launch.cuh"

namespace lc_cuda {
namespace {

// Runs the tensor-core grad_weight and returns true, or returns false (having done nothing)
// where it does not fit: an empty batch, more shared memory than a block may have (very wide
// strides or dilations, or a batch in the thousands, whose grad_output slice is staged whole),
// or more blocks than grid y or z holds.
template <typename scalar_t>
bool tensor_core_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                             const Geometry& g, at::Tensor& grad_weight, at::Tensor* bias_sums,
                             cudaStream_t stream) {
  constexpr bool kTF32 = std::is_same_v<scalar_t, float>;
  using T = std::conditional_t<kTF32, kernels::TensorCoreTF32GradWeightTiles,
                               kernels::TensorCoreGradWeightTiles>;
  if (g.batch == 0) return false;
  const auto unpacked_shape = launch::conv_shape<int64_t>(g, input, grad_output);
  const int64_t shared_bytes = kernels::tensor_core_grad_weight_shared_bytes<T>(unpacked_shape);
  if (!launch::tensor_core_launch_fits(input.get_device(), shared_bytes,
                                       kernels::tensor_core_grad_weight_grid<T>(unpacked_shape)))
    return false;

  const at::Tensor packed = launch::pack_input(input);
  const at::Tensor packed_view = packed.permute({3, 0, 1, 2});  // (N8, C, H, W) strides
  const int64_t patch_size = g.in_channels * g.kernel_h * g.kernel_w;
  // Pairs of 16-bit gradient elements are one 32-bit store where K is even (TF32: no pairs).
  const bool even_k =
      !kTF32 && patch_size % 2 == 0 &&
      reinterpret_cast<std::uintptr_t>(grad_weight.const_data_ptr()) % 4 == 0;
  constexpr bool kBFloat16 = std::is_same_v<scalar_t, at::BFloat16>;
  if (bias_sums != nullptr)
    *bias_sums = at::empty({g.out_channels, g.out_h, g.out_w}, input.options().dtype(at::kFloat));

  launch::with_index_type({grad_output, packed, grad_weight}, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    const auto shape = launch::conv_shape<index_t>(g, packed_view, grad_output);
    auto run = [&](auto even_tag) {
      const auto kernel = kernels::grad_weight_tensor_core_kernel<scalar_t, kBFloat16,
                                                                  decltype(even_tag)::value,
                                                                  index_t, T>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared_bytes)));
      kernel<<<kernels::tensor_core_grad_weight_grid<T>(shape), T::THREADS, shared_bytes,
               stream>>>(grad_output.const_data_ptr<scalar_t>(),
                         packed.const_data_ptr<scalar_t>(),
                         grad_weight.mutable_data_ptr<scalar_t>(),
                         bias_sums != nullptr ? bias_sums->mutable_data_ptr<float>() : nullptr,
                         shape,
                         static_cast<index_t>(launch::padded_batch(g.batch)));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if constexpr (!kTF32) {
      if (even_k) return run(std::true_type{});
    }
    run(std::false_type{});
  });
  return true;
}

}  // namespace

at::Tensor cuda_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                            const Geometry& g, bool allow_tensor_cores, at::Tensor* bias_sums) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  auto grad_weight = at::empty(weight_shape(g), input.options());
  if (grad_weight.numel() == 0) return grad_weight;
  const auto stream = c10::cuda::getCurrentCUDAStream();

  if (allow_tensor_cores &&
      launch::with_tensor_core_type(input.scalar_type(), input.get_device(), [&](auto type_tag) {
        return tensor_core_grad_weight<decltype(type_tag)>(grad_output, input, g, grad_weight,
                                                           bias_sums, stream);
      }))
    return grad_weight;

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
