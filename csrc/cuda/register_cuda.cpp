// The CUDA implementations of the lc_cuda operators: the hand-written kernels, or the unfold
// fallback where the caller forces it (unfold_local_conv2d) or LC_CUDA_BACKEND=unfold is set.
// LC_CUDA_BACKEND=ffma keeps float16 and bfloat16 on the FFMA kernels (no tensor cores).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "lc_conv2d.h"

namespace lc_cuda {
namespace {

at::Tensor local_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation,
                             bool force_unfold) {
  const Geometry g = check_forward_args(input, weight, bias, stride, padding, dilation);
  const Backend chosen = backend(force_unfold);
  if (chosen == Backend::unfold) return unfold_forward(input, weight, bias, g);
  return cuda_forward(input, weight, bias, g, /*allow_tensor_cores=*/chosen == Backend::kernels);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool shared_bias,
    std::array<bool, 3> output_mask, bool force_unfold) {
  const Geometry g = check_backward_args(grad_output, input, weight, stride, padding, dilation);
  const Backend chosen = backend(force_unfold);
  if (chosen == Backend::unfold) {
    return unfold_backward(grad_output, input, weight, g, shared_bias, output_mask);
  }
  const c10::cuda::CUDAGuard device_guard(input.device());
  const auto empty = [&] { return at::empty({0}, input.options()); };
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
    if (bias_sums.defined())
      grad_bias = (shared_bias ? bias_sums.sum({1, 2}) : bias_sums).to(grad_output.scalar_type());
    else
      grad_bias = shared_bias ? grad_output.sum({0, 2, 3}) : grad_output.sum(0);
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(lc_cuda, CUDA, m) {
  m.impl("local_conv2d", &local_conv2d_cuda);
  m.impl("local_conv2d_backward", &local_conv2d_backward_cuda);
}

}  // namespace lc_cuda
