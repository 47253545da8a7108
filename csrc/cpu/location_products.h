// What the CPU passes do at one output location (pack its patches, the three products, scatter
// its patch gradients), each through the hand-written vector kernels of the call's ProductIsa
// (vector_kernels.h: float32, bfloat16 and float16 on AVX2 or AVX-512) or through the portable
// code and the BLAS (float64, and ProductIsa::blas). Layouts as in vector_kernels.h; the BLAS
// sees the same arrays as column-major matrices.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>

#include "cpu_gemm.h"
#include "patches.h"
#include "vector_kernels.h"

namespace lc_cuda {
namespace cpu {

// The element types the vector kernels take.
template <typename scalar_t>
constexpr bool kVectorType = std::is_same_v<scalar_t, float> ||
                             std::is_same_v<scalar_t, c10::BFloat16> ||
                             std::is_same_v<scalar_t, c10::Half>;

// The neighbouring locations (of one output row) the forward and grad_weight pack at once: each
// patch row's input lines, which a location's patches touch more of than the L1 holds (DeepFace
// L4: about 1700 lines, 8 samples x 144 rows), then serve the next locations from the L1 instead
// of coming from the L2 again for each. One process, a switch, 2 threads, against one at a time:
// forward DeepFace L4 0.93-0.95x (bfloat16 0.88-0.96x), mid_32x32_c64 0.95-1.00x (bfloat16
// 0.91-0.95x), YOLOv1 0.99x; grad_weight L4 0.83-0.98x (bfloat16 0.93x), mid 0.98-1.11x
// (bfloat16 0.95x). Two: L4's forward 0.93x; eight: no better than four.
constexpr int64_t kPackLocations = 4;

// The locations a pass packs at once in tiles of `tile`: kPackLocations, never more than the
// tile (the scratch budget may leave room for one location's patches alone); one where it reads
// the input in place instead of packing.
inline int64_t packed_locations(bool packs, int64_t tile) {
  return packs ? std::min(kPackLocations, tile) : 1;
}

// patches (samples x K) of `locations` locations of one group, location u's patch_rows at
// rows + u * patch_row_count and its patches at patches + u * samples * K, samples from `input`
// on.
template <typename scalar_t>
void pack_locations(ProductIsa isa, const scalar_t* input, const Strides5& s,
                    const PatchRow* rows, int64_t locations, const Geometry& g, int64_t samples,
                    scalar_t* patches) {
  if constexpr (kVectorType<scalar_t>) {
    if (column_step(g, s) == 1) {
      switch (isa) {
        case ProductIsa::avx512_bf16:
        case ProductIsa::avx512:
          return avx512::pack_patches(input, s.n, rows, locations, g, samples, patches);
        case ProductIsa::avx2:
          return avx2::pack_patches(input, s.n, rows, locations, g, samples, patches);
        case ProductIsa::blas:
          break;
      }
    }
  }
  pack_patches(input, s.n, column_step(g, s), rows, locations, g, samples, patches);
}

// grad_input (a contiguous block of samples) += the location's patch gradients.
template <typename acc_t, typename patch_t>
void scatter_location(ProductIsa isa, const patch_t* grad_patches, const PatchRow* rows,
                      const Geometry& g, int64_t samples, acc_t* grad_input) {
  if constexpr (std::is_same_v<acc_t, float> && std::is_same_v<patch_t, float>) {
    if (g.dilation_w == 1) {
      switch (isa) {
        case ProductIsa::avx512_bf16:
        case ProductIsa::avx512:
          return avx512::scatter_add_patches(grad_patches, rows, g, samples, grad_input);
        case ProductIsa::avx2:
          return avx2::scatter_add_patches(grad_patches, rows, g, samples, grad_input);
        case ProductIsa::blas:
          break;
      }
    }
  }
  scatter_add_patches(grad_patches, rows, g, samples, grad_input);
}

// The neighbouring locations whose patch gradients scatter_run adds at once on `isa`
// (vector_kernels.h: scatter_run_locations); 1 where it does not apply (then scatter_location).
inline int64_t scatter_run_length(ProductIsa isa, const Geometry& g) {
  switch (isa) {
    case ProductIsa::avx512_bf16:
    case ProductIsa::avx512:
      return avx512::scatter_run_length(g);
    case ProductIsa::avx2:
      return avx2::scatter_run_length(g);
    case ProductIsa::blas:
      break;
  }
  return 1;
}

// grad_input (a contiguous block of samples) += the patch gradients of `run` neighbouring
// locations of output row (z, i) from column j on, where scatter_run_length > 1 (vector_kernels.h:
// scatter_add_run; `dest`: the group's grad_input_row_destinations).
inline void scatter_run(ProductIsa isa, const float* grad_patches, const int64_t* dest,
                        const Geometry& g, int64_t j, int64_t run, int64_t samples,
                        float* grad_input) {
  switch (isa) {
    case ProductIsa::avx512_bf16:
    case ProductIsa::avx512:
      return avx512::scatter_add_run(grad_patches, dest, g, j, run, samples, grad_input);
    case ProductIsa::avx2:
      return avx2::scatter_add_run(grad_patches, dest, g, j, run, samples, grad_input);
    case ProductIsa::blas:
      break;
  }
  TORCH_INTERNAL_ASSERT(false, "the scatter of a run of locations needs the vector kernels");
}

// Whether float's per-location forward, and grad_weight without sharing, read the input in place
// (vector_kernels.h: forward_in_place_fits, against the scratch budget of `budget` bytes; the
// vector kernels). The forward of bfloat16: forward_reads_input_in_place.
template <typename scalar_t>
bool reads_input_in_place(ProductIsa isa, const Geometry& g, int64_t budget) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (isa != ProductIsa::blas)
      return forward_in_place_fits(g, isa == ProductIsa::avx2 ? 8 : 16, budget);
  }
  return false;
}

