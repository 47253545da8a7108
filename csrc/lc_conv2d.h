// Shared declarations of lc_cuda's operators: the validated geometry of one call, the argument
// checks every backend runs first, and the unfold + bmm fallback.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace lc_cuda {

// Every size of one local_conv2d call, after check_forward_args / check_backward_args has
// checked the tensors against each other.
struct Geometry {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, out_h, out_w, kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;

  int64_t locations() const { return out_h * out_w; }
  int64_t patch_size() const { return in_channels * kernel_h * kernel_w; }
};

Geometry check_forward_args(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation);

Geometry check_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& weight, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation);

// The unfold + batched-matmul fallback. It runs on any device ATen supports, with the output
// locations as the bmm batch and no loop over samples.
at::Tensor unfold_forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const Geometry& geometry);

// Outputs not selected by output_mask are returned as empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> unfold_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const Geometry& geometry, bool shared_bias, std::array<bool, 3> output_mask);

// Which implementation a call takes: LC_CUDA_BACKEND, read at every call, so that setting the
// variable in a running process takes effect. auto (or unset): the kernels of the device (the CPU
// kernels, or the CUDA kernels where the build has them); ffma: on CUDA, the kernels without
// tensor cores, on the CPU the CPU kernels without the AVX-512 products (a BLAS call per
// location, as on CPUs without AVX-512); unfold: the fallback. force_unfold (set by
// unfold_local_conv2d) selects the fallback whatever the variable says.
enum class Backend { kernels, ffma, unfold };
Backend backend(bool force_unfold);

// The CPU kernels (csrc/cpu/): blocked per-location products whose scratch stays within
// LC_CUDA_CPU_SCRATCH_MB. Outputs are new contiguous tensors; inputs may have any strides.
// hand_written: float32 products go through the AVX-512 kernels (the caller checks that the CPU
// has AVX-512); otherwise every product is a BLAS call.
at::Tensor cpu_forward(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, const Geometry& geometry,
                       bool hand_written);
at::Tensor cpu_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                          const Geometry& geometry, bool hand_written);
at::Tensor cpu_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                           const Geometry& geometry, bool hand_written);
// (C_out,) for a shared bias, (C_out, OH, OW) otherwise.
at::Tensor cpu_grad_bias(const at::Tensor& grad_output, const Geometry& geometry,
                         bool shared_bias);

// The hand-written CUDA kernels (csrc/cuda/, CUDA builds only). Outputs are new contiguous
// tensors; inputs may have any strides. allow_tensor_cores: in float16 and bfloat16 every pass
// may take its tensor-core kernel (sm_80 and newer) instead of the FFMA one, and so may the
// float32 forward where TF32 is allowed.
at::Tensor cuda_forward(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, const Geometry& geometry,
                        bool allow_tensor_cores);
at::Tensor cuda_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                           const Geometry& geometry, bool allow_tensor_cores);
// bias_sums: where given and the tensor-core kernel runs, it is set to the per-location bias
// gradient, (C_out, OH, OW) in float32, computed with grad_weight from the same read of
// grad_output; left undefined otherwise.
at::Tensor cuda_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                            const Geometry& geometry, bool allow_tensor_cores,
                            at::Tensor* bias_sums);

}  // namespace lc_cuda
