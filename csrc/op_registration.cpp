// The lc_cuda operator schemas, the choice of backend, the autocast rules, the operators of the
// earlier release kept for the files saved with it, and the registration of the unfold fallback
// on CUDA where the build has no kernels.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>


#include "lc_cuda_build_config.h"
#include "local_conv.h"

namespace lc_cuda {

namespace {

// The fallback as the implementation of every operator: CUDA tensors in a build without kernels.
at::Tensor local_conv_unfold(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             at::IntArrayRef share, c10::string_view share_mode,
                             bool /*force_unfold*/) {
  const Geometry g = check_forward_args(input, weight, bias, stride, padding, dilation, groups,
                                        share, share_mode);
  return unfold_forward(input, weight, bias, g);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_conv_backward_unfold(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef share, c10::string_view share_mode, bool shared_bias,
    std::array<bool, 3> output_mask, bool /*force_unfold*/) {
  const Geometry g = check_backward_args(grad_output, input, weight, stride, padding, dilation,
                                         groups, share, share_mode);
  return unfold_backward(grad_output, input, weight, g, shared_bias, output_mask);
}

at::Tensor local_conv_transpose_unfold(const at::Tensor& input, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias,
                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef output_padding, at::IntArrayRef dilation,
                                       int64_t groups, at::IntArrayRef share,
                                       c10::string_view share_mode, bool /*force_unfold*/) {
  const Geometry g = check_transpose_args(input, weight, bias, stride, padding, output_padding,
                                          dilation, groups, share, share_mode);
  at::Tensor out = unfold_grad_input(input, weight, g);
  add_transpose_bias(out, bias);
  return out;
}

// Like Conv2d under autocast: every floating input is cast to the autocast dtype of the device.
template <c10::DeviceType device_type, c10::DispatchKey autocast_key>
at::Tensor local_conv_autocast(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               at::IntArrayRef share, c10::string_view share_mode,
                               bool force_unfold) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lc_cuda::local_conv", "")
                             .typed<decltype(local_conv_unfold)>();
  const auto dtype = at::autocast::get_autocast_dtype(device_type);
  return op.call(at::autocast::cached_cast(dtype, input, device_type),
                 at::autocast::cached_cast(dtype, weight, device_type),
                 at::autocast::cached_cast(dtype, bias, device_type), stride, padding, dilation,
                 groups, share, share_mode, force_unfold);
}

template <c10::DeviceType device_type, c10::DispatchKey autocast_key>
at::Tensor local_conv_transpose_autocast(const at::Tensor& input, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias,
                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                         at::IntArrayRef output_padding, at::IntArrayRef dilation,
                                         int64_t groups, at::IntArrayRef share,
                                         c10::string_view share_mode, bool force_unfold) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lc_cuda::local_conv_transpose", "")
                             .typed<decltype(local_conv_transpose_unfold)>();
  const auto dtype = at::autocast::get_autocast_dtype(device_type);
  return op.call(at::autocast::cached_cast(dtype, input, device_type),
                 at::autocast::cached_cast(dtype, weight, device_type),
                 at::autocast::cached_cast(dtype, bias, device_type), stride, padding,
                 output_padding, dilation, groups, share, share_mode, force_unfold);
}

// The earlier release's 2D operators, for TorchScript files and exported programs saved with it
// (and code that calls them): the same computation by the N-D operators, through the dispatcher
// so that their autograd, autocast and backends apply.
std::vector<int64_t> both_sides(at::IntArrayRef padding) {
  return {padding[0], padding[0], padding[1], padding[1]};
}

at::Tensor local_conv2d_saved(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation,
                              bool force_unfold) {
  TORCH_CHECK(padding.size() == 2, "padding must have 2 values (height, width), got ", padding);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lc_cuda::local_conv", "")
                             .typed<decltype(local_conv_unfold)>();
  return op.call(input, weight, bias, stride, both_sides(padding), dilation, 1, {1, 1}, "block",
                 force_unfold);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_conv2d_backward_saved(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool shared_bias,
    std::array<bool, 3> output_mask, bool force_unfold) {
  TORCH_CHECK(padding.size() == 2, "padding must have 2 values (height, width), got ", padding);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lc_cuda::local_conv_backward", "")
                             .typed<decltype(local_conv_backward_unfold)>();
  return op.call(grad_output, input, weight, stride, both_sides(padding), dilation, 1, {1, 1},
                 "block", shared_bias, output_mask, force_unfold);
}

}  // namespace

TORCH_LIBRARY(lc_cuda, m) {
  // One operator for 1 to 3 spatial dimensions (from the input's rank). padding: (before, after)
  // per spatial dimension; share and share_mode: the weight regions (a block of 1 shares
  // nothing); force_unfold selects the unfold fallback on every device.
  m.def(
      "local_conv(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding, "
      "int[] dilation, int groups, int[] share, str share_mode, bool force_unfold=False) -> "
      "Tensor");
  // Outputs not selected by output_mask (grad_input, grad_weight, grad_bias) are empty tensors.
  m.def(
      "local_conv_backward(Tensor grad_output, Tensor input, Tensor weight, int[] stride, "
      "int[] padding, int[] dilation, int groups, int[] share, str share_mode, bool shared_bias, "
      "bool[3] output_mask, bool force_unfold=False) -> (Tensor, Tensor, Tensor)");
  // The adjoint of local_conv in its input, with local_conv's weight: ConvTranspose to Conv.
  m.def(
      "local_conv_transpose(Tensor input, Tensor weight, Tensor? bias, int[] stride, "
      "int[] padding, int[] output_padding, int[] dilation, int groups, int[] share, "
      "str share_mode, bool force_unfold=False) -> Tensor");
  // The earlier release's schemas, unchanged.
  m.def(
      "local_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, bool force_unfold=False) -> Tensor");
  m.def(
      "local_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, bool shared_bias, bool[3] output_mask, "
      "bool force_unfold=False) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lc_cuda, CompositeImplicitAutograd, m) {
  m.impl("local_conv2d", &local_conv2d_saved);
  m.impl("local_conv2d_backward", &local_conv2d_backward_saved);
}

#if !LC_CUDA_BUILD_CUDA_KERNELS
// Without compiled kernels, CUDA tensors take the fallback too.
TORCH_LIBRARY_IMPL(lc_cuda, CUDA, m) {
  m.impl("local_conv", &local_conv_unfold);
  m.impl("local_conv_backward", &local_conv_backward_unfold);
  m.impl("local_conv_transpose", &local_conv_transpose_unfold);
}
#endif

TORCH_LIBRARY_IMPL(lc_cuda, AutocastCPU, m) {
  m.impl("local_conv", &local_conv_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
  m.impl("local_conv_transpose",
         &local_conv_transpose_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(lc_cuda, AutocastCUDA, m) {
  m.impl("local_conv",
         &local_conv_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
  m.impl("local_conv_transpose",
         &local_conv_transpose_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
}

}  // namespace lc_cuda