// Whether the per-location forward reads the input in place: float where
// reads_input_in_place, bfloat16 by vdpbf16ps where forward_pairs_in_place_fits.
template <typename scalar_t>
bool forward_reads_input_in_place(ProductIsa isa, const Geometry& g, const Strides5& s,
                                  int64_t budget) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>)
    return isa == ProductIsa::avx512_bf16 && forward_pairs_in_place_fits(g, s, budget);
  return reads_input_in_place<scalar_t>(isa, g, budget);
}

// The floats of scratch the forward in place transposes a channel group's filters into (its
// float filters_t, or bfloat16's pairs of columns, a word each).
template <typename scalar_t>
int64_t in_place_filter_floats(const Geometry& g) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) return in_place_pairs_scratch(g);
  return g.patch_size() * g.group_out_channels();
}

// vector_kernels.h's forward_in_place, where forward_reads_input_in_place<scalar_t>; filters_t
// holds in_place_filter_floats<scalar_t>.
template <typename scalar_t, typename opmath_t>
void location_forward_in_place(ProductIsa isa, int64_t out_channels, int64_t samples,
                               const scalar_t* input, const Strides5& s, const PatchRow* rows,
                               const Geometry& g, const scalar_t* filters, float* filters_t,
                               const scalar_t* next, opmath_t* out) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<opmath_t, float>) {
    if (isa == ProductIsa::avx512_bf16)
      return avx512_bf16::forward_in_place(out_channels, samples, input, s.n, rows, g, filters,
                                           reinterpret_cast<uint32_t*>(filters_t), next, out);
  }
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<opmath_t, float>) {
    switch (isa) {
      case ProductIsa::avx512_bf16:
      case ProductIsa::avx512:
        return avx512::forward_in_place(out_channels, samples, input, s.n, column_step(g, s),
                                        rows, g, filters, filters_t, next, out);
      case ProductIsa::avx2:
        return avx2::forward_in_place(out_channels, samples, input, s.n, column_step(g, s), rows,
                                      g, filters, filters_t, next, out);
      case ProductIsa::blas:
        break;
    }
  }
  TORCH_INTERNAL_ASSERT(false,
                        "the forward in place needs float on the vector kernels, or bfloat16 on "
                        "AVX512-BF16");
}

