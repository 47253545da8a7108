// Launches grad_weight: the tensor-core kernel for float16 and bfloat16, and for float32 where
// TF32 is allowed, if the GPU and the geometry allow it; otherwise the FFMA kernel (one CTA per
// weight region, C_out tile of a group and patch-column tile, each reducing over the whole batch
// and the region's locations).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda/grad_weight_tensor_core.cuh"
#include "cuda/launch.cuh"

namespace lc_cuda {
namespace {

// Runs the tensor-core grad_weight and returns true, or returns false (having done nothing, and
// said why in *why_not) where it does not fit: an empty batch, more shared memory than a block
// may have at the smallest stage (very wide strides or dilations, or a batch in the thousands,
// whose grad_output slice is staged whole), or more blocks than grid y or z holds. grad_output
// and input: (N, C, D, H, W) views.
template <typename scalar_t>
bool tensor_core_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                             const Geometry& g, at::Tensor& grad_weight, at::Tensor* bias_sums,
                             cudaStream_t stream, std::string* why_not) {
  constexpr bool kTF32 = std::is_same_v<scalar_t, float>;
  using T = std::conditional_t<kTF32, kernels::TensorCoreTF32GradWeightTiles,
                               kernels::TensorCoreGradWeightTiles>;
  if (g.batch == 0) {
    *why_not = "an empty batch";
    return false;
  }
  const auto unpacked_shape = launch::conv_shape<int64_t>(g, input, grad_output);
  const launch::StagingPlan plan = launch::plan_staging(
      T::STAGE_K, T::MIN_STAGE_K,
      [&](int stage_k) {
        return kernels::tensor_core_grad_weight_shared_bytes<T>(unpacked_shape,
                                                                int64_t(stage_k));
      },
      launch::device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, input.get_device()));
  if (plan.stage_k == 0 ||
      !launch::grid_fits(kernels::tensor_core_grad_weight_grid<T>(unpacked_shape))) {
    *why_not = plan.stage_k == 0
                   ? "the staged input and grad_output need " + std::to_string(plan.shared_bytes) +
                         " bytes of shared memory at the smallest stage"
                   : launch::kGridTooLarge;
    return false;
  }
  launch::log_kernel("grad_weight", input.scalar_type(),
                     launch::tensor_core_description(kTF32 ? "TF32" : "mma.sync m16n8k16",
                                                     T::OUT_CHANNELS, plan.stage_k,
                                                     plan.shared_bytes));

  const at::Tensor packed = launch::pack_input(input);
  const int64_t patch_size = g.patch_size();
  // Pairs of 16-bit gradient elements are one 32-bit store where K is even (TF32: no pairs).
  const bool even_k =
      !kTF32 && patch_size % 2 == 0 &&
      reinterpret_cast<std::uintptr_t>(grad_weight.const_data_ptr()) % 4 == 0;
  constexpr bool kBFloat16 = std::is_same_v<scalar_t, at::BFloat16>;
  if (bias_sums != nullptr)
    *bias_sums =
        at::empty({g.out_channels, g.locations()}, input.options().dtype(at::kFloat));

  launch::with_index_type({grad_output, packed, grad_weight}, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    const auto shape = launch::conv_shape<index_t>(g, launch::packed_view(packed), grad_output);
    const kernels::StripStaging<index_t> staging{
        static_cast<index_t>(plan.stage_k), static_cast<index_t>(launch::padded_batch(g.batch))};
    auto run = [&](auto even_tag) {
      const auto kernel = kernels::grad_weight_tensor_core_kernel<scalar_t, kBFloat16,
                                                                  decltype(even_tag)::value,
                                                                  index_t, T>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(plan.shared_bytes)));
      kernel<<<kernels::tensor_core_grad_weight_grid<T>(shape), T::THREADS, plan.shared_bytes,
               stream>>>(grad_output.const_data_ptr<scalar_t>(),
                         packed.const_data_ptr<scalar_t>(),
                         grad_weight.mutable_data_ptr<scalar_t>(),
                         bias_sums != nullptr ? bias_sums->mutable_data_ptr<float>() : nullptr,
                         shape, staging);
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
  const at::Tensor grads_5d = as_5d(grad_output, g), input_5d = as_5d(input, g);
  const auto stream = c10::cuda::getCurrentCUDAStream();

  std::string why_not = "LC_CUDA_BACKEND=ffma";
  if (allow_tensor_cores &&
      launch::with_tensor_core_type(
          input.scalar_type(), input.get_device(), &why_not, [&](auto type_tag) {
            return tensor_core_grad_weight<decltype(type_tag)>(grads_5d, input_5d, g, grad_weight,
                                                               bias_sums, stream, &why_not);
          }))
    return grad_weight;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lc_cuda_grad_weight", [&] {
    launch::with_index_type({grad_output, input, grad_weight}, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const auto shape = launch::conv_shape<index_t>(g, input_5d, grads_5d);
      kernels::with_channel_tile(g.group_out_channels(), [&](auto channel_tile) {
        using T = kernels::GradWeightTiles<decltype(channel_tile)::value>;
        launch::log_kernel("grad_weight", input.scalar_type(),
                           launch::ffma_description(T::BLOCK_M, why_not));
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
