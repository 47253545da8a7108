// The AVX-512 location products. Compiled for AVX-512F by function attribute, not by a global
// flag, so that the library still loads on any x86-64 CPU; callers check cpu_has_avx512() first.
//
// Each product is a register-blocked micro-kernel, templated on its block sizes so that the
// accumulators stay in zmm registers, and a driver that cuts the location into blocks:
// - forward: dot products along K (both operands are K-contiguous), 4 filters x up to 6 samples,
//   each accumulator reduced across its lanes once at the end;
// - grad_patches: 64 columns of K x up to 6 samples, a broadcast of grad_output times a row of
//   filters per output channel;
// - grad_filters: 64 columns of K x up to 6 filters, a broadcast of grad_output times a row of
//   patches per sample.
// The last vector of a row of K is loaded and stored under a mask, so nothing is read or
// written past a row.
#include "avx512_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>

#define LC_AVX512 __attribute__((target("avx512f,fma")))

namespace lc_cuda {
namespace cpu {
namespace {

constexpr int kLanes = 16;
constexpr int kMaxBlock = 6;  // filters or samples per block: 6 x 4 accumulators + operands fit
constexpr int kChunkVectors = 4;
constexpr int64_t kChunk = kChunkVectors * kLanes;  // columns of K per grad block
constexpr int64_t kSampleGroup = 4;  // samples packed or scattered together
// Forward blocks: kForwardFilters x kForwardSamples accumulators.
constexpr int kForwardFilters = 4;
constexpr int kForwardSamples = 6;
// The forward streams its filters from memory once, one block of rows at a time; it prefetches
// them into L2 this many rows ahead (measured best of 4, 8, 16 rows and L1 or L2, DeepFace L4).
constexpr int64_t kForwardAheadRows = 8;

// The lanes of the last vector of a run of `count` columns (all 16 for a full vector).
inline __mmask16 tail_mask(int64_t count) {
  return count >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1);
}

// Splits `total` into ceil(total / most) blocks of near-equal size: block b starts at first(b)
// and holds size(b) rows, so that no block is left with one or two rows.
struct EvenBlocks {
  int64_t count, base, larger;
  EvenBlocks(int64_t total, int64_t most)
      : count((total + most - 1) / most),
        base(total / count),
        larger(total % count) {}
  int64_t first(int64_t b) const { return b * base + std::min(b, larger); }
  int64_t size(int64_t b) const { return base + (b < larger ? 1 : 0); }
};

// The sums of the 16 lanes of each of a, b, c and d, in that order: 13 instructions for the four
// (a lane reduction each would take about 8), which matters where K is short (cunn232_c1: K = 9,
// one FMA per dot product).
LC_AVX512 inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  // Within each 128-bit lane: x = (a0+a2, b0+b2, a1+a3, b1+b3), y the same for c and d.
  const __m512 x = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 y = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  // Within each 128-bit lane: (sum of a's four, b's, c's, d's).
  const __m512 z = _mm512_add_ps(
      _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x), _mm512_castps_pd(y))),
      _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x), _mm512_castps_pd(y))));
  // Add the four 128-bit lanes.
  const __m256 halves = _mm256_add_ps(
      _mm512_castps512_ps256(z),
      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(halves), _mm256_extractf128_ps(halves, 1));
}

// ---- forward: FB filters x SB samples of dot products along K ----
template <int FB, int SB>
LC_AVX512 void forward_block(int64_t out_channels, int64_t patch_size, const float* filters,
                             const float* patches, float* out) {
  __m512 acc[FB][SB];
#pragma GCC unroll 6
  for (int f = 0; f < FB; ++f)
#pragma GCC unroll 6
    for (int s = 0; s < SB; ++s) acc[f][s] = _mm512_setzero_ps();
  for (int64_t k = 0; k < patch_size; k += kLanes) {
    const __mmask16 mask = tail_mask(patch_size - k);
    __m512 w[FB];
#pragma GCC unroll 6
    for (int f = 0; f < FB; ++f) {
      // (A prefetch past the end of the filters is harmless.)
      _mm_prefetch(
          reinterpret_cast<const char*>(filters + (f + kForwardAheadRows) * patch_size + k),
          _MM_HINT_T1);
      w[f] = _mm512_maskz_loadu_ps(mask, filters + f * patch_size + k);
    }
#pragma GCC unroll 6
    for (int s = 0; s < SB; ++s) {
      const __m512 p = _mm512_maskz_loadu_ps(mask, patches + s * patch_size + k);
#pragma GCC unroll 6
      for (int f = 0; f < FB; ++f) acc[f][s] = _mm512_fmadd_ps(w[f], p, acc[f][s]);
    }
  }
  if constexpr (FB == 4) {
#pragma GCC unroll 6
    for (int s = 0; s < SB; ++s)
      _mm_storeu_ps(out + s * out_channels, reduce4(acc[0][s], acc[1][s], acc[2][s], acc[3][s]));
  } else {
#pragma GCC unroll 6
    for (int f = 0; f < FB; ++f)
#pragma GCC unroll 6
      for (int s = 0; s < SB; ++s) out[s * out_channels + f] = _mm512_reduce_add_ps(acc[f][s]);
  }
}

