// The lc_cuda operator schemas, the argument checks every backend shares, the autocast rule, and
// the registration of the unfold fallback on CUDA where the build has no kernels.
#include "lc_conv2d.h"
#include "lc_cuda_build_config.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

namespace lc_cuda {
namespace {

void check_dense_floating(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.layout() == at::kStrided, name, " must be a dense (strided) tensor, got layout ",
              tensor.layout());
  TORCH_CHECK(at::isFloatingType(tensor.scalar_type()), name,
              " must be a floating-point tensor (float64, float32, float16 or bfloat16), got dtype ",
              tensor.scalar_type());
}

void check_same_dtype_and_device(const at::Tensor& tensor, const char* name,
                                 const at::Tensor& input) {
  TORCH_CHECK(tensor.scalar_type() == input.scalar_type(), name,
              ".dtype must match input.dtype: got ", tensor.scalar_type(), ", expected ",
              input.scalar_type());
  TORCH_CHECK(tensor.device() == input.device(), name,
              ".device must match input.device: got ", tensor.device(), ", expected ",
              input.device());
}

void check_pair(at::IntArrayRef values, const char* name, int64_t minimum) {
  TORCH_CHECK(values.size() == 2, name, " must have 2 values (height, width), got ", values);
  TORCH_CHECK(values[0] >= minimum && values[1] >= minimum, name, " must be ",
              minimum == 0 ? "non-negative" : "positive", ", got ", values);
}

// Output extent along one dimension; fails when the dilated kernel is wider than the padded input.
int64_t output_extent(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation,
                      const char* dim_name) {
  const int64_t padded = in + 2 * pad;
  const int64_t span = dilation * (kernel - 1) + 1;
  TORCH_CHECK(span <= padded, "kernel ", dim_name, " does not fit the padded input: dilated kernel ",
              dim_name, " ", span, " (dilation * (kernel - 1) + 1) > padded input ", dim_name, " ",
              padded, " (input ", in, " + 2 * padding ", pad, ")");
  return (padded - span) / stride + 1;
}

}  // namespace

Geometry check_forward_args(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(input.dim() == 4, "input must be 4-D (N, C_in, H, W), got ", input.dim(),
              "-D of shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 6, "weight must be 6-D (OH, OW, C_out, C_in, KH, KW), got ",
              weight.dim(), "-D of shape ", weight.sizes());
  check_dense_floating(input, "input");
  check_dense_floating(weight, "weight");
  check_same_dtype_and_device(weight, "weight", input);
  check_pair(stride, "stride", 1);
  check_pair(dilation, "dilation", 1);
  check_pair(padding, "padding", 0);
  TORCH_CHECK(input.size(1) >= 1 && input.size(2) >= 1 && input.size(3) >= 1,
              "input C_in, H and W (dims 1, 2, 3) must be at least 1, got input.shape ",
              input.sizes());
  TORCH_CHECK(weight.size(2) >= 1 && weight.size(4) >= 1 && weight.size(5) >= 1,
              "weight C_out, KH and KW (dims 2, 4, 5) must be at least 1, got weight.shape ",
              weight.sizes());

  Geometry g;
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.out_channels = weight.size(2);
  g.kernel_h = weight.size(4);
  g.kernel_w = weight.size(5);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.out_h = output_extent(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, "height");
  g.out_w = output_extent(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, "width");

  TORCH_CHECK(weight.size(3) == g.in_channels, "input.shape[1] is not valid: got ", g.in_channels,
              ", expected ", weight.size(3), " input channels (C_in, weight.shape[3]); input of shape ",
              input.sizes(), ", weight of shape ", weight.sizes());
  const std::array<int64_t, 6> expected{g.out_h, g.out_w, g.out_channels,
                                        g.in_channels, g.kernel_h, g.kernel_w};
  TORCH_CHECK(weight.sizes() == at::IntArrayRef(expected), "weight.shape is not valid: got ",
              weight.sizes(), ", expected ", at::IntArrayRef(expected),
              " (OH, OW, C_out, C_in, KH, KW) for input of shape ", input.sizes(), " with stride ",
              stride, ", padding ", padding, ", dilation ", dilation);

  if (bias.has_value()) {
    check_dense_floating(*bias, "bias");
    check_same_dtype_and_device(*bias, "bias", input);
    const std::array<int64_t, 1> shared{g.out_channels};
    const std::array<int64_t, 3> per_location{g.out_channels, g.out_h, g.out_w};
    TORCH_CHECK(bias->sizes() == at::IntArrayRef(shared) ||
                    bias->sizes() == at::IntArrayRef(per_location),
                "bias.shape is not valid: got ", bias->sizes(), ", expected ",
                at::IntArrayRef(per_location), " (C_out, OH, OW) or ", at::IntArrayRef(shared),
                " (C_out,)");
  }
  return g;
}