// vector_kernels.h's grad_filters_in_place, where reads_input_in_place<scalar_t>.
template <typename scalar_t, typename opmath_t>
void location_grad_filters_in_place(ProductIsa isa, int64_t out_channels, int64_t samples,
                                    const scalar_t* input, const Strides5& s,
                                    const PatchRow* rows, const Geometry& g,
                                    const scalar_t* grad_output, bool accumulate, float* sums_t,
                                    int64_t* columns, opmath_t* grad_filters, bool stream) {
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<opmath_t, float>) {
    switch (isa) {
      case ProductIsa::avx512_bf16:
      case ProductIsa::avx512:
        return avx512::grad_filters_in_place(out_channels, samples, input, s.n,
                                             column_step(g, s), rows, g, grad_output, accumulate,
                                             sums_t, columns, grad_filters, stream);
      case ProductIsa::avx2:
        return avx2::grad_filters_in_place(out_channels, samples, input, s.n, column_step(g, s),
                                           rows, g, grad_output, accumulate, sums_t, columns,
                                           grad_filters, stream);
      case ProductIsa::blas:
        break;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "grad_weight in place needs float and the vector kernels");
}

// avx512_bf16::pair_samples, where grad_weight_reads_pairs_in_place.
template <typename scalar_t>
void pair_samples(const scalar_t* input, int64_t sample_size, int64_t batch, int64_t first,
                  int64_t last, uint32_t* paired) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>)
    return avx512_bf16::pair_samples(input, sample_size, batch, first, last, paired);
  TORCH_INTERNAL_ASSERT(false, "the paired input needs bfloat16 on AVX512-BF16");
}

// avx512_bf16::grad_filters_in_place, where grad_weight_reads_pairs_in_place: pair n0 / 2's
// words at `paired` (sample block n0, even).
template <typename scalar_t, typename opmath_t>
void location_grad_filters_pairs_in_place(ProductIsa isa, int64_t out_channels, int64_t samples,
                                          const uint32_t* paired, const Strides5& s,
                                          const PatchRow* rows, const Geometry& g,
                                          const scalar_t* grad_output, bool accumulate,
                                          float* sums_t, int64_t* columns, uint32_t* go_pairs,
                                          opmath_t* grad_filters, scalar_t* rounded) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<opmath_t, float>) {
    if (isa == ProductIsa::avx512_bf16)
      return avx512_bf16::grad_filters_in_place(out_channels, samples, paired, s.n,
                                                column_step(g, s), rows, g, grad_output,
                                                accumulate, sums_t, columns, go_pairs,
                                                grad_filters, rounded);
  }
  TORCH_INTERNAL_ASSERT(false, "grad_weight in place by pairs needs bfloat16 on AVX512-BF16");
}