// The CV vectors of a chunk of K starting at `row`, the last one under the mask `last`.
template <int CV>
LC_AVX512 inline void load_chunk(const float* row, __mmask16 last, __m512 (&to)[CV]) {
#pragma GCC unroll 4
  for (int v = 0; v < CV; ++v)
    to[v] = v == CV - 1 ? _mm512_maskz_loadu_ps(last, row + v * kLanes)
                        : _mm512_loadu_ps(row + v * kLanes);
}

// Stores the CV vectors of a chunk of K at `row`, the last one under the mask `last`.
template <int CV>
LC_AVX512 inline void store_chunk(float* row, __mmask16 last, const __m512 (&from)[CV]) {
#pragma GCC unroll 4
  for (int v = 0; v < CV; ++v) {
    if (v == CV - 1)
      _mm512_mask_storeu_ps(row + v * kLanes, last, from[v]);
    else
      _mm512_storeu_ps(row + v * kLanes, from[v]);
  }
}

// ---- grad_patches: SB samples x CV vectors of K, summed over the output channels ----
template <int SB, int CV>
LC_AVX512 void grad_patches_block(int64_t out_channels, int64_t patch_size, __mmask16 last,
                                  const float* filters, const float* grad_output,
                                  float* grad_patches, bool prefetch) {
  __m512 acc[SB][CV];
#pragma GCC unroll 6
  for (int s = 0; s < SB; ++s)
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) acc[s][v] = _mm512_setzero_ps();
  for (int64_t o = 0; o < out_channels; ++o) {
    const float* row = filters + o * patch_size;
    // The filters stream from memory once, one chunk of every row at a time: fetch this row's
    // chunk after next into L2 while this one is used (measured best of 1, 2 and 4 chunks ahead,
    // into L1 or L2; a prefetch past the row's end is harmless).
    if (prefetch) {
#pragma GCC unroll 4
      for (int v = 0; v < kChunkVectors; ++v)
        _mm_prefetch(reinterpret_cast<const char*>(row + 2 * kChunk + v * kLanes), _MM_HINT_T1);
    }
    __m512 w[CV];
    load_chunk(row, last, w);
#pragma GCC unroll 6
    for (int s = 0; s < SB; ++s) {
      const __m512 g = _mm512_set1_ps(grad_output[s * out_channels + o]);
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) acc[s][v] = _mm512_fmadd_ps(g, w[v], acc[s][v]);
    }
  }
#pragma GCC unroll 6
  for (int s = 0; s < SB; ++s) store_chunk(grad_patches + s * patch_size, last, acc[s]);
}

// ---- grad_filters: FB filters x CV vectors of K, summed over the samples ----
template <int FB, int CV>
LC_AVX512 void grad_filters_block(int64_t out_channels, int64_t samples, int64_t patch_size,
                                  __mmask16 last, const float* patches, const float* grad_output,
                                  bool accumulate, float* grad_filters) {
  __m512 acc[FB][CV];
#pragma GCC unroll 6
  for (int f = 0; f < FB; ++f) {
    if (accumulate) {
      load_chunk(grad_filters + f * patch_size, last, acc[f]);
    } else {
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) acc[f][v] = _mm512_setzero_ps();
    }
  }
  for (int64_t s = 0; s < samples; ++s) {
    __m512 p[CV];
    load_chunk(patches + s * patch_size, last, p);
#pragma GCC unroll 6
    for (int f = 0; f < FB; ++f) {
      const __m512 g = _mm512_set1_ps(grad_output[s * out_channels + f]);
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) acc[f][v] = _mm512_fmadd_ps(g, p[v], acc[f][v]);
    }
  }
#pragma GCC unroll 6
  for (int f = 0; f < FB; ++f) store_chunk(grad_filters + f * patch_size, last, acc[f]);
}