Geometry check_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& weight, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Geometry g = check_forward_args(input, weight, std::nullopt, stride, padding, dilation);
  check_dense_floating(grad_output, "grad_output");
  check_same_dtype_and_device(grad_output, "grad_output", input);
  const std::array<int64_t, 4> expected{g.batch, g.out_channels, g.out_h, g.out_w};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected),
              "grad_output.shape is not valid: got ", grad_output.sizes(), ", expected ",
              at::IntArrayRef(expected), " (N, C_out, OH, OW)");
  return g;
}

Backend backend(bool force_unfold) {
  if (force_unfold) return Backend::unfold;
  const char* value = std::getenv("LC_CUDA_BACKEND");
  const std::string name = value == nullptr ? "" : value;
  if (name.empty() || name == "auto") return Backend::kernels;
  if (name == "ffma") return Backend::ffma;
  if (name == "unfold") return Backend::unfold;
  TORCH_CHECK(false, "LC_CUDA_BACKEND must be 'auto', 'ffma' or 'unfold' (or unset), got '", name,
              "'");
}

namespace {

at::Tensor local_conv2d_unfold(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation,
                               bool /*force_unfold*/) {
  const Geometry g = check_forward_args(input, weight, bias, stride, padding, dilation);
  return unfold_forward(input, weight, bias, g);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_conv2d_backward_unfold(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool shared_bias,
    std::array<bool, 3> output_mask, bool /*force_unfold*/) {
  const Geometry g = check_backward_args(grad_output, input, weight, stride, padding, dilation);
  return unfold_backward(grad_output, input, weight, g, shared_bias, output_mask);
}

// Like Conv2d under autocast: every floating input is cast to the autocast dtype of the device.
template <c10::DeviceType device_type, c10::DispatchKey autocast_key>
at::Tensor local_conv2d_autocast(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 bool force_unfold) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lc_cuda::local_conv2d", "")
                             .typed<decltype(local_conv2d_unfold)>();
  const auto dtype = at::autocast::get_autocast_dtype(device_type);
  return op.call(at::autocast::cached_cast(dtype, input, device_type),
                 at::autocast::cached_cast(dtype, weight, device_type),
                 at::autocast::cached_cast(dtype, bias, device_type), stride, padding, dilation,
                 force_unfold);
}

}  // namespace

TORCH_LIBRARY(lc_cuda, m) {
  // force_unfold selects the unfold fallback on every device; lc_cuda.unfold_local_conv2d sets it.
  m.def(
      "local_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, bool force_unfold=False) -> Tensor");
  // Outputs not selected by output_mask (grad_input, grad_weight, grad_bias) are empty tensors.
  m.def(
      "local_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, bool shared_bias, bool[3] output_mask, "
      "bool force_unfold=False) -> (Tensor, Tensor, Tensor)");
}

#if !LC_CUDA_BUILD_CUDA_KERNELS
// Without compiled kernels, CUDA tensors take the fallback too.
TORCH_LIBRARY_IMPL(lc_cuda, CUDA, m) {
  m.impl("local_conv2d", &local_conv2d_unfold);
  m.impl("local_conv2d_backward", &local_conv2d_backward_unfold);
}
#endif

TORCH_LIBRARY_IMPL(lc_cuda, AutocastCPU, m) {
  m.impl("local_conv2d",
         &local_conv2d_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(lc_cuda, AutocastCUDA, m) {
  m.impl("local_conv2d",
         &local_conv2d_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
}

}  // namespace lc_cuda
