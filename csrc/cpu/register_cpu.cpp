// The CPU implementations of the lc_cuda operators: the CPU kernels, or the unfold fallback where
// the caller forces it (unfold_local_conv*), LC_CUDA_BACKEND=unfold is set, or the kernels do not
// take the geometry yet (choose_backend()).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "backend_choice.h"
#include "local_conv.h"
#include "product_isa.h"

namespace lc_cuda {
namespace {

// The CPU kernels as the first-use check runs them (LC_CUDA_FIRST_USE_CHECK=all checks them).
const DeviceKernels& cpu_kernels() {
  static const DeviceKernels kernels{
      [](const Geometry&) { return true; },  // every geometry
      [](const at::Tensor&) { return false; },  // no graphs on the CPU
      [](const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
         const Geometry& g, Backend backend) {
        return cpu_forward(as_5d(input, g), weight, bias, g, cpu::product_isa(backend));
      },
      [](const at::Tensor& grad_output, const at::Tensor& weight, const Geometry& g,
         Backend backend) {
        return cpu_grad_input(as_5d(grad_output, g), weight, g, cpu::product_isa(backend));
      },
      [](const at::Tensor& grad_output, const at::Tensor& input, const Geometry& g,
         Backend backend) {
        return cpu_grad_weight(as_5d(grad_output, g), as_5d(input, g), g,
                               cpu::product_isa(backend));
      }};
  return kernels;
}

at::Tensor local_conv_cpu(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                          at::IntArrayRef share, c10::string_view share_mode, bool force_unfold) {
  const Geometry g = check_forward_args(input, weight, bias, stride, padding, dilation, groups,
                                        share, share_mode);
  const Backend chosen = choose_backend(force_unfold, g, input, cpu_kernels());
  if (chosen == Backend::unfold) return unfold_forward(input, weight, bias, g);
  return cpu_forward(as_5d(input, g), weight, bias, g, cpu::product_isa(chosen));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_conv_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef share, c10::string_view share_mode, bool shared_bias,
    std::array<bool, 3> output_mask, bool force_unfold) {
  const Geometry g = check_backward_args(grad_output, input, weight, stride, padding, dilation,
                                         groups, share, share_mode);
  const Backend chosen = choose_backend(force_unfold, g, input, cpu_kernels());
  const auto empty = [&] { return at::empty({0}, input.options()); };
  if (chosen == Backend::unfold) {
    return unfold_backward(grad_output, input, weight, g, shared_bias, output_mask);
  }
  const ProductIsa isa = cpu::product_isa(chosen);
  const at::Tensor grads = as_5d(grad_output, g);
  if (output_mask[0] && output_mask[1]) {
    auto both = cpu_backward_by_rows(grads, as_5d(input, g), weight, g, isa, output_mask[2],
                                     shared_bias);
    if (both.has_value()) {
      auto& [grad_input, grad_weight, grad_bias] = *both;
      return {grad_input, grad_weight, output_mask[2] ? grad_bias : empty()};
    }
  }
  return {output_mask[0] ? cpu_grad_input(grads, weight, g, isa) : empty(),
          output_mask[1] ? cpu_grad_weight(grads, as_5d(input, g), g, isa) : empty(),
          output_mask[2] ? cpu_grad_bias(grad_output, g, shared_bias) : empty()};
}

at::Tensor local_conv_transpose_cpu(const at::Tensor& input, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef output_padding,
                                    at::IntArrayRef dilation, int64_t groups,
                                    at::IntArrayRef share, c10::string_view share_mode,
                                    bool force_unfold) {
  const Geometry g = check_transpose_args(input, weight, bias, stride, padding, output_padding,
                                          dilation, groups, share, share_mode);
  const Backend chosen = choose_backend(force_unfold, g, input, cpu_kernels());
  // The forward op's grad_input, with this op's input as its grad_output.
  at::Tensor out = chosen == Backend::unfold
                       ? unfold_grad_input(input, weight, g)
                       : cpu_grad_input(as_5d(input, g), weight, g, cpu::product_isa(chosen));
  add_transpose_bias(out, bias);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lc_cuda, CPU, m) {
  m.impl("local_conv", &local_conv_cpu);
  m.impl("local_conv_backward", &local_conv_backward_cpu);
  m.impl("local_conv_transpose", &local_conv_transpose_cpu);
}

}  // namespace lc_cuda