// Tables of the instantiations, indexed [rows - 1][second size - 1].
template <typename Fn, template <int> class Pick, int... Rows, int... Cols>
constexpr auto make_table(std::integer_sequence<int, Rows...>,
                          std::integer_sequence<int, Cols...>) {
  return std::array<std::array<Fn, sizeof...(Cols)>, sizeof...(Rows)>{
      Pick<Rows + 1>::template row<(Cols + 1)...>()...};
}

using ForwardFn = void (*)(int64_t, int64_t, const float*, const float*, float*);
using GradPatchesFn = void (*)(int64_t, int64_t, __mmask16, const float*, const float*, float*,
                               bool);
using GradFiltersFn = void (*)(int64_t, int64_t, int64_t, __mmask16, const float*, const float*,
                               bool, float*);

template <int Rows>
struct PickForward {
  template <int... Cols>
  static constexpr std::array<ForwardFn, sizeof...(Cols)> row() {
    return {&forward_block<Rows, Cols>...};
  }
};
template <int Rows>
struct PickGradPatches {
  template <int... Cols>
  static constexpr std::array<GradPatchesFn, sizeof...(Cols)> row() {
    return {&grad_patches_block<Rows, Cols>...};
  }
};
template <int Rows>
struct PickGradFilters {
  template <int... Cols>
  static constexpr std::array<GradFiltersFn, sizeof...(Cols)> row() {
    return {&grad_filters_block<Rows, Cols>...};
  }
};

const auto forward_table = make_table<ForwardFn, PickForward>(
    std::make_integer_sequence<int, kForwardFilters>{},
    std::make_integer_sequence<int, kForwardSamples>{});
const auto grad_patches_table = make_table<GradPatchesFn, PickGradPatches>(
    std::make_integer_sequence<int, kMaxBlock>{},
    std::make_integer_sequence<int, kChunkVectors>{});
const auto grad_filters_table = make_table<GradFiltersFn, PickGradFilters>(
    std::make_integer_sequence<int, kMaxBlock>{},
    std::make_integer_sequence<int, kChunkVectors>{});

// The vectors of the chunk of K starting at k, and the mask of its last one.
struct Chunk {
  int vectors;
  __mmask16 last;
};
inline Chunk chunk_at(int64_t patch_size, int64_t k) {
  const int64_t width = std::min<int64_t>(kChunk, patch_size - k);
  const int vectors = static_cast<int>((width + kLanes - 1) / kLanes);
  return {vectors, tail_mask(width - (vectors - 1) * kLanes)};
}

// The lanes of columns [first, last) of the 16 columns starting at `start`.
inline __mmask16 column_mask(int64_t start, int64_t first, int64_t last) {
  const int64_t from = std::max<int64_t>(first - start, 0);
  const int64_t to = std::min<int64_t>(last - start, kLanes);
  return to > from ? __mmask16(((1u << to) - 1) & ~((1u << from) - 1)) : __mmask16(0);
}

}  // namespace

bool cpu_has_avx512() {
  static const bool available = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0 && __builtin_cpu_supports("fma") != 0;
  }();
  return available;
}

void avx512_forward(int64_t out_channels, int64_t samples, int64_t patch_size,
                    const float* filters, const float* patches, float* out) {
  const EvenBlocks sample_blocks(samples, kForwardSamples);
  for (int64_t o = 0; o < out_channels; o += kForwardFilters) {
    const int64_t rows = std::min<int64_t>(kForwardFilters, out_channels - o);
    for (int64_t b = 0; b < sample_blocks.count; ++b) {
      const int64_t s = sample_blocks.first(b);
      forward_table[rows - 1][sample_blocks.size(b) - 1](
          out_channels, patch_size, filters + o * patch_size, patches + s * patch_size,
          out + s * out_channels + o);
    }
  }
}

void avx512_grad_patches(int64_t out_channels, int64_t samples, int64_t patch_size,
                         const float* filters, const float* grad_output, float* grad_patches) {
  const EvenBlocks sample_blocks(samples, kMaxBlock);
  for (int64_t k = 0; k < patch_size; k += kChunk) {
    const Chunk chunk = chunk_at(patch_size, k);
    for (int64_t b = 0; b < sample_blocks.count; ++b) {
      const int64_t s = sample_blocks.first(b);
      grad_patches_table[sample_blocks.size(b) - 1][chunk.vectors - 1](
          out_channels, patch_size, chunk.last, filters + k, grad_output + s * out_channels,
          grad_patches + s * patch_size + k, /*prefetch=*/b == 0);
    }
  }
}

