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

// Whether this CPU (and its operating system) runs AVX-512F and FMA code. Checked once.
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

// The largest patch (K) the forward computes by row tiles (avx512_forward_row_tile) instead of
// per location: below it a location's dot products are too short to pay for their lane
// reductions (cunn232_c1: K = 9).
constexpr int64_t kRowTilePatchLimit = 64;

// Whether avx512_forward_row_tile applies: neighbouring output columns read neighbouring input
// elements (stride_w 1, input rows contiguous) and the patch is short.
inline bool forward_by_row_tiles(const Geometry& g, const Strides4& s) {
  return g.stride_w == 1 && s.w == 1 && g.patch_size() <= kRowTilePatchLimit;
}

// The floats of scratch avx512_forward_row_tile takes.
inline int64_t row_tile_scratch(const Geometry& g) { return 16 * g.out_channels * g.patch_size(); }

// The forward of up to 16 neighbouring locations (i, j0 + t), t < width, of one output row, for
// `samples` samples, vectorised over the locations: out[n, o, i, j0 + t] = sum_k
// filters[t][o][k] * patch(n, i, j0 + t)[k] + bias, each output run written whole. `filters` is
// the weight of location (i, j0) on (the tile's are contiguous), `input` and `out` start at the
// tile's first sample, `out` is contiguous NCHW; bias as the op takes it (null, (C_out,) when
// shared_bias, else (C_out, OH, OW)). `scratch` holds row_tile_scratch(g) floats.
void avx512_forward_row_tile(const float* input, const Strides4& s, const Geometry& g, int64_t i,
                             int64_t j0, int64_t width, int64_t samples, const float* filters,
                             const float* bias, bool shared_bias, float* out, float* scratch);

// pack_patches where neighbouring kernel columns read neighbouring input elements
// (column_step == 1): each patch row is one masked load and store per 16 columns.
void avx512_pack_patches(const float* input, int64_t sample_stride, const PatchRow* rows,
                         const Geometry& g, int64_t samples, float* patches);

// scatter_add_patches where dilation_w == 1.
void avx512_scatter_add_patches(const float* grad_patches, const PatchRow* rows,
                                const Geometry& g, int64_t samples, float* grad_input);

}  // namespace cpu
}  // namespace lc_cuda
