// The CUDA implementations of the lc_cuda operators: the hand-written kernels, which take every
// geometry of the family (1 to 3 spatial dimensions, groups, weight sharing), or the unfold
// fallback where the caller forces it (unfold_local_conv*), LC_CUDA_BACKEND=unfold is set, or the
// first-use check switched the path off (choose_backend()). LC_CUDA_BACKEND=ffma keeps every dtype
// on the FFMA kernels (no tensor cores).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "backend_choice.h"
#include "local_conv.h"
#include "regions.h"

namespace lc_cuda {
namespace {

// The CUDA kernels as the first-use check runs them.
const DeviceKernels& cuda_kernels() {
  static const DeviceKernels kernels{
      // every geometry of the family
      [](const Geometry&) { return true; },
      [](const at::Tensor& like) {
        const c10::cuda::CUDAGuard device_guard(like.device());
        return c10::cuda::currentStreamCaptureStatusMayInitCtx() !=
               c10::cuda::CaptureStatus::None;
      },
      [](const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
         const Geometry& g, Backend backend) {
        return cuda_forward(input, weight, bias, g, backend == Backend::kernels);
      },
      [](const at::Tensor& grad_output, const at::Tensor& weight, const Geometry& g,
         Backend backend) {
        return cuda_grad_input(grad_output, weight, g, backend == Backend::kernels);
      },
      [](const at::Tensor& grad_output, const at::Tensor& input, const Geometry& g,
         Backend backend) {
        return cuda_grad_weight(grad_output, input, g, backend == Backend::kernels, nullptr);
      }};
  return kernels;
}

at::Tensor local_conv_cuda(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           at::IntArrayRef share, c10::string_view share_mode,
                           bool force_unfold) {
  const Geometry g = check_forward_args(input, weight, bias, stride, padding, dilation, groups,
                                        share, share_mode);
  const Backend chosen = choose_backend(force_unfold, g, input, cuda_kernels());
  if (chosen == Backend::unfold) return unfold_forward(input, weight, bias, g);
  return cuda_forward(input, weight, bias, g, /*allow_tensor_cores=*/chosen == Backend::kernels);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_conv_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef share, c10::string_view share_mode, bool shared_bias,
    std::array<bool, 3> output_mask, bool force_unfold) {
  const Geometry g = check_backward_args(grad_output, input, weight, stride, padding, dilation,
                                         groups, share, share_mode);
  const Backend chosen = choose_backend(force_unfold, g, input, cuda_kernels());
  const auto empty = [&] { return at::empty({0}, input.options()); };
  if (chosen == Backend::unfold) {
    return unfold_backward(grad_output, input, weight, g, shared_bias, output_mask);
  }
  const c10::cuda::CUDAGuard device_guard(input.device());
  const bool tensor_cores = chosen == Backend::kernels;
  at::Tensor bias_sums;  // set by the tensor-core grad_weight, which reads grad_output anyway
  at::Tensor grad_input =
      output_mask[0] ? cuda_grad_input(grad_output, weight, g, tensor_cores) : empty();
  at::Tensor grad_weight =
      output_mask[1] ? cuda_grad_weight(grad_output, input, g, tensor_cores,
                                        output_mask[2] ? &bias_sums : nullptr)
                     : empty();
  at::Tensor grad_bias = empty();
  if (output_mask[2]) {
    // Deterministic either way: a fixed-order sum in the kernel, or ATen's tree reduction.
    if (!bias_sums.defined()) {
      grad_bias = unfold_grad_bias(grad_output, g, shared_bias);
    } else {
      // (C_out, locations) sums over the batch, in float: summed over the locations, or over
      // each region's, or (each location its own region) viewed as (C_out, *regions).
      std::vector<int64_t> per_region{g.out_channels};
      for (const int64_t size : region_sizes(g)) per_region.push_back(size);
      grad_bias = (shared_bias          ? bias_sums.sum(1)
                   : g.shares_weights() ? sum_over_regions(bias_sums, g)
                                        : bias_sums.view(per_region))
                      .to(grad_output.scalar_type());
    }
  }
  return {grad_input, grad_weight, grad_bias};
}

at::Tensor local_conv_transpose_cuda(const at::Tensor& input, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef output_padding, at::IntArrayRef dilation,
                                     int64_t groups, at::IntArrayRef share,
                                     c10::string_view share_mode, bool force_unfold) {
  const Geometry g = check_transpose_args(input, weight, bias, stride, padding, output_padding,
                                          dilation, groups, share, share_mode);
  const Backend chosen = choose_backend(force_unfold, g, input, cuda_kernels());
  // The forward op's grad_input, with this op's input as its grad_output.
  at::Tensor out = chosen == Backend::unfold
                       ? unfold_grad_input(input, weight, g)
                       : cuda_grad_input(input, weight, g,
                                         /*allow_tensor_cores=*/chosen == Backend::kernels);
  add_transpose_bias(out, bias);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lc_cuda, CUDA, m) {
  m.impl("local_conv", &local_conv_cuda);
  m.impl("local_conv_backward", &local_conv_backward_cuda);
  m.impl("local_conv_transpose", &local_conv_transpose_cuda);
}

}  // namespace lc_cuda