// vector_kernels.h's write_tile, where the element type and the ISA have vector kernels.
template <typename scalar_t, typename opmath_t>
void write_tile(ProductIsa isa, const opmath_t* staged, int64_t staged_stride, int64_t width,
                const Geometry& g, int64_t samples, const float* bias_rows, int64_t bias_stride,
                scalar_t* out, int64_t locations) {
  if constexpr (kVectorType<scalar_t> && std::is_same_v<opmath_t, float>) {
    switch (isa) {
      case ProductIsa::avx512_bf16:
      case ProductIsa::avx512:
        return avx512::write_tile(staged, staged_stride, width, g, samples, bias_rows,
                                  bias_stride, out, locations);
      case ProductIsa::avx2:
        return avx2::write_tile(staged, staged_stride, width, g, samples, bias_rows, bias_stride,
                                out, locations);
      case ProductIsa::blas:
        break;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "write_tile needs the vector kernels");
}

// Whether the forward goes by row tiles (forward_row_run): a vector ISA, an element type it
// takes, and a geometry that fits (row_tiles_fit).
template <typename scalar_t>
bool forward_by_row_tiles(ProductIsa isa, const Geometry& g, const Strides5& s) {
  return kVectorType<scalar_t> && isa != ProductIsa::blas && row_tiles_fit(g, s);
}

// The most filters the forward of a row run takes at once on a vector ISA (vector_kernels.h).
inline int64_t row_tile_filters(ProductIsa isa) {
  return isa == ProductIsa::avx2 ? avx2::row_tile_filters() : avx512::row_tile_filters();
}

// The forward of a row run (vector_kernels.h), where forward_by_row_tiles.
template <typename scalar_t>
void forward_row_run(ProductIsa isa, const scalar_t* input, const Strides5& s,
                     const Geometry& g, int64_t z, int64_t i, int64_t j0, int64_t width,
                     int64_t samples, const scalar_t* weight, const scalar_t* bias,
                     bool shared_bias, scalar_t* out, float* scratch) {
  if constexpr (kVectorType<scalar_t>) {
    switch (isa) {
      case ProductIsa::avx512_bf16:
        if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
          if (pair_row_tiles_fit(g, s))
            return avx512::forward_pair_row_run(input, s, g, z, i, j0, width, samples, weight,
                                                bias, shared_bias, out, scratch);
        }
        [[fallthrough]];
      case ProductIsa::avx512:
        return avx512::forward_row_run(input, s, g, z, i, j0, width, samples, weight, bias,
                                       shared_bias, out, scratch);
      case ProductIsa::avx2:
        return avx2::forward_row_run(input, s, g, z, i, j0, width, samples, weight, bias,
                                     shared_bias, out, scratch);
      case ProductIsa::blas:
        break;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "the forward by row tiles needs the vector kernels");
}

// Whether grad_input goes by output rows (grad_input_row): a vector ISA, an element type it
// takes, and a geometry that fits (backward_rows_fit).
template <typename scalar_t>
bool backward_by_rows(ProductIsa isa, const Geometry& g) {
  return kVectorType<scalar_t> && isa != ProductIsa::blas && backward_rows_fit(g);
}

// Whether grad_weight of bfloat16 reads the input in place by pairs of samples (vdpbf16ps on
// AVX512-BF16, where grad_weight_pairs_in_place_fits; never where it may go by row tiles).
template <typename scalar_t>
bool grad_weight_reads_pairs_in_place(ProductIsa isa, const Geometry& g, const Strides5& s,
                                      bool dense, int64_t budget) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    const bool row_tiles = backward_by_rows<scalar_t>(isa, g) && row_tiles_fit(g, s);
    return isa == ProductIsa::avx512_bf16 &&
           grad_weight_pairs_in_place_fits(g, s, dense, row_tiles, budget);
  }
  return false;
}