void avx512_grad_filters(int64_t out_channels, int64_t samples, int64_t patch_size,
                         const float* patches, const float* grad_output, bool accumulate,
                         float* grad_filters) {
  const EvenBlocks filter_blocks(out_channels, kMaxBlock);
  for (int64_t b = 0; b < filter_blocks.count; ++b) {
    const int64_t o = filter_blocks.first(b);
    for (int64_t k = 0; k < patch_size; k += kChunk) {
      const Chunk chunk = chunk_at(patch_size, k);
      grad_filters_table[filter_blocks.size(b) - 1][chunk.vectors - 1](
          out_channels, samples, patch_size, chunk.last, patches + k, grad_output + o,
          accumulate, grad_filters + o * patch_size + k);
    }
  }
}

// The loops run over blocks of kSampleGroup samples, the rows, then the samples of the block, so
// that a row's masks are worked out once per block (they had cost more than the copy, measured
// on DeepFace L6), while the samples in flight at once stay few enough not to evict each other
// from L1 where the sample stride is a power of two (cunn232_c1).
LC_AVX512 void avx512_pack_patches(const float* input, int64_t sample_stride,
                                   const PatchRow* rows, const Geometry& g, int64_t samples,
                                   float* patches) {
  const int64_t row_count = g.in_channels * g.kernel_h, kernel_w = g.kernel_w;
  const int64_t patch_size = g.patch_size();
  for (int64_t n0 = 0; n0 < samples; n0 += kSampleGroup) {
    const int64_t group = std::min<int64_t>(kSampleGroup, samples - n0);
    for (int64_t r = 0; r < row_count; ++r) {
      const PatchRow& row = rows[r];
      // Column q of the row reads input[row.source + q - row.first] of each sample; masked-off
      // lanes are neither read nor written.
      const float* from = input + n0 * sample_stride + row.source - row.first;
      float* to = patches + n0 * patch_size + r * kernel_w;
      for (int64_t q = 0; q < kernel_w; q += kLanes) {
        const __mmask16 read = column_mask(q, row.first, row.last);
        const __mmask16 write = tail_mask(kernel_w - q);
        for (int64_t n = 0; n < group; ++n) {
          const __m512 values = _mm512_maskz_loadu_ps(read, from + n * sample_stride + q);
          _mm512_mask_storeu_ps(to + n * patch_size + q, write, values);
        }
      }
    }
  }
}

// Loops as in avx512_pack_patches.
LC_AVX512 void avx512_scatter_add_patches(const float* grad_patches, const PatchRow* rows,
                                          const Geometry& g, int64_t samples, float* grad_input) {
  const int64_t row_count = g.in_channels * g.kernel_h, kernel_w = g.kernel_w;
  const int64_t sample_size = g.in_channels * g.in_h * g.in_w;
  const int64_t patch_size = g.patch_size();
  for (int64_t n0 = 0; n0 < samples; n0 += kSampleGroup) {
    const int64_t group = std::min<int64_t>(kSampleGroup, samples - n0);
    for (int64_t r = 0; r < row_count; ++r) {
      const PatchRow& row = rows[r];
      if (row.first == row.last) continue;  // the row lies in the padding
      float* to = grad_input + n0 * sample_size + row.source - row.first;
      const float* from = grad_patches + n0 * patch_size + r * kernel_w;
      for (int64_t q = 0; q < kernel_w; q += kLanes) {
        const __mmask16 mask = column_mask(q, row.first, row.last);
        for (int64_t n = 0; n < group; ++n) {
          float* target = to + n * sample_size + q;
          const __m512 sum =
              _mm512_add_ps(_mm512_maskz_loadu_ps(mask, target),
                            _mm512_maskz_loadu_ps(mask, from + n * patch_size + q));
          _mm512_mask_storeu_ps(target, mask, sum);
        }
      }
    }
  }
}

