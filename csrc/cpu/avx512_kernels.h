// Hand-written AVX-512 products of one output location, in float32: the three GEMMs of the CPU
// kernels without a BLAS call per location. At the batches a locally-connected layer meets
// (a few to a few hundred samples per location, C_out of 16-256) these are skinny products whose
// cost is reading the location's filters once; a BLAS call spends more on its own packing and
// dispatch than on that (measured in benchmarks/NOTES.md). Every product sums in an order fixed
// by its sizes alone, so the results do not depend on the thread count.
//
// Layouts, for one location: filters (C_out x K, row o at o*K), patches (samples x K, row n at
// n*K), grad_output and the output staged as (samples x C_out, row n at n*C_out),
// K = C_in*KH*KW.
#pragma once

#include <cstdint>

#include "patches.h"

namespace lc_cuda {
namespace cpu {

// Whether this CPU (and its operating system) runs AVX-512F code. Checked once.
bool cpu_has_avx512();

// out[n*C_out + o] = sum_k patches[n*K + k] * filters[o*K + k]
void avx512_forward(int64_t out_channels, int64_t samples, int64_t patch_size,
                    const float* filters, const float* patches, float* out);

// grad_patches[n*K + k] = sum_o grad_output[n*C_out + o] * filters[o*K + k]
void avx512_grad_patches(int64_t out_channels, int64_t samples, int64_t patch_size,
                         const float* filters, const float* grad_output, float* grad_patches);

// grad_filters[o*K + k] = (accumulate ? grad_filters[o*K + k] : 0)
//                         + sum_n grad_output[n*C_out + o] * patches[n*K + k]
void avx512_grad_filters(int64_t out_channels, int64_t samples, int64_t patch_size,
                         const float* patches, const float* grad_output, bool accumulate,
                         float* grad_filters);

// pack_patches where neighbouring kernel columns read neighbouring input elements
// (column_step == 1): each patch row is one masked load and store per 16 columns.
void avx512_pack_patches(const float* input, int64_t sample_stride, const PatchRow* rows,
                         const Geometry& g, int64_t samples, float* patches);

// scatter_add_patches where dilation_w == 1.
void avx512_scatter_add_patches(const float* grad_patches, const PatchRow* rows,
                                const Geometry& g, int64_t samples, float* grad_input);

}  // namespace cpu
}  // namespace lc_cuda
