// The CUDA implementations of the lc_cuda operators: the hand-written kernels, or the unfold
// fallback where the caller forces it (unfold_local_conv*), LC_CUDA_BACKEND=unfold is set, or the
// kernels do not take the geometry yet (choose_backend()). LC_CUDA_BACKEND=ffma keeps float16 and
// bfloat16 on the FFMA kernels (no tensor cores).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "backend_choice.h"
#include "local_conv.h"
#include "regions.h"

namespace lc_cuda {
namespace {

// The CUDA kernels as the first-use check runs them.
const DeviceKernels& cuda_kernels() {
  static const DeviceKernels kernels{
      // 1D and 2D layers with a filter bank per location and one group, for now
      [](const Geometry& g) { return g.kernels_of_2d_take(); },
      [](const at::Tensor& like) {
        const c10::cuda::CUDAGuard device_guard(like.device());
        return c10::cuda::currentStreamCaptureStatusMayInitCtx() !=
               c10::cuda::CaptureStatus::None;
      },
      [](const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
         const Geometry& g, Backend backend) {
        return cuda_forward(as_4d(input, g), weight, bias, g, backend == Backend::kernels);
      },
      [](const at::Tensor& grad_output, const at::Tensor& weight, const Geometry& g,
         Backend backend) {
        return cuda_grad_input(as_4d(grad_output, g), weight, g, backend == Backend::kernels);
      },
      [](const at::Tensor& grad_output, const at::Tensor& input, const Geometry& g,
         Backend backend) {
        return cuda_grad_weight(as_4d(grad_output, g), as_4d(input, g), g,
                                backend == Backend::kernels, nullptr);
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
  return cuda_forward(as_4d(input, g), weight, bias, g,
                      /*allow_tensor_cores=*/chosen == Backend::kernels);
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
  const at::Tensor grads = as_4d(grad_output, g);
  at::Tensor bias_sums;  // set by the tensor-core grad_weight, which reads grad_output anyway
  at::Tensor grad_input =
      output_mask[0] ? cuda_grad_input(grads, weight, g, tensor_cores) : empty();
  at::Tensor grad_weight =
      output_mask[1] ? cuda_grad_weight(grads, as_4d(input, g), g, tensor_cores,
                                        output_mask[2] ? &bias_sums : nullptr)
                     : empty();
  at::Tensor grad_bias = empty();
  if (output_mask[2]) {
    // Deterministic either way: a fixed-order sum in the kernel, or ATen's tree reduction.
    if (!bias_sums.defined()) {
      grad_bias = unfold_grad_bias(grad_output, g, shared_bias);
    } else {
      const at::Tensor sums = bias_sums.view({g.out_channels, g.locations()});
      grad_bias = (shared_bias          ? sums.sum(1)
                   : g.shares_weights() ? sum_over_regions(sums, g)
                                        : bias_sums)
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
                       : cuda_grad_input(as_4d(input, g), weight, g,
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