namespace {

// ---- forward by row tiles: FB filters, each a vector over the tile's 16 locations ----
// filters_t[(k*FB + f)*16 + t] is the weight of location t of the tile (the FB vectors of one k
// lie together, so one address register reaches them all); the input row of (c, p) read by
// kernel column q is one (masked) vector over t. Outputs whose 16 locations are one whole,
// aligned cache line are streamed to memory (the output is written once and not read back
// here; streaming skips reading each line first).
template <int FB>
LC_AVX512 void row_tile_block(const float* sample, const Strides4& s, const Geometry& g,
                              int64_t i, int64_t j0, __mmask16 width_mask, const float* filters_t,
                              const float* bias, float* out, int64_t plane) {
  __m512 acc[FB];
#pragma GCC unroll 16
  for (int f = 0; f < FB; ++f) acc[f] = _mm512_loadu_ps(bias + f * kLanes);
  int64_t k = 0;
  for (int64_t c = 0; c < g.in_channels; ++c) {
    for (int64_t p = 0; p < g.kernel_h; ++p) {
      const int64_t y = i * g.stride_h - g.pad_h + p * g.dilation_h;
      if (y < 0 || y >= g.in_h) {
        k += g.kernel_w;
        continue;
      }
      const float* row = sample + c * s.c + y * s.h;
      for (int64_t q = 0; q < g.kernel_w; ++q, ++k) {
        // Location j0 + t reads input column x + t; lanes outside the row read the padding.
        const int64_t x = j0 - g.pad_w + q * g.dilation_w;
        const __mmask16 valid = width_mask & column_mask(x, 0, g.in_w);
        const __m512 values = _mm512_maskz_loadu_ps(valid, row + x);
#pragma GCC unroll 16
        for (int f = 0; f < FB; ++f)
          acc[f] = _mm512_fmadd_ps(_mm512_loadu_ps(filters_t + (k * FB + f) * kLanes), values,
                                   acc[f]);
      }
    }
  }
  const bool whole_lines =
      width_mask == 0xFFFF && reinterpret_cast<uintptr_t>(out) % 64 == 0 && plane % kLanes == 0;
#pragma GCC unroll 16
  for (int f = 0; f < FB; ++f) {
    if (whole_lines)
      _mm512_stream_ps(out + f * plane, acc[f]);
    else
      _mm512_mask_storeu_ps(out + f * plane, width_mask, acc[f]);
  }
}

using RowTileFn = void (*)(const float*, const Strides4&, const Geometry&, int64_t, int64_t,
                           __mmask16, const float*, const float*, float*, int64_t);
template <int... Filters>
constexpr std::array<RowTileFn, sizeof...(Filters)> row_tile_table(
    std::integer_sequence<int, Filters...>) {
  return {&row_tile_block<Filters + 1>...};
}
const auto row_tile_blocks = row_tile_table(std::make_integer_sequence<int, kLanes>{});

}  // namespace

LC_AVX512 void avx512_forward_row_tile(const float* input, const Strides4& s, const Geometry& g,
                                       int64_t i, int64_t j0, int64_t width, int64_t samples,
                                       const float* filters, const float* bias, bool shared_bias,
                                       float* out, float* scratch) {
  const int64_t patch_size = g.patch_size(), filter_size = g.out_channels * patch_size;
  const int64_t plane = g.locations();
  // The tile's filters, transposed so that the 16 locations' weights of one (o, k) are a vector,
  // in blocks of 16 filters laid out as row_tile_block reads them.
  for (int64_t o = 0; o < g.out_channels; o += kLanes) {
    const int64_t block = std::min<int64_t>(kLanes, g.out_channels - o);
    float* to = scratch + o * patch_size * kLanes;
    for (int64_t k = 0; k < patch_size; ++k)
      for (int64_t f = 0; f < block; ++f)
        for (int64_t t = 0; t < kLanes; ++t)
          to[(k * block + f) * kLanes + t] =
              t < width ? filters[t * filter_size + (o + f) * patch_size + k] : 0.0f;
  }
  const __mmask16 width_mask = tail_mask(width);
  const int64_t first = i * g.out_w + j0;
  for (int64_t o = 0; o < g.out_channels; o += kLanes) {
    const int64_t block = std::min<int64_t>(kLanes, g.out_channels - o);
    // The block's bias, a vector over the tile per filter: the accumulators' start.
    float offsets[kLanes * kLanes];
    for (int64_t f = 0; f < block; ++f) {
      _mm512_storeu_ps(offsets + f * kLanes,
                       bias == nullptr ? _mm512_setzero_ps()
                       : shared_bias   ? _mm512_set1_ps(bias[o + f])
                                       : _mm512_maskz_loadu_ps(width_mask,
                                                               bias + (o + f) * plane + first));
    }
    for (int64_t n = 0; n < samples; ++n) {
      row_tile_blocks[block - 1](input + n * s.n, s, g, i, j0, width_mask,
                                 scratch + o * patch_size * kLanes, offsets,
                                 out + (n * g.out_channels + o) * plane + first, plane);
    }
  }
  _mm_sfence();  // the streamed stores are ordered before whatever follows
}

}  // namespace cpu
}  // namespace lc_cuda