// grad_input_row (vector_kernels.h), where backward_by_rows.
template <typename scalar_t>
void grad_input_row(ProductIsa isa, const scalar_t* grad_output, const Strides5& go_s,
                    const Geometry& g, int64_t z, int64_t i, int64_t group, int64_t samples,
                    const scalar_t* weight, float* grad_input, float* scratch, int64_t* dest) {
  if constexpr (kVectorType<scalar_t>) {
    switch (isa) {
      case ProductIsa::avx512_bf16:
      case ProductIsa::avx512:
        return avx512::grad_input_row(grad_output, go_s, g, z, i, group, samples, weight,
                                      grad_input, scratch, dest);
      case ProductIsa::avx2:
        return avx2::grad_input_row(grad_output, go_s, g, z, i, group, samples, weight,
                                    grad_input, scratch, dest);
      case ProductIsa::blas:
        break;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "grad_input by rows needs the vector kernels");
}

// Whether grad_weight goes by row tiles (grad_weight_row_tile): as backward_by_rows, without
// sharing, with contiguous input rows, where the pass's tiles are whole (kRowTileLocations, or
// the output row where it is shorter).
template <typename scalar_t>
bool grad_weight_by_row_tiles(ProductIsa isa, const Geometry& g, const Strides5& s,
                              int64_t tile) {
  return backward_by_rows<scalar_t>(isa, g) && row_tiles_fit(g, s) && !g.shares_weights() &&
         tile == std::min(kRowTileLocations, g.out_w);
}

// grad_weight_row_tile (vector_kernels.h), where grad_weight_by_row_tiles.
template <typename scalar_t>
void grad_weight_row_tile(ProductIsa isa, const scalar_t* input, const Strides5& s,
                          const scalar_t* grad_output, const Strides5& go_s, const Geometry& g,
                          int64_t z, int64_t i, int64_t j0, int64_t width, int64_t samples,
                          bool accumulate, float* sums, float* scratch) {
  if constexpr (kVectorType<scalar_t>) {
    switch (isa) {
      case ProductIsa::avx512_bf16:
      case ProductIsa::avx512:
        return avx512::grad_weight_row_tile(input, s, grad_output, go_s, g, z, i, j0, width,
                                            samples, accumulate, sums, scratch);
      case ProductIsa::avx2:
        return avx2::grad_weight_row_tile(input, s, grad_output, go_s, g, z, i, j0, width,
                                          samples, accumulate, sums, scratch);
      case ProductIsa::blas:
        break;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "grad_weight by row tiles needs the vector kernels");
}

// grad_weight_row_banks (vector_kernels.h), where grad_weight_by_row_tiles.
template <typename scalar_t>
void grad_weight_row_banks(ProductIsa isa, const float* sums, const Geometry& g, int64_t width,
                           scalar_t* banks) {
  if constexpr (kVectorType<scalar_t>) {
    switch (isa) {
      case ProductIsa::avx512_bf16:
      case ProductIsa::avx512:
        return avx512::grad_weight_row_banks(sums, g, width, banks);
      case ProductIsa::avx2:
        return avx2::grad_weight_row_banks(sums, g, width, banks);
      case ProductIsa::blas:
        break;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "grad_weight by row tiles needs the vector kernels");
}

// Whether the backward goes by backward_row (vector_kernels.h): as grad_input_row and
// grad_weight_row_tile together, where one chunk covers an input row.
template <typename scalar_t>
bool backward_by_one_row(ProductIsa isa, const Geometry& g, const Strides5& s) {
  return backward_by_rows<scalar_t>(isa, g) && backward_row_fits(g, s);
}

// backward_row (vector_kernels.h), where backward_by_one_row.
template <typename scalar_t>
void backward_row(ProductIsa isa, const scalar_t* grad_output, const Strides5& go_s,
                  const scalar_t* input, const Strides5& s, const Geometry& g, int64_t z,
                  int64_t i, int64_t rows, const scalar_t* weight, float* grad_input,
                  float* weight_sums, float* bias_sums, float* scratch, int64_t* dest) {
  if constexpr (kVectorType<scalar_t>) {
    switch (isa) {
      case ProductIsa::avx512_bf16:
      case ProductIsa::avx512:
        return avx512::backward_row(grad_output, go_s, input, s, g, z, i, rows, weight,
                                    grad_input, weight_sums, bias_sums, scratch, dest);
      case ProductIsa::avx2:
        return avx2::backward_row(grad_output, go_s, input, s, g, z, i, rows, weight,
                                  grad_input, weight_sums, bias_sums, scratch, dest);
      case ProductIsa::blas:
        break;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "the backward by rows needs the vector kernels");
}

// out (samples x C_out, row n at n*C_out) = patches * filters^T
template <typename scalar_t, typename opmath_t>
void location_forward(ProductIsa isa, int64_t out_channels, int64_t samples, int64_t patch_size,
                      const scalar_t* filters, const scalar_t* patches, opmath_t* out) {
  if constexpr (kVectorType<scalar_t>) {
    switch (isa) {
      case ProductIsa::avx512_bf16:
        if constexpr (std::is_same_v<scalar_t, c10::BFloat16>)
          return avx512_bf16::forward(out_channels, samples, patch_size, filters, patches, out);
        [[fallthrough]];
      case ProductIsa::avx512:
        return avx512::forward(out_channels, samples, patch_size, filters, patches, out);
      case ProductIsa::avx2:
        return avx2::forward(out_channels, samples, patch_size, filters, patches, out);
      case ProductIsa::blas:
        break;
    }
  }
  // column-major: out (C_out x samples) = filters^T(K x C_out)^T * patches (K x samples)
  gemm(/*transpose_a=*/true, /*transpose_b=*/false, out_channels, samples, patch_size, filters,
       patch_size, patches, patch_size, /*accumulate=*/false, out, out_channels);
}

// grad_patches (samples x K) = grad_output (samples x C_out) * filters; the vector kernels fetch
// the heads of `next`'s rows (the next product's filters, or null) into the L2 meanwhile.
template <typename scalar_t, typename opmath_t>
void location_grad_patches(ProductIsa isa, int64_t out_channels, int64_t samples,
                           int64_t patch_size, const scalar_t* filters,
                           const scalar_t* grad_output, const scalar_t* next,
                           opmath_t* grad_patches) {
  if constexpr (kVectorType<scalar_t>) {
    switch (isa) {
      case ProductIsa::avx512_bf16:
        if constexpr (std::is_same_v<scalar_t, c10::BFloat16>)
          return avx512_bf16::grad_patches(out_channels, samples, patch_size, filters,
                                           grad_output, next, grad_patches);
        [[fallthrough]];
      case ProductIsa::avx512:
        return avx512::grad_patches(out_channels, samples, patch_size, filters, grad_output,
                                    next, grad_patches);
      case ProductIsa::avx2:
        return avx2::grad_patches(out_channels, samples, patch_size, filters, grad_output,
                                  next, grad_patches);
      case ProductIsa::blas:
        break;
    }
  }
  // column-major: grad_patches (K x samples) = filters (K x C_out) * grad_output (C_out x samples)
  gemm(/*transpose_a=*/false, /*transpose_b=*/false, patch_size, samples, out_channels, filters,
       patch_size, grad_output, out_channels, /*accumulate=*/false, grad_patches, patch_size);
}

// grad_filters (C_out x K) (+)= grad_output^T (C_out x samples) * patches (samples x K); where
// `rounded` is given (float16 and bfloat16, the last sample block), the sums go there instead,
// rounded to scalar_t. `stream`: the sums are final (vector_kernels.h's grad_filters: the float
// banks of the vector kernels, the rounded ones of avx512_bf16's).
template <typename scalar_t, typename opmath_t>
void location_grad_filters(ProductIsa isa, int64_t out_channels, int64_t samples,
                           int64_t patch_size, const scalar_t* patches,
                           const scalar_t* grad_output, bool accumulate, opmath_t* grad_filters,
                           scalar_t* rounded, bool stream) {
  if constexpr (kVectorType<scalar_t>) {
    switch (isa) {
      case ProductIsa::avx512_bf16:
        if constexpr (std::is_same_v<scalar_t, c10::BFloat16>)
          return avx512_bf16::grad_filters(out_channels, samples, patch_size, patches,
                                           grad_output, accumulate, grad_filters, rounded,
                                           stream);
        [[fallthrough]];
      case ProductIsa::avx512:
        return avx512::grad_filters(out_channels, samples, patch_size, patches, grad_output,
                                    accumulate, grad_filters, rounded, stream);
      case ProductIsa::avx2:
        return avx2::grad_filters(out_channels, samples, patch_size, patches, grad_output,
                                  accumulate, grad_filters, rounded, stream);
      case ProductIsa::blas:
        break;
    }
  }
  // column-major: grad_filters (K x C_out) (+)= patches (K x samples) * grad_output^T
  gemm(/*transpose_a=*/false, /*transpose_b=*/true, patch_size, out_channels, samples, patches,
       patch_size, grad_output, out_channels, accumulate, grad_filters, patch_size);
  if (rounded != nullptr)
    std::copy(grad_filters, grad_filters + out_channels * patch_size, rounded);
}

}  // namespace cpu
}  // namespace lc_cuda
