// What lc_cuda's backends provide for a checked Geometry (geometry.h): the unfold + bmm fallback,
// the CPU kernels and the CUDA kernels, and which of them a call takes.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

#include "geometry.h"

namespace lc_cuda {

// The unfold + batched-matmul fallback. It runs on any device ATen supports: every location's
// (or, where locations share weights, every region's) products in one bmm, with no loop over
// samples, the batch taken in blocks whose patches fit LC_CUDA_CPU_SCRATCH_MB. It takes every
// geometry. Outputs are new contiguous tensors.
at::Tensor unfold_forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const Geometry& g);
at::Tensor unfold_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                             const Geometry& g);
at::Tensor unfold_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                              const Geometry& g);

// The fallback's bias gradient: (C_out,) for a shared bias, else (C_out, *regions); ATen sums
// over the batch (and the locations, or each region's locations), in a fixed order.
at::Tensor unfold_grad_bias(const at::Tensor& grad_output, const Geometry& g, bool shared_bias);
// The three together, as the backward operator returns them: those output_mask leaves out are
// empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> unfold_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const Geometry& g, bool shared_bias, std::array<bool, 3> output_mask);

// The transposed op's bias, (C, *in) per output location or (C,) shared, added in place to its
// result (the forward op's grad_input).
void add_transpose_bias(at::Tensor& out, const std::optional<at::Tensor>& bias);

// The implementations a call can take (backend_choice.h chooses).
enum class Backend { kernels, ffma, unfold };

// The hand-written products the CPU kernels run, from worst to best (csrc/cpu/product_isa.cpp
// chooses one per call from the CPU and LC_CUDA_CPU_ISA). blas: none, a BLAS call per location;
// avx2: the AVX2+FMA kernels; avx512: the same kernels on AVX-512; avx512_bf16: avx512, with the
// bfloat16 products (forward and both gradients) by vdpbf16ps. The kernels take float32, and
// bfloat16 and float16 widened to float as they are loaded; float64 always takes the BLAS.
enum class ProductIsa { blas, avx2, avx512, avx512_bf16 };

// The CPU kernels (csrc/cpu/), for every geometry: blocked per-location products whose scratch
// stays within LC_CUDA_CPU_SCRATCH_MB. Tensors are viewed with three spatial dimensions (as_5d);
// outputs are new contiguous tensors in the caller's dimensions; inputs may have any strides.
// isa: the products to run (the caller checks that the CPU has them).
at::Tensor cpu_forward(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, const Geometry& geometry,
                       ProductIsa isa);
at::Tensor cpu_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                          const Geometry& geometry, ProductIsa isa);
at::Tensor cpu_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                           const Geometry& geometry, ProductIsa isa);
// (C_out,) for a shared bias, else (C_out, *regions): sums over the batch in sample order (in
// float for float16 and bfloat16), then bias_grad_from_sums; threads take pieces of channels.
at::Tensor cpu_grad_bias(const at::Tensor& grad_output, const Geometry& geometry,
                         bool shared_bias);
// The bias gradient, in dtype, from its sums over the batch per location (C_out, *output sizes):
// for a shared bias added over the locations (in double, rounded once), else over each weight
// region's locations, or as they are where no locations share.
at::Tensor bias_grad_from_sums(const at::Tensor& sums, const Geometry& geometry, bool shared_bias,
                               at::ScalarType dtype);
// grad_input, grad_weight and, where want_bias, the bias gradient in one pass over grad_output
// (csrc/cpu/backward_rows.cpp), the same to the bit as the three functions above; nullopt where
// the geometry, the dtype or the scratch budget does not allow it.
std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> cpu_backward_by_rows(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const Geometry& geometry, ProductIsa isa, bool want_bias, bool shared_bias);

// The hand-written CUDA kernels (csrc/cuda/, CUDA builds only), for every geometry. Tensors have
// the caller's spatial dimensions. Outputs are new contiguous tensors; inputs may have any
// strides. allow_tensor_cores: in float16 and bfloat16 every pass may take its tensor-core kernel
// (sm_80 and newer) instead of the FFMA one, and so may float32 where TF32 is allowed.
at::Tensor cuda_forward(const at::Tensor& input, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, const Geometry& geometry,
                        bool allow_tensor_cores);
at::Tensor cuda_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                           const Geometry& geometry, bool allow_tensor_cores);
// bias_sums: where given and the tensor-core kernel runs, it is set to grad_output summed over
// the batch per location, (C_out, locations) in float32, computed with grad_weight from the same
// read of grad_output; left undefined otherwise.
at::Tensor cuda_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                            const Geometry& geometry, bool allow_tensor_cores,
                            at::Tensor* bias_sums);

}  // namespace lc_cuda
