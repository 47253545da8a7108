// Launches the forward pass: a tensor-core kernel for float16 and bfloat16, and for float32 where
// TF32 is allowed, if the GPU and the geometry allow it; the FFMA kernel otherwise.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda/forward_tensor_core.cuh"
#include "cuda/launch.cuh"

namespace lc_cuda {
namespace {

// Runs a tensor-core forward and returns true, or returns false (having done nothing, and said
// why in *why_not) where it does not fit: more shared memory than a block may have at the
// smallest stage (very wide strides or dilations), or more blocks than grid y or z holds.
// float16 and bfloat16 run forward_tensor_core_kernel, float32 (under TF32) forward_tf32_kernel.
// input: an (N, C, D, H, W) view.
template <typename scalar_t>
bool tensor_core_forward(const at::Tensor& input, const at::Tensor& filters,
                         const at::Tensor& bias_values, const Geometry& g, at::Tensor& output,
                         cudaStream_t stream, std::string* why_not) {
  constexpr bool kTF32 = std::is_same_v<scalar_t, float>;
  constexpr bool kBFloat16 = std::is_same_v<scalar_t, at::BFloat16>;
  using Narrow = std::conditional_t<kTF32, kernels::TensorCoreTF32ForwardTiles<2>,
                                    kernels::TensorCoreForwardTiles<2>>;
  using Wide = kernels::TensorCoreForwardTiles<4>;
  const int device = input.get_device();
  // Decided before packing, so that a call that falls back costs nothing; shared memory and the
  // grid depend on the geometry only (and both tile widths stage the same input).
  const auto unpacked_shape = launch::conv_shape<int64_t>(g, input, at::Tensor());
  const launch::StagingPlan plan = launch::plan_staging(
      Narrow::STAGE_K, Narrow::MIN_STAGE_K,
      [&](int stage_k) {
        return kernels::tensor_core_forward_shared_bytes<Narrow>(unpacked_shape,
                                                                 int64_t(stage_k));
      },
      launch::device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const dim3 narrow_grid = kernels::tensor_core_forward_grid<Narrow>(unpacked_shape);
  if (plan.stage_k == 0 || !launch::grid_fits(narrow_grid)) {
    *why_not = plan.stage_k == 0 ? "the staged input needs " + std::to_string(plan.shared_bytes) +
                                       " bytes of shared memory at the smallest stage"
                                 : launch::kGridTooLarge;
    return false;
  }
  const int64_t processors = launch::device_attribute(cudaDevAttrMultiProcessorCount, device);
  // 16-bit types: 32 output channels per CTA halve the input staging, but only where enough CTAs
  // remain to fill the GPU twice over (YOLOv1's local layer, 7x7 with 256 channels, would get
  // 56). TF32 keeps 16: its B fragments for a stage already take 32 registers.
  const dim3 wide_grid = kernels::tensor_core_forward_grid<Wide>(unpacked_shape);
  const bool wide = !kTF32 && g.group_out_channels() > 16 &&
                    int64_t(wide_grid.x) * wide_grid.y * wide_grid.z >= 2 * processors;
  launch::log_kernel("forward", input.scalar_type(),
                     launch::tensor_core_description(
                         kTF32 ? "TF32" : "mma.sync m16n8k16",
                         wide ? Wide::OUT_CHANNELS : Narrow::OUT_CHANNELS, plan.stage_k,
                         plan.shared_bytes));

  const at::Tensor packed = launch::pack_input(input);
  const int64_t patch_size = g.patch_size();
  const bool even_k = patch_size % 2 == 0 &&
                      reinterpret_cast<std::uintptr_t>(filters.const_data_ptr()) % 4 == 0;

  launch::with_index_type({packed, filters, output}, [&](auto index_tag) {
    using index_t = decltype(index_tag);
    const auto shape = launch::conv_shape<index_t>(g, launch::packed_view(packed), at::Tensor());
    const kernels::StripStaging<index_t> staging{
        static_cast<index_t>(plan.stage_k), static_cast<index_t>(launch::padded_batch(g.batch))};
    auto launch_with = [&](auto kernel, auto tiles_tag) {
      using T = decltype(tiles_tag);
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(plan.shared_bytes)));
      kernel<<<kernels::tensor_core_forward_grid<T>(shape), T::THREADS, plan.shared_bytes,
               stream>>>(
          packed.const_data_ptr<scalar_t>(), filters.const_data_ptr<scalar_t>(),
          bias_values.defined() ? bias_values.const_data_ptr<scalar_t>() : nullptr,
          bias_values.defined() && bias_values.dim() == 1, output.mutable_data_ptr<scalar_t>(),
          shape, staging);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if constexpr (kTF32) {
      launch_with(kernels::forward_tf32_kernel<index_t, Narrow>, Narrow{});
    } else {
      auto with_even_k = [&](auto tiles_tag) {
        using T = decltype(tiles_tag);
        if (even_k)
          return launch_with(
              kernels::forward_tensor_core_kernel<scalar_t, kBFloat16, true, index_t, T>,
              tiles_tag);
        launch_with(kernels::forward_tensor_core_kernel<scalar_t, kBFloat16, false, index_t, T>,
                    tiles_tag);
      };
      if (wide) return with_even_k(Wide{});
      with_even_k(Narrow{});
    }
  });
  return true;
}

}  // namespace

at::Tensor cuda_forward(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, const Geometry& g,
                        bool allow_tensor_cores) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  auto output = at::empty(output_shape(g), input.options());
  if (output.numel() == 0) return output;
  const at::Tensor filters = weight.contiguous();
  const at::Tensor bias_values = bias.has_value() ? bias->contiguous() : at::Tensor();
  const at::Tensor input_5d = as_5d(input, g);
  const auto stream = c10::cuda::getCurrentCUDAStream();

  std::string why_not = "LC_CUDA_BACKEND=ffma";
  if (allow_tensor_cores &&
      launch::with_tensor_core_type(
          input.scalar_type(), input.get_device(), &why_not, [&](auto type_tag) {
            return tensor_core_forward<decltype(type_tag)>(input_5d, filters, bias_values, g,
                                                           output, stream, &why_not);
          }))
    return output;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lc_cuda_forward", [&] {
    launch::with_index_type({input, filters, output}, [&](auto index_tag) {
      using index_t = decltype(index_tag);
      const auto shape = launch::conv_shape<index_t>(g, input_5d, at::Tensor());
      kernels::with_channel_tile(g.group_out_channels(), [&](auto channel_tile) {
        using T = kernels::ForwardTiles<decltype(channel_tile)::value>;
        launch::log_kernel("forward", input.scalar_type(),
                           launch::ffma_description(T::BLOCK_N, why_not));
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
