// The CPU implementations of the lc_cuda operators: the CPU kernels, or the unfold fallback where
// the caller forces it (unfold_local_conv2d) or LC_CUDA_BACKEND=unfold is set.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "avx512_kernels.h"
#include "lc_conv2d.h"

namespace lc_cuda {
namespace {

// LC_CUDA_BACKEND=ffma keeps the BLAS products, the path of CPUs without AVX-512.
bool hand_written_products(Backend chosen) {
  return chosen == Backend::kernels && cpu::cpu_has_avx512();
}

at::Tensor local_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, bool force_unfold) {
  const Geometry g = check_forward_args(input, weight, bias, stride, padding, dilation);
  const Backend chosen = backend(force_unfold);
  if (chosen == Backend::unfold) return unfold_forward(input, weight, bias, g);
  return cpu_forward(input, weight, bias, g, hand_written_products(chosen));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool shared_bias,
    std::array<bool, 3> output_mask, bool force_unfold) {
  const Geometry g = check_backward_args(grad_output, input, weight, stride, padding, dilation);
  const Backend chosen = backend(force_unfold);
  if (chosen == Backend::unfold) {
    return unfold_backward(grad_output, input, weight, g, shared_bias, output_mask);
  }
  const bool hand_written = hand_written_products(chosen);
  const auto empty = [&] { return at::empty({0}, input.options()); };
  return {output_mask[0] ? cpu_grad_input(grad_output, weight, g, hand_written) : empty(),
          output_mask[1] ? cpu_grad_weight(grad_output, input, g, hand_written) : empty(),
          output_mask[2] ? cpu_grad_bias(grad_output, g, shared_bias) : empty()};
}

}  // namespace

TORCH_LIBRARY_IMPL(lc_cuda, CPU, m) {
  m.impl("local_conv2d", &local_conv2d_cpu);
  m.impl("local_conv2d_backward", &local_conv2d_backward_cpu);
}

}  // namespace lc_cuda
