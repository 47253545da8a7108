// What the CPU passes do at one output location (pack its patches, the three products, scatter
// its patch gradients), each through the hand-written AVX-512 kernels (float32, where the CPU
// has AVX-512 and the caller allows them) or through the portable code and the BLAS (every other
// case). Layouts as in avx512_kernels.h; the BLAS sees the same arrays as column-major matrices.
#pragma once

#include <c10/util/Exception.h>

#include "avx512_kernels.h"
#include "cpu_gemm.h"
#include "patches.h"

namespace lc_cuda {
namespace cpu {

// patches (samples x K) of the location whose patch_rows are `rows`, samples from `input` on.
template <typename scalar_t>
void pack_location(bool, const scalar_t* input, const Strides4& s, const PatchRow* rows,
                   const Geometry& g, int64_t samples, scalar_t* patches) {
  pack_patches(input, s.n, column_step(g, s), rows, g, samples, patches);
}
inline void pack_location(bool hand_written, const float* input, const Strides4& s,
                          const PatchRow* rows, const Geometry& g, int64_t samples,
                          float* patches) {
  if (hand_written && column_step(g, s) == 1)
    return avx512_pack_patches(input, s.n, rows, g, samples, patches);
  pack_patches(input, s.n, column_step(g, s), rows, g, samples, patches);
}

// grad_input (a contiguous block of samples) += the location's patch gradients.
template <typename acc_t, typename patch_t>
void scatter_location(bool, const patch_t* grad_patches, const PatchRow* rows, const Geometry& g,
                      int64_t samples, acc_t* grad_input) {
  scatter_add_patches(grad_patches, rows, g, samples, grad_input);
}
inline void scatter_location(bool hand_written, const float* grad_patches, const PatchRow* rows,
                             const Geometry& g, int64_t samples, float* grad_input) {
  if (hand_written && g.dilation_w == 1)
    return avx512_scatter_add_patches(grad_patches, rows, g, samples, grad_input);
  scatter_add_patches(grad_patches, rows, g, samples, grad_input);
}

// avx512_forward_row_tile, which only float32 takes: callers choose row tiles only for float32.
template <typename scalar_t>
void forward_row_tile(const scalar_t*, const Strides4&, const Geometry&, int64_t, int64_t,
                      int64_t, int64_t, const scalar_t*, const scalar_t*, bool, scalar_t*,
                      float*) {
  TORCH_INTERNAL_ASSERT(false, "the forward by row tiles is float32 only");
}
inline void forward_row_tile(const float* input, const Strides4& s, const Geometry& g, int64_t i,
                             int64_t j0, int64_t width, int64_t samples, const float* filters,
                             const float* bias, bool shared_bias, float* out, float* scratch) {
  avx512_forward_row_tile(input, s, g, i, j0, width, samples, filters, bias, shared_bias, out,
                          scratch);
}

// out (samples x C_out, row n at n*C_out) = patches * filters^T
template <typename scalar_t, typename opmath_t>
void location_forward(bool, int64_t out_channels, int64_t samples, int64_t patch_size,
                      const scalar_t* filters, const scalar_t* patches, opmath_t* out) {
  // column-major: out (C_out x samples) = filters^T(K x C_out)^T * patches (K x samples)
  gemm(/*transpose_a=*/true, /*transpose_b=*/false, out_channels, samples, patch_size, filters,
       patch_size, patches, patch_size, /*accumulate=*/false, out, out_channels);
}
inline void location_forward(bool hand_written, int64_t out_channels, int64_t samples,
                             int64_t patch_size, const float* filters, const float* patches,
                             float* out) {
  if (hand_written) return avx512_forward(out_channels, samples, patch_size, filters, patches, out);
  location_forward<float, float>(false, out_channels, samples, patch_size, filters, patches, out);
}

// grad_patches (samples x K) = grad_output (samples x C_out) * filters
template <typename scalar_t, typename opmath_t>
void location_grad_patches(bool, int64_t out_channels, int64_t samples, int64_t patch_size,
                           const scalar_t* filters, const scalar_t* grad_output,
                           opmath_t* grad_patches) {
  // column-major: grad_patches (K x samples) = filters (K x C_out) * grad_output (C_out x samples)
  gemm(/*transpose_a=*/false, /*transpose_b=*/false, patch_size, samples, out_channels, filters,
       patch_size, grad_output, out_channels, /*accumulate=*/false, grad_patches, patch_size);
}
inline void location_grad_patches(bool hand_written, int64_t out_channels, int64_t samples,
                                  int64_t patch_size, const float* filters,
                                  const float* grad_output, float* grad_patches) {
  if (hand_written)
    return avx512_grad_patches(out_channels, samples, patch_size, filters, grad_output,
                               grad_patches);
  location_grad_patches<float, float>(false, out_channels, samples, patch_size, filters,
                                      grad_output, grad_patches);
}

// grad_filters (C_out x K) (+)= grad_output^T (C_out x samples) * patches (samples x K)
template <typename scalar_t, typename opmath_t>
void location_grad_filters(bool, int64_t out_channels, int64_t samples, int64_t patch_size,
                           const scalar_t* patches, const scalar_t* grad_output, bool accumulate,
                           opmath_t* grad_filters) {
  // column-major: grad_filters (K x C_out) (+)= patches (K x samples) * grad_output^T
  gemm(/*transpose_a=*/false, /*transpose_b=*/true, patch_size, out_channels, samples, patches,
       patch_size, grad_output, out_channels, accumulate, grad_filters, patch_size);
}
inline void location_grad_filters(bool hand_written, int64_t out_channels, int64_t samples,
                                  int64_t patch_size, const float* patches,
                                  const float* grad_output, bool accumulate,
                                  float* grad_filters) {
  if (hand_written)
    return avx512_grad_filters(out_channels, samples, patch_size, patches, grad_output,
                               accumulate, grad_filters);
  location_grad_filters<float, float>(false, out_channels, samples, patch_size, patches,
                                      grad_output, accumulate, grad_filters);
}

}  // namespace cpu
}  // namespace lc_cuda
