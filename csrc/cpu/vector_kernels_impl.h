// The kernels of vector_kernels.h, written once over a vector ISA V (the traits Avx512 of
// avx512_vectors.h or Avx2 of avx2_vectors.h: lanes, masks, widening loads, rounding stores, lane
// sums, block sizes) and an element type T (float, c10::BFloat16, c10::Half). avx512_kernels.cpp
// and avx2_kernels.cpp each include this file once, after defining LC_VECTOR_TARGET (the
// attribute that compiles a function for their ISA), LC_VECTOR_TRAITS (V) and
// LC_VECTOR_NAMESPACE (the namespace of vector_kernels.h to define); nothing else includes it.
// The generic code has internal linkage, so the two instantiations, each compiled for its own
// ISA, never meet at link time; only the namespace's entry points are exported.
//
// Each product is a register-blocked micro-kernel, templated on its block sizes so that the
// accumulators stay in registers, and a driver that cuts the location into blocks:
// - forward: dot products along K (both operands are K-contiguous), V::kForwardFilters filters x
//   up to V::kForwardSamples samples, each accumulator reduced across its lanes once at the end;
// - grad_patches: V::kChunkVectors vectors of K x up to V::kMaxBlock samples, a broadcast of
//   grad_output times a row of filters per output channel;
// - grad_filters: the same chunks of K x up to V::kMaxBlock filters, a broadcast of grad_output
//   times a row of patches per sample.
// The last vector of a row of K is loaded and stored under a mask, so nothing is read or written
// past a row.
#if !defined(LC_VECTOR_TARGET) || !defined(LC_VECTOR_TRAITS) || !defined(LC_VECTOR_NAMESPACE)
#error "define LC_VECTOR_TARGET, LC_VECTOR_TRAITS and LC_VECTOR_NAMESPACE before including this"
#endif

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "fetch_ahead.h"
#include "register_blocks.h"
#include "vector_kernels.h"

namespace lc_cuda {
namespace cpu {
namespace {
namespace generic {

constexpr int64_t kSampleGroup = 4;  // samples packed or scattered together
// The forward streams its filters from memory once, one block of rows at a time; it prefetches
// them into L2 this many rows ahead (measured best of 4, 8, 16 rows and L1 or L2, DeepFace L4).
constexpr int64_t kForwardAheadRows = 8;

// One element as a float (a bfloat16 is a float's upper half).
LC_VECTOR_TARGET inline float to_float(float x) { return x; }
LC_VECTOR_TARGET inline float to_float(c10::BFloat16 x) {
  return std::bit_cast<float>(static_cast<uint32_t>(x.x) << 16);
}
LC_VECTOR_TARGET inline float to_float(c10::Half x) { return _cvtsh_ss(x.x); }

// Prefetches `bytes` from p on into L2, a line at a time.
LC_VECTOR_TARGET inline void prefetch_l2(const void* p, int64_t bytes) {
  for (int64_t offset = 0; offset < bytes; offset += kLine)
    fetch_into_l2(reinterpret_cast<uintptr_t>(p) + offset);
}

// ---- forward: FB filters x SB samples of dot products along K ----
// One vector of K at k; Masked: the last, partial one.
template <typename V, typename T, int FB, int SB, bool Masked>
LC_VECTOR_TARGET inline void forward_step(int64_t patch_size, int64_t k, const T* filters,
                                          const T* patches, typename V::Vec (&acc)[FB][SB]) {
  using Vec = typename V::Vec;
  const auto mask = V::tail(patch_size - k);
  Vec w[FB];
#pragma GCC unroll 6
  for (int f = 0; f < FB; ++f) {
    prefetch_l2(filters + (f + kForwardAheadRows) * patch_size + k, V::kLanes * sizeof(T));
    w[f] = Masked ? V::load(mask, filters + f * patch_size + k)
                  : V::load(filters + f * patch_size + k);
  }
#pragma GCC unroll 6
  for (int s = 0; s < SB; ++s) {
    const Vec p = Masked ? V::load(mask, patches + s * patch_size + k)
                         : V::load(patches + s * patch_size + k);
#pragma GCC unroll 6
    for (int f = 0; f < FB; ++f) acc[f][s] = V::fmadd(w[f], p, acc[f][s]);
  }
}

template <typename V, typename T, int FB, int SB>
LC_VECTOR_TARGET void forward_block(int64_t out_channels, int64_t patch_size, const T* filters,
                                    const T* patches, float* out) {
  typename V::Vec acc[FB][SB];
#pragma GCC unroll 6
  for (int f = 0; f < FB; ++f)
#pragma GCC unroll 6
    for (int s = 0; s < SB; ++s) acc[f][s] = V::zero();
  int64_t k = 0;
  for (; k + V::kLanes <= patch_size; k += V::kLanes)
    forward_step<V, T, FB, SB, false>(patch_size, k, filters, patches, acc);
  if (k < patch_size) forward_step<V, T, FB, SB, true>(patch_size, k, filters, patches, acc);
  // The lane sums, four filters at a time (the missing ones zeros).
  static_assert(FB <= 4);
#pragma GCC unroll 6
  for (int s = 0; s < SB; ++s) {
    typename V::Vec four[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
#pragma GCC unroll 4
    for (int f = 0; f < FB; ++f) four[f] = acc[f][s];
    const __m128 sums = V::reduce4(four[0], four[1], four[2], four[3]);
    if constexpr (FB == 4) {
      _mm_storeu_ps(out + s * out_channels, sums);
    } else {
      alignas(16) float lanes[4];
      _mm_store_ps(lanes, sums);
      for (int f = 0; f < FB; ++f) out[s * out_channels + f] = lanes[f];
    }
  }
}

// The CV vectors of a chunk of K starting at `row`, the last one under the mask `last`.
template <typename V, typename T, int CV>
LC_VECTOR_TARGET inline void load_chunk(const T* row, typename V::Mask last,
                                        typename V::Vec (&to)[CV]) {
#pragma GCC unroll 4
  for (int v = 0; v < CV; ++v)
    to[v] = v == CV - 1 ? V::load(last, row + v * V::kLanes) : V::load(row + v * V::kLanes);
}

// A float vector at p: streamed past the caches where it is a whole cache line (AVX-512's, on a
// line's boundary), else stored. Half lines (AVX2) are not streamed: a line whose halves are
// streamed apart, or streamed and stored, is written to memory in parts (forced AVX2, DeepFace
// L4's forward+backward took 7x as long).
template <typename V>
LC_VECTOR_TARGET inline void stream_or_store(float* p, typename V::Vec v) {
  if constexpr (sizeof(typename V::Vec) == kLine) {
    if (reinterpret_cast<uintptr_t>(p) % kLine == 0) return V::stream(p, v);
  }
  V::store(p, v);
}

// Stores the CV vectors of a chunk of K at `row` as T, the last one under the mask `last`; the
// others, where `stream` (float only), by stream_or_store.
template <typename V, typename T, int CV>
LC_VECTOR_TARGET inline void store_chunk(T* row, typename V::Mask last,
                                         const typename V::Vec (&from)[CV], bool stream = false) {
#pragma GCC unroll 4
  for (int v = 0; v < CV; ++v) {
    if (v == CV - 1) {
      V::store(last, row + v * V::kLanes, from[v]);
    } else if constexpr (std::is_same_v<T, float>) {
      if (stream)
        stream_or_store<V>(row + v * V::kLanes, from[v]);
      else
        V::store(row + v * V::kLanes, from[v]);
    } else {
      V::store(row + v * V::kLanes, from[v]);
    }
  }
}

// ---- grad_patches: SB samples x CV vectors of K, summed over the output channels ----
template <typename V, typename T, int SB, int CV>
LC_VECTOR_TARGET void grad_patches_block(int64_t out_channels, int64_t patch_size,
                                         typename V::Mask last, const T* filters,
                                         const T* grad_output, float* grad_patches,
                                         bool prefetch) {
  using Vec = typename V::Vec;
  constexpr int64_t chunk_bytes = int64_t{V::kChunkVectors} * V::kLanes * sizeof(T);
  Vec acc[SB][CV];
#pragma GCC unroll 6
  for (int s = 0; s < SB; ++s)
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) acc[s][v] = V::zero();
  for (int64_t o = 0; o < out_channels; ++o) {
    const T* row = filters + o * patch_size;
    // The filters stream from memory once, one chunk of every row at a time: fetch this row's
    // chunk after next into L2 while this one is used (measured best of 1, 2 and 4 chunks ahead,
    // into L1 or L2).
    if (prefetch) prefetch_l2(reinterpret_cast<const char*>(row) + 2 * chunk_bytes, chunk_bytes);
    Vec w[CV];
    load_chunk<V, T, CV>(row, last, w);
#pragma GCC unroll 6
    for (int s = 0; s < SB; ++s) {
      const Vec g = V::set1(to_float(grad_output[s * out_channels + o]));
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) acc[s][v] = V::fmadd(g, w[v], acc[s][v]);
    }
  }
#pragma GCC unroll 6
  for (int s = 0; s < SB; ++s)
    store_chunk<V, float, CV>(grad_patches + s * patch_size, last, acc[s]);
}

// ---- grad_filters: FB filters x CV vectors of K, summed over the samples ----
template <typename V, typename T, int FB, int CV>
LC_VECTOR_TARGET void grad_filters_block(int64_t out_channels, int64_t samples,
                                         int64_t patch_size, typename V::Mask last,
                                         const T* patches, const T* grad_output, bool accumulate,
                                         float* grad_filters, T* rounded, bool stream) {
  using Vec = typename V::Vec;
  Vec acc[FB][CV];
#pragma GCC unroll 6
  for (int f = 0; f < FB; ++f) {
    if (accumulate) {
      load_chunk<V, float, CV>(grad_filters + f * patch_size, last, acc[f]);
    } else {
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) acc[f][v] = V::zero();
    }
  }
  for (int64_t s = 0; s < samples; ++s) {
    Vec p[CV];
    load_chunk<V, T, CV>(patches + s * patch_size, last, p);
#pragma GCC unroll 6
    for (int f = 0; f < FB; ++f) {
      const Vec g = V::set1(to_float(grad_output[s * out_channels + f]));
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) acc[f][v] = V::fmadd(g, p[v], acc[f][v]);
    }
  }
#pragma GCC unroll 6
  for (int f = 0; f < FB; ++f) {
    if (rounded != nullptr)
      store_chunk<V, T, CV>(rounded + f * patch_size, last, acc[f]);
    else
      store_chunk<V, float, CV>(grad_filters + f * patch_size, last, acc[f], stream);
  }
}

template <typename V, typename T>
struct Blocks {
  using ForwardFn = void (*)(int64_t, int64_t, const T*, const T*, float*);
  using GradPatchesFn = void (*)(int64_t, int64_t, typename V::Mask, const T*, const T*, float*,
                                 bool);
  using GradFiltersFn = void (*)(int64_t, int64_t, int64_t, typename V::Mask, const T*, const T*,
                                 bool, float*, T*, bool);
  struct Forward {
    template <int FB, int SB>
    static constexpr ForwardFn at() { return &forward_block<V, T, FB, SB>; }
  };
  struct GradPatches {
    template <int SB, int CV>
    static constexpr GradPatchesFn at() { return &grad_patches_block<V, T, SB, CV>; }
  };
  struct GradFilters {
    template <int FB, int CV>
    static constexpr GradFiltersFn at() { return &grad_filters_block<V, T, FB, CV>; }
  };
  static constexpr auto forward =
      make_block_table<ForwardFn, V::kForwardFilters, V::kForwardSamples, Forward>();
  static constexpr auto grad_patches =
      make_block_table<GradPatchesFn, V::kMaxBlock, V::kChunkVectors, GradPatches>();
  static constexpr auto grad_filters =
      make_block_table<GradFiltersFn, V::kMaxBlock, V::kChunkVectors, GradFilters>();
};

// The vectors of the chunk of K starting at k, and the mask of its last one.
template <typename V>
struct Chunk {
  int vectors;
  typename V::Mask last;
};
template <typename V>
LC_VECTOR_TARGET inline Chunk<V> chunk_at(int64_t patch_size, int64_t k) {
  const int64_t width = std::min<int64_t>(int64_t{V::kChunkVectors} * V::kLanes, patch_size - k);
  const int vectors = static_cast<int>((width + V::kLanes - 1) / V::kLanes);
  return {vectors, V::tail(width - (vectors - 1) * V::kLanes)};
}

template <typename V, typename T>
LC_VECTOR_TARGET void forward(int64_t out_channels, int64_t samples, int64_t patch_size,
                              const T* filters, const T* patches, float* out) {
  const EvenBlocks filter_blocks(out_channels, V::kForwardFilters);
  const EvenBlocks sample_blocks(samples, V::kForwardSamples);
  for (int64_t f = 0; f < filter_blocks.count; ++f) {
    const int64_t o = filter_blocks.first(f);
    for (int64_t b = 0; b < sample_blocks.count; ++b) {
      const int64_t s = sample_blocks.first(b);
      Blocks<V, T>::forward[filter_blocks.size(f) - 1][sample_blocks.size(b) - 1](
          out_channels, patch_size, filters + o * patch_size, patches + s * patch_size,
          out + s * out_channels + o);
    }
  }
}

template <typename V, typename T>
LC_VECTOR_TARGET void grad_patches(int64_t out_channels, int64_t samples, int64_t patch_size,
                                   const T* filters, const T* grad_output, const T* next,
                                   float* grad_patches) {
  const EvenBlocks sample_blocks(samples, V::kMaxBlock);
  constexpr int64_t chunk_size = int64_t{V::kChunkVectors} * V::kLanes;
  RowHeadsAhead<T> ahead(next, patch_size, out_channels, 2 * chunk_size,
                         ceil_div(patch_size, chunk_size));
  for (int64_t k = 0; k < patch_size; k += chunk_size) {
    ahead.step();
    const Chunk<V> chunk = chunk_at<V>(patch_size, k);
    for (int64_t b = 0; b < sample_blocks.count; ++b) {
      const int64_t s = sample_blocks.first(b);
      Blocks<V, T>::grad_patches[sample_blocks.size(b) - 1][chunk.vectors - 1](
          out_channels, patch_size, chunk.last, filters + k, grad_output + s * out_channels,
          grad_patches + s * patch_size + k, /*prefetch=*/b == 0);
    }
  }
}

template <typename V, typename T>
LC_VECTOR_TARGET void grad_filters(int64_t out_channels, int64_t samples, int64_t patch_size,
                                   const T* patches, const T* grad_output, bool accumulate,
                                   float* grad_filters, T* rounded, bool stream) {
  const EvenBlocks filter_blocks(out_channels, V::kMaxBlock);
  for (int64_t b = 0; b < filter_blocks.count; ++b) {
    const int64_t o = filter_blocks.first(b);
    for (int64_t k = 0; k < patch_size; k += int64_t{V::kChunkVectors} * V::kLanes) {
      const Chunk<V> chunk = chunk_at<V>(patch_size, k);
      Blocks<V, T>::grad_filters[filter_blocks.size(b) - 1][chunk.vectors - 1](
          out_channels, samples, patch_size, chunk.last, patches + k, grad_output + o,
          accumulate, grad_filters + o * patch_size + k,
          rounded == nullptr ? nullptr : rounded + o * patch_size + k, stream);
    }
  }
}

// Copies `Bytes` bytes: one load and one store of that width.
template <int Bytes>
LC_VECTOR_TARGET inline void move_bytes(const void* from, void* to) {
  char bytes[Bytes];
  std::memcpy(bytes, from, Bytes);
  std::memcpy(to, bytes, Bytes);
}

// Copies `count` 16-bit elements, count >= 1, as a memcpy of a small size does: moves of the
// widest width that fits, the last one overlapping the one before; nothing outside the
// `count` elements is read or written, and no mask is needed.
template <typename T>
LC_VECTOR_TARGET inline void copy_overlapping(const T* from, T* to, int64_t count) {
  static_assert(sizeof(T) == 2);
  if (count >= 8) {
    for (int64_t q = 0; q + 8 < count; q += 8) move_bytes<16>(from + q, to + q);
    move_bytes<16>(from + count - 8, to + count - 8);
  } else if (count >= 4) {
    move_bytes<8>(from, to);
    move_bytes<8>(from + count - 4, to + count - 4);
  } else if (count >= 2) {
    move_bytes<4>(from, to);
    move_bytes<4>(from + count - 2, to + count - 2);
  } else {
    move_bytes<2>(from, to);
  }
}

// Patches a row at a time, on ISAs without V::kPacksByLines<T> (AVX2's 16-bit elements): a row
// wholly inside the input by copy_overlapping (DeepFace L4's 9 columns had been a vector and a
// one-lane masked vector: its bfloat16 forward 0.52x on a Zen 3, mid_32x32_c64's 0.74x, L5's
// 0.67x), others by one masked load and store per vector of the row's columns. The loops run
// over blocks of kSampleGroup samples, the rows, the locations (pack_patches'), then the
// samples of the block, so that a row's masks are worked out once per block (they had cost more
// than the copy, measured on DeepFace L6), while the samples in flight at once stay few enough
// not to evict each other from L1 where the sample stride is a power of two (cunn232_c1); the
// locations' copies of one row read the same input lines one after another.
template <typename V, typename T>
LC_VECTOR_TARGET void pack_rows(const T* input, int64_t sample_stride, const PatchRow* rows,
                                int64_t locations, const Geometry& g, int64_t samples,
                                T* patches) {
  const int64_t row_count = patch_row_count(g), kernel_w = g.kernel_w;
  const int64_t patch_size = g.patch_size();
  for (int64_t n0 = 0; n0 < samples; n0 += kSampleGroup) {
    const int64_t group = std::min<int64_t>(kSampleGroup, samples - n0);
    for (int64_t r = 0; r < row_count; ++r) {
      for (int64_t u = 0; u < locations; ++u) {
        const PatchRow& row = rows[u * row_count + r];
        // Column q of the row reads input[row.source + q - row.first] of each sample; masked-off
        // lanes are not read.
        const T* from = input + n0 * sample_stride + row.source - row.first;
        T* to = patches + (u * samples + n0) * patch_size + r * kernel_w;
        if (row.first == 0 && row.last == kernel_w) {
          for (int64_t n = 0; n < group; ++n)
            copy_overlapping(from + n * sample_stride, to + n * patch_size, kernel_w);
          continue;
        }
        for (int64_t q = 0; q < kernel_w; q += V::kLanes) {
          const auto read = V::columns(q, row.first, row.last);
          // A whole vector may run on into the sample's next rows, which are packed after this
          // one and overwrite it (masked stores are slow); one that would run past the sample's
          // patch is stored under a mask.
          const bool inside = r * kernel_w + q + V::kLanes <= patch_size;
          const auto write = V::tail(inside ? V::kLanes : kernel_w - q);
          for (int64_t n = 0; n < group; ++n)
            V::copy(read, write, from + n * sample_stride + q, to + n * patch_size + q);
        }
      }
    }
  }
}

// Calls rows(std::integral_constant<int, Lanes>{}) with the narrowest part of a vector the patch
// rows of g fit: a quarter, a half or the whole (scatter_add_patches). The callers' lambdas carry
// LC_VECTOR_TARGET: without it the scatter ran 1.2-1.4x slower (one thread, DeepFace L6 and
// mid_32x32_c64's shapes).
template <typename V, typename Rows>
LC_VECTOR_TARGET void by_row_width(const Geometry& g, Rows&& rows) {
  if (g.kernel_w <= V::kLanes / 4) return rows(std::integral_constant<int, V::kLanes / 4>{});
  if (g.kernel_w <= V::kLanes / 2) return rows(std::integral_constant<int, V::kLanes / 2>{});
  rows(std::integral_constant<int, V::kLanes>{});
}

// Patches a line at a time where V::kPacksByLines<T> (64 bytes on AVX-512, a cache line where
// the sample's patch starts on one; a vector of 8 floats on AVX2): each patch row's lanes of a
// line (one load under V::line_columns, the lanes of the row's columns inside the input, from an
// address up to a line before the row's first column: lanes off the mask are not read; columns
// in the padding stay 0) or'ed into the line, the line stored whole once its last row is in, a
// sample's last partial line under a mask. U
// neighbouring locations (location u's rows at rows + u * patch_row_count, its patches at
// to + u * location_stride) and G samples from `from` on, a row of each location in turn, so that
// the locations' loads of one row meet the same input lines in the L1 (as pack_rows).
template <typename V, typename T, int U, int G>
LC_VECTOR_TARGET void pack_lines_block(const T* from, int64_t sample_stride,
                                       const PatchRow* rows, const Geometry& g, T* to,
                                       int64_t location_stride) {
  constexpr int64_t lanes = V::template kLineLanes<T>;
  const int64_t row_count = patch_row_count(g), kernel_w = g.kernel_w;
  const int64_t patch_size = g.patch_size();
  typename V::Line line[U][G];
#pragma GCC unroll 4
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
    for (int n = 0; n < G; ++n) line[u][n] = V::zero_line();
  int64_t start = 0;  // the patch column of the line's first lane
  for (int64_t r = 0; r < row_count; ++r) {
    const int64_t end = (r + 1) * kernel_w;
    while (true) {
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) {
        const PatchRow& row = rows[u * row_count + r];
        // The row's columns inside the input, as patch columns [inside, outside); column k of
        // them reads element k of `base`.
        const int64_t inside = r * kernel_w + row.first, outside = r * kernel_w + row.last;
        const auto mask = V::template line_columns<T>(start, inside, outside);
        const T* base = from + row.source - inside + start;
#pragma GCC unroll 4
        for (int n = 0; n < G; ++n)
          line[u][n] = V::or_line(line[u][n], mask, base + n * sample_stride);
      }
      if (end < start + lanes) break;  // the line goes on into the next row
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
        for (int n = 0; n < G; ++n) {
          V::store_line(to + u * location_stride + n * patch_size + start, line[u][n]);
          line[u][n] = V::zero_line();
        }
      start += lanes;
      if (end == start) break;
    }
  }
  if (start < patch_size) {
    const auto tail = V::template line_columns<T>(start, start, patch_size);
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
      for (int n = 0; n < G; ++n)
        V::store_line(tail, to + u * location_stride + n * patch_size + start, line[u][n]);
  }
}

// pack_lines_block for U locations and the G samples of one block.
template <typename V, typename T, int U>
LC_VECTOR_TARGET void pack_lines_of(int64_t group, const T* from, int64_t sample_stride,
                                    const PatchRow* rows, const Geometry& g, T* to,
                                    int64_t location_stride) {
  switch (group) {
    case 4:
      return pack_lines_block<V, T, U, 4>(from, sample_stride, rows, g, to, location_stride);
    case 3:
      return pack_lines_block<V, T, U, 3>(from, sample_stride, rows, g, to, location_stride);
    case 2:
      return pack_lines_block<V, T, U, 2>(from, sample_stride, rows, g, to, location_stride);
    default:
      return pack_lines_block<V, T, U, 1>(from, sample_stride, rows, g, to, location_stride);
  }
}

// pack_rows' arguments, by pack_lines_block: blocks of kSampleGroup samples (the last one
// shorter), each over the locations V::kLineLocations at a time, so that a block's rows of
// every location meet the same input lines in the L1 one after another.
template <typename V, typename T>
LC_VECTOR_TARGET void pack_lines(const T* input, int64_t sample_stride, const PatchRow* rows,
                                 int64_t locations, const Geometry& g, int64_t samples,
                                 T* patches) {
  static_assert(kSampleGroup == 4);
  static_assert(V::kLineLocations == 4 || V::kLineLocations == 2);
  const int64_t row_count = patch_row_count(g), patch_size = g.patch_size();
  const int64_t location_stride = samples * patch_size;
  for (int64_t n = 0; n < samples; n += kSampleGroup) {
    const int64_t group = std::min<int64_t>(kSampleGroup, samples - n);
    const T* from = input + n * sample_stride;
    for (int64_t u = 0; u < locations; u += V::kLineLocations) {
      const PatchRow* at = rows + u * row_count;
      T* to = patches + u * location_stride + n * patch_size;
      switch (std::min<int64_t>(V::kLineLocations, locations - u)) {
        case 4:
          if constexpr (V::kLineLocations == 4)
            pack_lines_of<V, T, 4>(group, from, sample_stride, at, g, to, location_stride);
          break;
        case 3:
          if constexpr (V::kLineLocations == 4)
            pack_lines_of<V, T, 3>(group, from, sample_stride, at, g, to, location_stride);
          break;
        case 2:
          pack_lines_of<V, T, 2>(group, from, sample_stride, at, g, to, location_stride);
          break;
        default:
          pack_lines_of<V, T, 1>(group, from, sample_stride, at, g, to, location_stride);
          break;
      }
    }
  }
}

// By lines where V::kPacksByLines<T> (pack_lines; one process, a switch, 2 threads, against
// pack_rows with half- and quarter-vector copies of short rows: AVX-512's forward of DeepFace L4
// bfloat16 0.91x, float32 0.98x, mid_32x32_c64 0.94x, 1.01x, YOLOv1 0.96x, 0.97x; forced AVX2's
// float32 forward of DeepFace L4 0.74x, mid_32x32_c64 0.96x, YOLOv1 0.96x, forward+backward of
// L4 0.86x), else a row at a time (pack_rows).
template <typename V, typename T>
LC_VECTOR_TARGET void pack_patches(const T* input, int64_t sample_stride, const PatchRow* rows,
                                   int64_t locations, const Geometry& g, int64_t samples,
                                   T* patches) {
  if constexpr (V::template kPacksByLines<T>) {
    pack_lines<V>(input, sample_stride, rows, locations, g, samples, patches);
  } else {
    pack_rows<V>(input, sample_stride, rows, locations, g, samples, patches);
  }
}

// The adjoint of one location's packing, by pack_rows' loops: each row's masked load-add-store
// (add_part<Lanes>: rows of at most Lanes < V::kLanes elements by accesses that wide), a block's
// samples unrolled where the rows are narrow.
template <typename V, int Lanes>
LC_VECTOR_TARGET void scatter_add_rows(const float* grad_patches, const PatchRow* rows,
                                       const Geometry& g, int64_t samples, float* grad_input) {
  const int64_t row_count = patch_row_count(g), kernel_w = g.kernel_w;
  const int64_t sample_size = g.input_sample();
  const int64_t patch_size = g.patch_size();
  for (int64_t n0 = 0; n0 < samples; n0 += kSampleGroup) {
    const int64_t group = std::min<int64_t>(kSampleGroup, samples - n0);
    for (int64_t r = 0; r < row_count; ++r) {
      const PatchRow& row = rows[r];
      if (row.first == row.last) continue;  // the row lies in the padding
      float* to = grad_input + n0 * sample_size + row.source - row.first;
      const float* from = grad_patches + n0 * patch_size + r * kernel_w;
      for (int64_t q = 0; q < kernel_w; q += Lanes) {
        const auto mask = V::columns(q, row.first, row.last);
        if (Lanes < V::kLanes && group == kSampleGroup) {
#pragma GCC unroll 4
          for (int64_t n = 0; n < kSampleGroup; ++n)
            V::template add_part<Lanes>(mask, from + n * patch_size + q,
                                        to + n * sample_size + q);
        } else {
          for (int64_t n = 0; n < group; ++n)
            V::template add_part<Lanes>(mask, from + n * patch_size + q,
                                        to + n * sample_size + q);
        }
      }
    }
  }
}

// Rows of at most half a vector by half-vector adds (AVX-512: DeepFace L6's scatter 0.62x and
// mid_32x32_c64's 0.61x, one thread, against whole vectors), of at most a quarter by
// quarter-vector ones (mid_32x32_c64's and a convnet_local3-like shape's 0.88x against halves).
template <typename V>
LC_VECTOR_TARGET void scatter_add_patches(const float* grad_patches, const PatchRow* rows,
                                          const Geometry& g, int64_t samples, float* grad_input) {
  by_row_width<V>(g, [&](auto lanes) LC_VECTOR_TARGET {
    scatter_add_rows<V, decltype(lanes)::value>(grad_patches, rows, g, samples, grad_input);
  });
}

// scatter_add_run (vector_kernels.h): lane l of a patch row's window (`Vectors` vectors side by
// side) is input column x0 + l, x0 the column the run's first location's kernel column 0 reads;
// location u's kernel column q is lane u * stride_w + q. Each location's row is one load per
// vector under reads[u][v] (its kernel_w lanes), from shifts[u] elements on from the first
// location's row (u * stride_w before its own row: masked-off lanes are not read); the
// destination one masked load-add-store per vector under write[v], the columns inside the
// input, which drops the columns in the padding. Accesses of the first Lanes lanes: a run that
// spans at most half a vector goes by half-vector accesses (AVX-512, one process: bfloat16
// grad_input of DeepFace L6 0.89x and convnet_local3 0.90x against whole vectors).
template <typename V, int Lanes, int Vectors, int Run>
LC_VECTOR_TARGET void scatter_run_rows(const float* grad_patches, const int64_t* dest,
                                       const Geometry& g, int64_t x0, int64_t run,
                                       int64_t samples, const typename V::Mask (*reads)[2],
                                       const int64_t* shifts, const typename V::Mask* write,
                                       float* grad_input) {
  static_assert(Vectors == 1 || Lanes == V::kLanes, "a window of vectors takes whole ones");
  const int64_t locations = Run > 0 ? Run : run;
  const int64_t row_count = patch_row_count(g), kernel_w = g.kernel_w;
  const int64_t sample_size = g.input_sample(), patch_size = g.patch_size();
  for (int64_t n0 = 0; n0 < samples; n0 += kSampleGroup) {
    const int64_t group = std::min<int64_t>(kSampleGroup, samples - n0);
    for (int64_t r = 0; r < row_count; ++r) {
      if (dest[r] < 0) continue;  // the row lies in the padding
      const float* from = grad_patches + n0 * patch_size + r * kernel_w;
      float* to = grad_input + n0 * sample_size + dest[r] + x0;
      for (int64_t n = 0; n < group; ++n) {
        const float* row = from + n * patch_size;
        decltype(V::template load_part<Lanes>(reads[0][0], row)) sum[Vectors];
#pragma GCC unroll 2
        for (int v = 0; v < Vectors; ++v)
          sum[v] = V::template load_part<Lanes>(reads[0][v], row + v * V::kLanes);
#pragma GCC unroll 4
        for (int64_t u = 1; u < locations; ++u) {
#pragma GCC unroll 2
          for (int v = 0; v < Vectors; ++v)
            sum[v] = V::add(sum[v], V::template load_part<Lanes>(
                                        reads[u][v], row + shifts[u] + v * V::kLanes));
        }
#pragma GCC unroll 2
        for (int v = 0; v < Vectors; ++v)
          V::template add_onto<Lanes>(write[v], to + n * sample_size + v * V::kLanes, sum[v]);
      }
    }
  }
}

template <typename V>
LC_VECTOR_TARGET void scatter_add_run(const float* grad_patches, const int64_t* dest,
                                      const Geometry& g, int64_t j, int64_t run, int64_t samples,
                                      float* grad_input) {
  const int64_t x0 = j * g.stride_w - g.pad_w;
  const int64_t span = (run - 1) * g.stride_w + g.kernel_w;
  const int64_t first = std::max<int64_t>(x0, 0), last = std::min(x0 + span, g.in_w);
  typename V::Mask reads[kScatterRun][2], write[2];
  int64_t shifts[kScatterRun];
  for (int64_t u = 0; u < run; ++u) {
    shifts[u] = u * (samples * g.patch_size() - g.stride_w);
    for (int64_t v = 0; v < 2; ++v)
      reads[u][v] = V::columns(v * V::kLanes - u * g.stride_w, 0, g.kernel_w);
  }
  for (int64_t v = 0; v < 2; ++v) write[v] = V::columns(x0 + v * V::kLanes, first, last);
  // Runs of kScatterRun with their locations unrolled; others (a row's last, shorter one, or
  // every run where runs are shorter) by a count.
  const auto rows = [&](auto lanes, auto vectors) LC_VECTOR_TARGET {
    constexpr int kLanesOf = decltype(lanes)::value, kVectorsOf = decltype(vectors)::value;
    if (run == kScatterRun) {
      return scatter_run_rows<V, kLanesOf, kVectorsOf, kScatterRun>(
          grad_patches, dest, g, x0, run, samples, reads, shifts, write, grad_input);
    }
    scatter_run_rows<V, kLanesOf, kVectorsOf, 0>(grad_patches, dest, g, x0, run, samples, reads,
                                                shifts, write, grad_input);
  };
  if (span > V::kLanes) {
    return rows(std::integral_constant<int, V::kLanes>{}, std::integral_constant<int, 2>{});
  }
  if constexpr (V::kLanes == 16) {
    if (span <= V::kLanes / 2) {
      return rows(std::integral_constant<int, V::kLanes / 2>{}, std::integral_constant<int, 1>{});
    }
  }
  rows(std::integral_constant<int, V::kLanes>{}, std::integral_constant<int, 1>{});
}

// How many rows on in its order a staging of short rows of grad_output (a row tile's, or a
// whole output row's) fetches into the L2, in place of each row's next part. Few: the rows of
// one output row lie a plane apart (cunn232_c1: 16 KB), so they share a few cache sets, which
// hold the lines of some tens of rows; fetched a whole output row ahead (1024 rows), they had
// evicted each other before their turn. cunn232_c1's backward in one process against that: 8 to
// 64 rows on 0.76-0.83x, 256 0.90x; against 32: 8 and 16 1.01, 64 1.27, into the L1 1.11.
// medvol_32cube_c2 (32 rows an output row): none 1.03, 8 1.00, 64 1.06.
constexpr int64_t kStagedRowsAhead = 32;

// How many tiles ahead the row kernels fetch unshared filters (or their gradient) into the L2
// (the standalone benchmark: 1 to 3 alike, 2.1x faster than none).
constexpr int64_t kRowTileAheadTiles = 2;

// The rows a staging of short rows fetches ahead of itself (kStagedRowsAhead on in its order), by
// address: rows in the order of an odometer's digits, each digit (the first turning fastest) a
// count of rows `step` bytes apart; past its last digit the next output row's (the height's
// stride on, which past a plane's last row of a contiguous grad_output is the next plane's
// first). It starts `ahead` rows on from where the staging stands.
class RowsAhead {
 public:
  struct Digit {
    int64_t count, step;
  };
  RowsAhead(uintptr_t first_row, std::initializer_list<Digit> digits, int64_t row_step,
            int64_t start, int64_t ahead)
      : at_(first_row), row_step_(row_step) {
    for (const Digit& digit : digits) digits_[used_++] = {digit, 0};
    // Rows in one turn of every digit; the start, `ahead` on, taken apart once.
    int64_t turn = 1;
    for (int d = 0; d < used_; ++d) turn *= std::max<int64_t>(digits_[d].digit.count, 1);
    int64_t index = start + ahead;
    at_ += index / turn * row_step_;
    index %= turn;
    for (int d = 0; d < used_; ++d) {
      const int64_t count = std::max<int64_t>(digits_[d].digit.count, 1);
      digits_[d].value = index % count;
      at_ += digits_[d].value * digits_[d].digit.step;
      index /= count;
    }
  }
  // Fetches `bytes` of the row it stands at into the L2 and moves on a row.
  LC_VECTOR_TARGET void fetch_and_next(int64_t bytes) {
    prefetch_l2(reinterpret_cast<const void*>(at_), bytes);
    next();
  }

 private:
  void next() {
    for (int d = 0; d < used_; ++d) {
      Place& place = digits_[d];
      at_ += place.digit.step;
      if (++place.value < place.digit.count) return;
      at_ -= place.value * place.digit.step;
      place.value = 0;
    }
    at_ += row_step_;
  }

  struct Place {
    Digit digit;
    int64_t value;
  };
  uintptr_t at_;
  int64_t row_step_;
  Place digits_[3]{};
  int used_ = 0;
};

// The runs of a staging of whole output rows of grad_output (grad_input_row's chunk of a whole
// input row, backward_row's `rows` rows at once), kStagedRowsAhead on from run `start` in its
// order: the group's filters in turn, `samples` samples one after another (from grad_output on),
// group after group, on into the output row after the `rows` staged together; each run from
// output column `column` of row i.
template <typename T>
RowsAhead output_row_runs_ahead(const T* grad_output, const Strides5& go_s, const Geometry& g,
                                int64_t z, int64_t i, int64_t rows, int64_t column,
                                int64_t samples, int64_t start) {
  const int64_t group_size = g.group_out_channels(), element = sizeof(T);
  // By address: `column` may lie before the row (in the padding), before grad_output itself.
  return RowsAhead(
      reinterpret_cast<uintptr_t>(grad_output) +
          (z * go_s.d + i * go_s.h + column * go_s.w) * element,
      {{group_size, go_s.c * element},
       {samples, go_s.n * element},
       {g.groups, group_size * go_s.c * element}},
      rows * go_s.h * element, start, kStagedRowsAhead);
}

// The squares of the row kernels' transpositions read (or write) a vector of each of
// V::kLanes locations' filters side by side, a pattern the hardware prefetchers do not follow: a
// standalone benchmark of fmri_decoder_3d's tiles transposed them at 12 GB/s from the L3 against
// 48 from the L2, and at 24 with this. Unshared filters lie tile after tile, so each square
// fetches its share of the tile kRowTileAheadTiles on: `tile` is where this tile's filters start
// (bytes from `base`), `tile_bytes` a tile's filters, `squares` the squares of its
// transposition. Nothing where `on` is false.
inline FetchAhead tile_ahead(bool on, const void* base, int64_t tile, int64_t tile_bytes,
                             int64_t squares) {
  return FetchAhead(reinterpret_cast<uintptr_t>(base) + tile + kRowTileAheadTiles * tile_bytes,
                    on ? ceil_div(tile_bytes, kLine) : 0, squares);
}

// ---- forward in place: S samples x OB vectors of C_out, each input element broadcast ----
// Where the batch is large against a patch row (forward_in_place_fits), the per-location forward
// skips packing: the location's filters are transposed once (C_out x K to K x C_out), and each
// input element its patch reads is broadcast from the input itself onto the OB vectors of C_out
// it multiplies, for S samples at once. Packing had cost 0.8x the products on DeepFace L6 (rows
// of 5); a transposition costs about 6 shuffles and moves per 16 weights, once for all samples.

// A rows x columns float matrix (row r at from + r * columns) transposed: to[c * rows + r].
// Where `stream`, whole vectors of `to` are streamed past the caches (stream_or_store).
template <typename V>
LC_VECTOR_TARGET void transpose_matrix(const float* from, int64_t rows, int64_t columns,
                                       float* to, bool stream) {
  for_transposed_squares<V>(
      from, rows, columns,
      [&](int64_t c, int64_t r0, int64_t present, typename V::Vec v) LC_VECTOR_TARGET {
        float* at = to + c * rows + r0;
        if (stream && present == V::kLanes)
          stream_or_store<V>(at, v);
        else
          V::store(V::tail(present), at, v);
      });
}

// The samples of an in-place block (register_blocks.h).
template <typename V, int OB>
constexpr int kInPlaceSamples = in_place_samples(V::kLanes, OB);
// The most vectors of C_out a block takes: on AVX2, 2 (4 x 2 samples had loaded 6 vectors per 8
// FMAs: convnet_local3's forward 1.14x slower than packing, against 0.71x on AVX-512).
template <typename V>
constexpr int kInPlaceVectors = V::kLanes == 16 ? 4 : 2;

// out[s * C_out + b * V::kLanes + lane] = sum over the patch of filters_t times sample s's input
// (sample s at input + s * sample_stride; `rows` as patch_rows leaves them, kernel column q of a
// row at row.source + (q - row.first) * step), for s < S and the OB vectors of C_out from
// filters_t on. Each patch row takes a step of `ahead` (the next location's filters). Kernel
// columns in the padding are skipped, not multiplied by zero (as in the row tiles): a non-finite
// weight there does not reach the output.
template <typename V, int OB, int S>
LC_VECTOR_TARGET void in_place_block(const float* input, int64_t sample_stride, int64_t step,
                                     const PatchRow* rows, int64_t row_count, int64_t kernel_w,
                                     const float* filters_t, int64_t out_channels, float* out,
                                     FetchAhead& ahead) {
  static_assert(OB <= kInPlaceVectors<V>);
  typename V::Vec acc[S][OB];
#pragma GCC unroll 16
  for (int s = 0; s < S; ++s)
#pragma GCC unroll 16
    for (int b = 0; b < OB; ++b) acc[s][b] = V::zero();
  for (int64_t r = 0; r < row_count; ++r) {
    ahead.step();
    const PatchRow& row = rows[r];
    const float* weights = filters_t + r * kernel_w * out_channels;
    const float* from = input + row.source;
    for (int64_t q = row.first; q < row.last; ++q, from += step) {
      typename V::Vec w[OB];
#pragma GCC unroll 16
      for (int b = 0; b < OB; ++b) w[b] = V::load(weights + q * out_channels + b * V::kLanes);
#pragma GCC unroll 16
      for (int s = 0; s < S; ++s) {
        const auto x = V::set1(from[s * sample_stride]);
#pragma GCC unroll 16
        for (int b = 0; b < OB; ++b) acc[s][b] = V::fmadd(w[b], x, acc[s][b]);
      }
    }
  }
#pragma GCC unroll 16
  for (int s = 0; s < S; ++s)
#pragma GCC unroll 16
    for (int b = 0; b < OB; ++b) V::store(out + s * out_channels + b * V::kLanes, acc[s][b]);
}

template <typename V, int OB, int S = kInPlaceSamples<V, OB>>
LC_VECTOR_TARGET void in_place_samples(int64_t count, const float* input, int64_t sample_stride,
                                       int64_t step, const PatchRow* rows, int64_t row_count,
                                       int64_t kernel_w, const float* filters_t,
                                       int64_t out_channels, float* out, FetchAhead& ahead) {
  if constexpr (S > 1) {
    if (count < S)
      return in_place_samples<V, OB, S - 1>(count, input, sample_stride, step, rows, row_count,
                                            kernel_w, filters_t, out_channels, out, ahead);
  }
  in_place_block<V, OB, S>(input, sample_stride, step, rows, row_count, kernel_w, filters_t,
                           out_channels, out, ahead);
}

// register_blocks.h's for_vector_blocks, in blocks of kInPlaceVectors.
template <typename V, typename Block>
LC_VECTOR_TARGET void for_vector_blocks(int64_t vectors, Block&& block) {
  cpu::for_vector_blocks<kInPlaceVectors<V>>(vectors, block);
}
// The forward of one location and channel group in place: out[n * C_out + o] for n < samples,
// from the group's filters transposed into filters_t (K x C_out floats of scratch). The next
// filters of the same size at `next` (none where null) fetched into the L2 while the blocks go
// by, a share per patch row of each block.
template <typename V>
LC_VECTOR_TARGET void forward_in_place(int64_t out_channels, int64_t samples, const float* input,
                                       int64_t sample_stride, int64_t step, const PatchRow* rows,
                                       const Geometry& g, const float* filters, float* filters_t,
                                       const float* next, float* out) {
  transpose_matrix<V>(filters, out_channels, g.patch_size(), filters_t, false);
  const int64_t row_count = patch_row_count(g), vectors = out_channels / V::kLanes;
  int64_t block_rows = 0;
  for_vector_blocks<V>(vectors, [&](auto ob, int64_t) LC_VECTOR_TARGET {
    block_rows += row_count * ceil_div(samples, kInPlaceSamples<V, decltype(ob)::value>);
  });
  const int64_t next_lines =
      next == nullptr ? 0 : ceil_div(out_channels * g.patch_size() * int64_t(sizeof(float)), kLine);
  FetchAhead ahead(reinterpret_cast<uintptr_t>(next), next_lines, block_rows);
  for_vector_blocks<V>(vectors, [&](auto ob, int64_t v) LC_VECTOR_TARGET {
    constexpr int OB = decltype(ob)::value;
    constexpr int S = kInPlaceSamples<V, OB>;
    for (int64_t n0 = 0; n0 < samples; n0 += S) {
      in_place_samples<V, OB>(std::min<int64_t>(S, samples - n0), input + n0 * sample_stride,
                              sample_stride, step, rows, row_count, g.kernel_w,
                              filters_t + v * V::kLanes, out_channels,
                              out + n0 * out_channels + v * V::kLanes, ahead);
    }
  });
}

// ---- a tile's staged outputs written into the (N, C_out, locations) output ----
// The per-location forward stages a tile's results as a (samples x C_out) matrix per location
// (staged_offset's group-major columns), where the output holds each (n, o) as a run of the
// tile's locations, a whole plane from the next. V::kLanes locations x V::kLanes columns at a
// time are transposed in registers, so that each run is one (rounding) store: a scalar loop
// that rounded each bfloat16 apart had taken 15% of DeepFace L6's forward.

// out[(n * C_out + o) * locations + t] = staged[t * staged_stride + staged_offset(n, o)]
// (+ bias_rows[o * bias_stride + t] where bias_rows is given), for t < width, n < samples. The
// run the row's next tile writes is fetched for writing meanwhile (the hardware prefetchers do
// not follow runs a plane apart).
template <typename V, typename T>
LC_VECTOR_TARGET void write_tile(const float* staged, int64_t staged_stride, int64_t width,
                                 const Geometry& g, int64_t samples, const float* bias_rows,
                                 int64_t bias_stride, T* out, int64_t locations) {
  const int64_t columns = samples * g.out_channels, group_size = g.group_out_channels();
  for (int64_t t0 = 0; t0 < width; t0 += V::kLanes) {
    const int64_t present = std::min<int64_t>(V::kLanes, width - t0);
    const auto write = V::tail(present);
    int64_t group = 0, n = 0, c = 0;  // staged column j's
    for (int64_t j0 = 0; j0 < columns; j0 += V::kLanes) {
      const auto read = V::tail(columns - j0);
      typename V::Vec square[V::kLanes];
#pragma GCC unroll 16
      for (int t = 0; t < V::kLanes; ++t)
        square[t] = t < present ? V::load(read, staged + (t0 + t) * staged_stride + j0)
                                : V::zero();
      V::transpose(square);
#pragma GCC unroll 16
      for (int j = 0; j < V::kLanes; ++j) {
        if (j0 + j >= columns) break;
        const int64_t o = group * group_size + c;
        T* run = out + (n * g.out_channels + o) * locations;
        if (t0 == 0) __builtin_prefetch(run + width, /*write=*/1);
        const typename V::Vec sums =
            bias_rows == nullptr
                ? square[j]
                : V::add(square[j], V::load(write, bias_rows + o * bias_stride + t0));
        V::store(write, run + t0, sums);
        if (++c == group_size) {
          c = 0;
          if (++n == samples) n = 0, ++group;
        }
      }
    }
  }
}

// ---- grad_weight in place: KB patch columns x OB vectors of C_out, summed over the samples ----
// The adjoint of the forward in place, where it fits: each patch column's input element is
// broadcast from the input onto the staged grad_output's vectors of C_out, the sums kept as
// K x C_out (sums_t) and transposed into the filter bank; the patches are not packed.

// sums_t[k * C_out + b * V::kLanes + lane] (+)= sum over n < samples of input element
// sources[kb] of sample n (at input + n * sample_stride) times grad_output[n * C_out + b *
// V::kLanes + lane], for the KB patch columns k = columns[kb], summed sample after sample onto
// what sums_t holds where accumulate.
template <typename V, int KB, int OB>
LC_VECTOR_TARGET void in_place_grad_block(const float* input, int64_t sample_stride,
                                          int64_t samples, const int64_t* sources,
                                          const int64_t* columns, const float* grad_output,
                                          int64_t out_channels, bool accumulate, float* sums_t) {
  typename V::Vec acc[KB][OB];
#pragma GCC unroll 16
  for (int kb = 0; kb < KB; ++kb)
#pragma GCC unroll 16
    for (int b = 0; b < OB; ++b)
      acc[kb][b] = accumulate ? V::load(sums_t + columns[kb] * out_channels + b * V::kLanes)
                              : V::zero();
  for (int64_t n = 0; n < samples; ++n) {
    typename V::Vec go[OB];
#pragma GCC unroll 16
    for (int b = 0; b < OB; ++b) go[b] = V::load(grad_output + n * out_channels + b * V::kLanes);
    const float* sample = input + n * sample_stride;
#pragma GCC unroll 16
    for (int kb = 0; kb < KB; ++kb) {
      const auto x = V::set1(sample[sources[kb]]);
#pragma GCC unroll 16
      for (int b = 0; b < OB; ++b) acc[kb][b] = V::fmadd(go[b], x, acc[kb][b]);
    }
  }
#pragma GCC unroll 16
  for (int kb = 0; kb < KB; ++kb)
#pragma GCC unroll 16
    for (int b = 0; b < OB; ++b)
      V::store(sums_t + columns[kb] * out_channels + b * V::kLanes, acc[kb][b]);
}

// The patch columns of an in-place grad_weight block (register_blocks.h).
template <typename V, int OB>
constexpr int kInPlaceColumns = in_place_columns(V::kLanes, OB);

template <typename V, int OB, int KB = kInPlaceColumns<V, OB>>
LC_VECTOR_TARGET void in_place_grad_columns(int64_t count, const float* input,
                                            int64_t sample_stride, int64_t samples,
                                            const int64_t* sources, const int64_t* columns,
                                            const float* grad_output, int64_t out_channels,
                                            bool accumulate, float* sums_t) {
  if constexpr (KB > 1) {
    if (count < KB)
      return in_place_grad_columns<V, OB, KB - 1>(count, input, sample_stride, samples, sources,
                                                  columns, grad_output, out_channels, accumulate,
                                                  sums_t);
  }
  in_place_grad_block<V, KB, OB>(input, sample_stride, samples, sources, columns, grad_output,
                                 out_channels, accumulate, sums_t);
}

// grad_filters (C_out x K, row o at o * K) (+)= the products of one location and channel group
// over `samples` samples, in place: grad_output staged (row n at n * C_out), the input read as
// forward_in_place reads it. Where accumulate, grad_filters is transposed into sums_t first and
// every sum goes on sample after sample from there, as the packed products sum: for finite
// values the results are theirs to the bit. The columns in the padding are set to zero, not
// summed as grad_output times zero (a non-finite grad_output leaves them 0, where the packed
// products give NaN). Scratch: sums_t (K x C_out floats), and 2 K int64 at `columns` (the patch
// columns that read the input, and where). Where `stream`, whole vectors of grad_filters are
// streamed past the caches.
template <typename V>
LC_VECTOR_TARGET void grad_filters_in_place(int64_t out_channels, int64_t samples,
                                            const float* input, int64_t sample_stride,
                                            int64_t step, const PatchRow* rows,
                                            const Geometry& g, const float* grad_output,
                                            bool accumulate, float* sums_t, int64_t* columns,
                                            float* grad_filters, bool stream) {
  const int64_t patch_size = g.patch_size();
  if (accumulate) transpose_matrix<V>(grad_filters, out_channels, patch_size, sums_t, false);
  int64_t* sources = columns + patch_size;
  const int64_t count = input_columns(rows, g, step, columns, sources, [&](int64_t k) {
    // A column in the padding reads zeros: its sums are zero.
    if (!accumulate) std::fill_n(sums_t + k * out_channels, out_channels, 0.0f);
  });
  for_vector_blocks<V>(out_channels / V::kLanes, [&](auto ob, int64_t v) LC_VECTOR_TARGET {
    constexpr int OB = decltype(ob)::value;
    constexpr int KB = kInPlaceColumns<V, OB>;
    for (int64_t c = 0; c < count; c += KB) {
      in_place_grad_columns<V, OB>(std::min<int64_t>(KB, count - c), input, sample_stride,
                                   samples, sources + c, columns + c,
                                   grad_output + v * V::kLanes, out_channels, accumulate,
                                   sums_t + v * V::kLanes);
    }
  });
  transpose_matrix<V>(sums_t, patch_size, out_channels, grad_filters, stream);
}

// ---- forward by row tiles: FB filters, each a vector over V::kLanes of the tile's locations ----
// filters_t[(k*FB + f)*kRowTileLocations + t] is the weight of location t of the vector's part of
// the tile (the FB vectors of one k lie together, so one address register reaches them all);
// bias[f*kRowTileLocations + t] likewise. S samples at once, sample s at sample + s*s.n, its
// outputs at out + s*sample_out; `sample` starts at the filters' channel group. The input row of
// (c, a, p) read by kernel column q is one vector over t under columns[q], its lanes inside the
// tile and the input row; `rows` the output row's patch rows (for_row_tile_patch_rows).
// `stream`: each output vector fills whole cache lines that nothing reads back here, so it goes
// to memory without first reading them. Each patch row takes a step of `ahead`
// (forward_row_run's next banks).
template <typename V, typename T, int FB, int S>
LC_VECTOR_TARGET void row_tile_block(const T* sample, const Strides5& s, const Geometry& g,
                                     const int64_t* rows, int64_t j0,
                                     typename V::Mask width_mask,
                                     const typename V::Mask* columns, const float* filters_t,
                                     const float* bias, T* out, int64_t sample_out,
                                     int64_t plane, bool stream, FetchAhead& ahead) {
  typename V::Vec acc[S][FB];
#pragma GCC unroll 16
  for (int n = 0; n < S; ++n)
#pragma GCC unroll 16
    for (int f = 0; f < FB; ++f) acc[n][f] = V::load(bias + f * kRowTileLocations);
  int64_t k = 0;
  // In locals: read once, not once per patch row (a store might alias them).
  const int64_t kernel_w = g.kernel_w, first_x = j0 - g.pad_w, dilation_w = g.dilation_w;
  const int64_t step_n = s.n;
  for_row_tile_patch_rows<S>(
      rows, patch_row_count(g), step_n, j0, sample, ahead,
      [&](const T* row) LC_VECTOR_TARGET {
        for (int64_t q = 0; q < kernel_w; ++q, ++k) {
          // Location j0 + t reads input column x + t; lanes outside the row read the padding.
          const int64_t x = first_x + q * dilation_w;
          typename V::Vec values[S];
#pragma GCC unroll 16
          for (int n = 0; n < S; ++n) values[n] = V::load(columns[q], row + n * step_n + x);
#pragma GCC unroll 16
          for (int f = 0; f < FB; ++f) {
            const auto weights = V::load(filters_t + (k * FB + f) * kRowTileLocations);
#pragma GCC unroll 16
            for (int n = 0; n < S; ++n) acc[n][f] = V::fmadd(weights, values[n], acc[n][f]);
          }
        }
      },
      [&] { k += kernel_w; });
#pragma GCC unroll 16
  for (int n = 0; n < S; ++n) {
#pragma GCC unroll 16
    for (int f = 0; f < FB; ++f) {
      T* to = out + n * sample_out + f * plane;
      if (!stream) __builtin_prefetch(to + kRowTilePrefetchTiles * kRowTileLocations, 1);
      // Only a float vector that is a whole line is streamed (AVX-512's; forward_row_run).
      if constexpr (std::is_same_v<T, float> && sizeof(typename V::Vec) == kLine) {
        if (stream) {
          V::stream(to, acc[n][f]);
          continue;
        }
      }
      V::store(width_mask, to, acc[n][f]);
    }
  }
}

// Samples a row tile block takes at once (vector_kernels.h: row_tile_samples).
template <typename V>
constexpr int row_tile_samples(int filters) {
  return cpu::row_tile_samples(V::kLanes, filters);
}

// The most outputs of one row tile block per location: filters x samples.
template <typename V>
constexpr int row_tile_block_outputs() {
  int most = 0;
  for (int filters = 1; filters <= V::kRowTileFilters; ++filters)
    most = std::max(most, filters * row_tile_samples<V>(filters));
  return most;
}

template <typename V, typename T>
struct RowTileBlocks {
  using Fn = void (*)(const T*, const Strides5&, const Geometry&, const int64_t*, int64_t,
                      typename V::Mask, const typename V::Mask*, const float*, const float*, T*,
                      int64_t, int64_t, bool, FetchAhead&);
  // The sample counts a block of FB filters runs: row_tile_samples(FB), then halved down to one
  // for what is left of the batch (a batch of 4 with one filter on AVX-512 is one call of 4,
  // not four of 1).
  static constexpr int kSteps = 4;
  static_assert(row_tile_samples<V>(1) <= 1 << (kSteps - 1), "halving must reach one sample");
  static constexpr int samples_at(int filters, int step) {
    return std::max(1, row_tile_samples<V>(filters) >> step);
  }
  // [FB - 1][step]: samples_at(FB, step) samples at once.
  template <int F, int... J>
  static constexpr std::array<Fn, kSteps> steps(std::integer_sequence<int, J...>) {
    return {&row_tile_block<V, T, F, samples_at(F, J)>...};
  }
  template <int... F>
  static constexpr std::array<std::array<Fn, kSteps>, sizeof...(F)> all(
      std::integer_sequence<int, F...>) {
    return {steps<F + 1>(std::make_integer_sequence<int, kSteps>{})...};
  }
  static constexpr auto table = all(std::make_integer_sequence<int, V::kRowTileFilters>{});
};

// The parts of one tile's scratch in a forward row run (row_tile_scratch(g) floats, in this
// order): the transposed filters, the bias vectors, the input lanes of each kernel column.
template <typename V>
struct RowTileParts {
  RowTileParts(const Geometry& g, float* tile)
      : filters(tile),
        bias(filters + g.out_channels * g.patch_size() * kRowTileLocations),
        columns(reinterpret_cast<typename V::Mask*>(bias + g.out_channels * kRowTileLocations)) {
    static_assert(sizeof(typename V::Mask) * (kRowTileLocations / V::kLanes) <=
                      kRowTileLocations * sizeof(float),
                  "a kernel column's masks fit its share of row_tile_scratch");
  }
  float* filters;
  float* bias;
  typename V::Mask* columns;  // [vector of the tile][kernel column]
};

// One tile of a forward row run into its scratch (row_tile_scratch(g) floats): its filters as
// floats, transposed so that the tile's weights of one (o, k) lie together, in blocks of
// filter_block filters of one group laid out as row_tile_block reads them; its bias, a vector
// over the tile per filter (the accumulators' start); the input lanes each kernel column reads,
// per vector of the tile (the same for every sample, filter and kernel row; working them out per
// read cost as much as the FMAs on AVX2).
// Where Pairs (bfloat16 by vdpbf16ps), the filters are avx512_bf16::stage_pair_filters' pairs.
template <typename V, bool Pairs, typename T>
LC_VECTOR_TARGET void stage_row_tile(const Geometry& g, int64_t z, int64_t i, int64_t j0,
                                     int64_t width, const T* weight, const T* bias,
                                     bool shared_bias, FetchAhead& ahead, float* scratch) {
  constexpr int64_t filter_block = V::kRowTileFilters;
  const int64_t patch_size = g.patch_size(), filter_size = g.out_channels * patch_size;
  const int64_t plane = g.locations();
  const int64_t first = (z * g.out_h + i) * g.out_w + j0;
  const RowTileParts<V> parts(g, scratch);
  // Each location's weight region (the location itself where nothing is shared).
  int64_t regions[kRowTileLocations];
  for (int64_t t = 0; t < width; ++t) regions[t] = g.region_of(z, i, j0 + t);
  if constexpr (Pairs) {
    const T* banks[kRowTileLocations];
    for (int64_t t = 0; t < width; ++t) banks[t] = weight + regions[t] * filter_size;
    avx512_bf16::stage_pair_filters(g, banks, width, filter_block, ahead,
                                    reinterpret_cast<uint32_t*>(parts.filters));
  } else {
    for_filter_blocks(g, filter_block, [&](int64_t, int64_t o, int64_t block) LC_VECTOR_TARGET {
      // A square of V::kLanes locations x V::kLanes columns of K at a time, read a vector per
      // location and transposed in registers; lanes past the tile are zero.
      float* to = parts.filters + o * patch_size * kRowTileLocations;
      for (int64_t f = 0; f < block; ++f) {
        for (int64_t k0 = 0; k0 < patch_size; k0 += V::kLanes) {
          const int64_t columns = std::min<int64_t>(V::kLanes, patch_size - k0);
          for (int64_t t0 = 0; t0 < kRowTileLocations; t0 += V::kLanes) {
            ahead.step();
            typename V::Vec square[V::kLanes];
            for (int64_t r = 0; r < V::kLanes; ++r)
              square[r] = t0 + r < width ? V::load(V::tail(columns),
                                                   weight + regions[t0 + r] * filter_size +
                                                       (o + f) * patch_size + k0)
                                         : V::zero();
            V::transpose(square);
            for (int64_t c = 0; c < columns; ++c)
              V::store(to + ((k0 + c) * block + f) * kRowTileLocations + t0, square[c]);
          }
        }
      }
    });
  }
  for (int64_t o = 0; o < g.out_channels; ++o) {
    float* to = parts.bias + o * kRowTileLocations;
    if (bias == nullptr || shared_bias || g.shares_weights()) {
      for (int64_t t = 0; t < kRowTileLocations; ++t)
        to[t] = bias == nullptr || t >= width ? 0.0f
                : shared_bias                 ? to_float(bias[o])
                                              : to_float(bias[o * g.regions() + regions[t]]);
      continue;
    }
    for (int64_t t = 0; t < kRowTileLocations; t += V::kLanes)
      V::store(to + t, V::load(V::tail(std::max<int64_t>(width - t, 0)),
                               bias + o * plane + first + t));
  }
  for (int64_t t = 0; t < width; t += V::kLanes)
    for (int64_t q = 0; q < g.kernel_w; ++q)
      parts.columns[t / V::kLanes * g.kernel_w + q] = V::both(
          V::tail(width - t), V::columns(j0 + t - g.pad_w + q * g.dilation_w, 0, g.in_w));
}

// Where Pairs (bfloat16 on AVX512-BF16, pair_row_tiles_fit), the blocks and the staging of the
// filters are avx512_bf16's, by pairs of kernel columns.
template <typename V, bool Pairs, typename T>
LC_VECTOR_TARGET void forward_row_run(const T* input, const Strides5& s, const Geometry& g,
                                      int64_t z, int64_t i, int64_t j0, int64_t width,
                                      int64_t samples, const T* weight, const T* bias,
                                      bool shared_bias, T* out, float* scratch) {
  constexpr int64_t filter_block = V::kRowTileFilters;
  static_assert(!Pairs || (V::kLanes == kRowTileLocations && filter_block <= kPairRowTileFilters &&
                           row_tile_samples<V>(1) <= kPairRowTileSamples),
                "the pairs' blocks take the widened blocks' sizes");
  const int64_t patch_size = g.patch_size(), filter_size = g.out_channels * patch_size;
  // The staged filters' columns per filter: K floats, or the pairs' words.
  const int64_t staged_columns = Pairs ? pair_row_tile_pairs(g) : patch_size;
  const int64_t group_size = g.group_out_channels();
  const int64_t plane = g.locations();
  const int64_t tiles = ceil_div(width, kRowTileLocations), tile_floats = row_tile_scratch(g);
  const int64_t row_first = (z * g.out_h + i) * g.out_w;
  // The run's patch rows, then its tiles (row_run_scratch).
  int64_t* rows = reinterpret_cast<int64_t*>(scratch);
  for_each_patch_row(g, s, z, i, [&](int64_t r, int64_t start) { rows[r] = start; });
  scratch += row_run_rows_floats(g);
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t t0 = tile * kRowTileLocations;
    // Each tile's squares fetch the unshared filters kRowTileAheadTiles tiles on, from where
    // the tile's own start (their lines per square round up, so one fetcher for the whole run
    // would drift ahead).
    FetchAhead ahead = tile_ahead(!g.shares_weights(), weight,
                                  (row_first + j0 + t0) * filter_size * int64_t(sizeof(T)),
                                  kRowTileLocations * filter_size * int64_t(sizeof(T)),
                                  g.out_channels * ceil_div(patch_size, V::kLanes) *
                                      (kRowTileLocations / V::kLanes));
    stage_row_tile<V, Pairs>(g, z, i, j0 + t0, std::min(kRowTileLocations, width - t0), weight,
                             bias, shared_bias, ahead, scratch + tile * tile_floats);
  }
  // The banks of the run's width after it (the thread's next run, as a rule), fetched into the
  // L2 spread over the blocks' patch rows, a few lines a row; the staging's fetches come in
  // bursts (fmri_decoder_3d's forward 0.94-0.97x, medvol_32cube_c2's 0.92, in one process;
  // genomics, depthwise and cunn232_c1 1.00). A step per block and patch row (the blocks
  // counted about: the last samples may go in smaller blocks).
  const int64_t blocks =
      ceil_div(g.out_channels, filter_block) *
      ceil_div(samples, row_tile_samples<V>(std::min(filter_block, group_size))) * tiles *
      (kRowTileLocations / V::kLanes);
  FetchAhead fetch_next(
      reinterpret_cast<uintptr_t>(weight) +
          (row_first + j0 + width) * filter_size * int64_t(sizeof(T)),
      g.shares_weights() ? 0 : ceil_div(width * filter_size * int64_t(sizeof(T)), kLine),
      blocks * patch_row_count(g));
  for_filter_blocks(g, filter_block, [&](int64_t o0, int64_t o, int64_t block) LC_VECTOR_TARGET {
    const int64_t channel_offset = o0 / group_size * g.group_in_channels() * s.c;
    using Blocks = RowTileBlocks<V, T>;
    for (int64_t n = 0; n < samples;) {
      int step = 0;
      while (step + 1 < Blocks::kSteps &&
             Blocks::samples_at(static_cast<int>(block), step) > samples - n)
        ++step;
      const int block_samples = Blocks::samples_at(static_cast<int>(block), step);
      const auto run = [&]() {
        if constexpr (Pairs)
          return avx512_bf16::pair_row_tile_block(static_cast<int>(block), block_samples);
        else
          return Blocks::table[block - 1][step];
      }();
      // The block goes along the whole run before the next block starts.
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const int64_t t0 = tile * kRowTileLocations;
        const int64_t tile_width = std::min(kRowTileLocations, width - t0);
        const int64_t first = row_first + j0 + t0;
        // Outputs of whole tiles that start a cache line fill whole lines. Where a vector is
        // less than a line (16-bit outputs: two tiles to a line; AVX2's floats: two vectors to
        // a tile), the block writes the line's tiles into `lines` (a line per filter and
        // sample), which go to memory past the caches a line at a time, without first being
        // read. Stored in place, each line had been read from memory before its halves were
        // written; streamed as halves in turn, the halves of a line left the write-combining
        // buffers apart, each a partial write (forced AVX2 on a Zen 3: cunn232_c1's forward
        // twice as slow as by lines).
        constexpr int64_t kLineOutputs = kLine / int64_t(sizeof(T));
        constexpr int64_t kLineTiles = kLineOutputs / kRowTileLocations;
        static_assert(kLineTiles * kRowTileLocations == kLineOutputs);
        constexpr bool kVectorIsLine = V::kLanes * int64_t(sizeof(T)) == kLine;
        const bool fills_lines = width - t0 >= kLineOutputs && plane % kLineOutputs == 0 &&
                                 reinterpret_cast<uintptr_t>(out + first) % kLine == 0;
        if (!kVectorIsLine && fills_lines) {
          alignas(kLine) T lines[row_tile_block_outputs<V>() * kLineOutputs];
          for (int64_t part = 0; part < kLineTiles; ++part) {
            const RowTileParts<V> parts(g, scratch + (tile + part) * tile_floats);
            for (int64_t t = 0; t < kRowTileLocations; t += V::kLanes) {
              run(input + n * s.n + channel_offset, s, g, rows,
                  j0 + t0 + part * kRowTileLocations + t, V::tail(kRowTileLocations - t),
                  parts.columns + t / V::kLanes * g.kernel_w,
                  parts.filters + o * staged_columns * kRowTileLocations + t,
                  parts.bias + o * kRowTileLocations + t,
                  lines + part * kRowTileLocations + t, block * kLineOutputs, kLineOutputs,
                  false, fetch_next);
            }
          }
          for (int64_t m = 0; m < block_samples; ++m)
            for (int64_t f = 0; f < block; ++f)
              V::stream_line(out + ((n + m) * g.out_channels + o + f) * plane + first,
                             lines + (m * block + f) * kLineOutputs);
          tile += kLineTiles - 1;
          continue;
        }
        const RowTileParts<V> parts(g, scratch + tile * tile_floats);
        // AVX-512's float vectors of such a tile are whole lines, streamed as they are.
        const bool whole_lines = kVectorIsLine && fills_lines;
        for (int64_t t = 0; t < tile_width; t += V::kLanes) {
          run(input + n * s.n + channel_offset, s, g, rows, j0 + t0 + t,
              V::tail(tile_width - t), parts.columns + t / V::kLanes * g.kernel_w,
              parts.filters + o * staged_columns * kRowTileLocations + t,
              parts.bias + o * kRowTileLocations + t,
              out + (n * g.out_channels + o) * plane + first + t, g.out_channels * plane, plane,
              whole_lines, fetch_next);
        }
      }
      n += block_samples;
    }
  });
  _mm_sfence();  // the streamed stores are ordered before whatever follows
}

// The part [first, first + count) of output rows `length` long that stage_row stages, worked out
// once for all the rows a caller stages alike: the vectors wholly inside both the part and the
// row, [body, body_end), and the lanes of the others (at most kHeld of them; more, as a part
// reaching far into the padding, are worked out per row). Worked out per row, each masked
// vector's lanes had cost about 35 instructions, two of them a row (callgrind, cunn232_c1's
// backward at batch 64: 19M of its 60M instructions a call).
template <typename V>
struct StagedRowPart {
  static constexpr int kHeld = 4;
  int64_t first, count, length, body, body_end;
  bool held;                                        // whether loads and stores hold every one
  typename V::Mask loads[kHeld], stores[kHeld];     // in order: the head's, then the tail's

  LC_VECTOR_TARGET StagedRowPart(int64_t first, int64_t count, int64_t length)
      : first(first), count(count), length(length) {
    body = std::min(count, ceil_div(std::max<int64_t>(0, -first), V::kLanes) * V::kLanes);
    const int64_t inside = std::min(count, length - first);
    body_end = body + std::max<int64_t>(0, inside - body) / V::kLanes * V::kLanes;
    held = ceil_div(body, V::kLanes) + ceil_div(count - body_end, V::kLanes) <= kHeld;
    int m = 0;
    const auto hold = [&](int64_t jj) LC_VECTOR_TARGET {
      loads[m] = load_lanes(jj);
      stores[m++] = V::tail(count - jj);
    };
    for (int64_t jj = 0; held && jj < body; jj += V::kLanes) hold(jj);
    for (int64_t jj = body_end; held && jj < count; jj += V::kLanes) hold(jj);
  }
  // The lanes of the vector at jj inside both the part and the row.
  LC_VECTOR_TARGET typename V::Mask load_lanes(int64_t jj) const {
    return V::both(V::tail(count - jj), V::columns(first + jj, 0, length));
  }
};

// Stages `part.count` elements of one output row of grad_output (`row`: its column 0, columns
// `step` apart) as floats: to[jj] = row[(part.first + jj) * step] where 0 <= part.first + jj <
// part.length, else 0. Contiguous rows go a vector at a time, the elements `ahead` columns on
// fetched now (every line of them; none where ahead is 0): each sample's row is a stream of its
// own, as in row_tile_block. Only the vectors that reach past the part or the row take masks:
// built for every vector, they had cost about 45 instructions each (callgrind, cunn232_c1's
// backward at batch 16: the staging 16.3M instructions, then 4.9M; in one process on the Zen 3,
// backward: cunn232_c1 float32 0.75-0.80x, bfloat16 0.91x, depthwise_32x32_c32 0.82x,
// genomics_1d_50k 0.75x, fmri_decoder_3d 0.93x).
template <typename V, typename T>
LC_VECTOR_TARGET void stage_row(const T* row, int64_t step, const StagedRowPart<V>& part,
                                int64_t ahead, float* to) {
  const int64_t first = part.first, count = part.count;
  if (step == 1) {
    // By address (the part may lie past the row's ends: a prefetch never faults), from the line
    // of its first element through that of its last.
    const uintptr_t at_ahead = reinterpret_cast<uintptr_t>(row) + (first + ahead) * sizeof(T);
    for (uintptr_t at = at_ahead / kLine * kLine; ahead != 0 && at < at_ahead + count * sizeof(T);
         at += kLine)
      _mm_prefetch(reinterpret_cast<const char*>(at), _MM_HINT_T0);
    int m = 0;  // the masked vector's place in part's masks
    const auto masked = [&](int64_t jj) {
      if (part.held) {
        V::store(part.stores[m], to + jj, V::load(part.loads[m], row + first + jj));
        ++m;
        return;
      }
      V::store(V::tail(count - jj), to + jj, V::load(part.load_lanes(jj), row + first + jj));
    };
    int64_t jj = 0;
    for (; jj < part.body; jj += V::kLanes) masked(jj);
    for (; jj < part.body_end; jj += V::kLanes) V::store(to + jj, V::load(row + first + jj));
    for (; jj < count; jj += V::kLanes) masked(jj);
    return;
  }
  for (int64_t jj = 0; jj < count; ++jj) {
    const int64_t j = first + jj;
    to[jj] = j >= 0 && j < part.length ? to_float(row[j * step]) : 0.0f;
  }
}

// ---- grad_input by output rows: S samples, each a vector over V::kLanes input columns ----
// One channel group's (c, a, p) rows of the patch, each adding onto the input row dest[r] of a
// sample (-1: the row lies in the padding) the columns [x0, x0 + columns): per destination
// vector, the sum over kernel columns q and the group's filters o of staged grad_output times
// staged filters, both read shifted by (kernel_w - 1 - q) * dilation_w (grad_input_row's
// layouts), then one load-add-store of the destination.
template <typename V, int S>
LC_VECTOR_TARGET void grad_input_rows_block(const float* go_staged, const float* filters_t,
                                            const int64_t* dest, const Geometry& g,
                                            int64_t span, int64_t x0, int64_t columns,
                                            int64_t sample_size, float* grad_input,
                                            FetchAhead& ahead) {
  // Two divisions each: worked out once, not per iteration (the compiler did not hoist them).
  const int64_t group_size = g.group_out_channels(), rows = patch_row_count(g);
  for (int64_t r = 0; r < rows; ++r) {
    ahead.step();
    if (dest[r] < 0) continue;
    float* to = grad_input + dest[r] + x0;
    for (int64_t v = 0; v < columns; v += V::kLanes) {
      typename V::Vec acc[S];
#pragma GCC unroll 16
      for (int s = 0; s < S; ++s) acc[s] = V::zero();
      for (int64_t q = 0; q < g.kernel_w; ++q) {
        const int64_t shift = v + (g.kernel_w - 1 - q) * g.dilation_w;
        const float* weights = filters_t + (r * g.kernel_w + q) * group_size * span + shift;
        for (int64_t o = 0; o < group_size; ++o) {
          const auto w = V::load(weights + o * span);
#pragma GCC unroll 16
          for (int s = 0; s < S; ++s)
            acc[s] = V::fmadd(V::load(go_staged + (s * group_size + o) * span + shift), w,
                              acc[s]);
        }
      }
      const auto lanes = V::tail(columns - v);
#pragma GCC unroll 16
      for (int s = 0; s < S; ++s) {
        float* row = to + s * sample_size + v;
        V::store(lanes, row, V::add(V::load(lanes, row), acc[s]));
      }
    }
  }
}

// grad_input_rows_block for one filter per group, at most kHeldKernelColumns kernel columns and
// many patch rows (fmri_decoder_3d's 144): the S x KW grad_output vectors a destination vector
// reads are the same for every patch row, so they stay in registers while the rows go by, and a
// row reads only its KW filter vectors; the general block reloads all S x KW per row, each
// straddling two cache lines (fmri_decoder_3d's grad_input 0.78-0.87x). VB destination vectors
// at once, [v0, v0 + VB * V::kLanes) of the chunk's columns, each with lanes left. The sums run
// in the general block's order (q up from zero), so the results are the same to the bit. Each
// patch row takes a step of `ahead` (grad_input_row's next banks).
constexpr int kHeldKernelColumns = 5;
// The fewest patch rows for which holding pays: the S x KW loads are made once for all the
// rows (genomics_1d_50k's one row: 1.09x slower; depthwise_32x32_c32's 9: 0.97x).
constexpr int64_t kHeldMinRows = 16;

template <typename V, int S, int KW, int VB>
LC_VECTOR_TARGET void grad_input_rows_held(const float* go_staged, const float* filters_t,
                                           const int64_t* dest, const Geometry& g, int64_t span,
                                           int64_t x0, int64_t v0, int64_t columns,
                                           int64_t sample_size, float* grad_input,
                                           FetchAhead& ahead) {
  const int64_t rows = patch_row_count(g);
  typename V::Vec held[VB][S][KW];
  typename V::Mask lanes[VB];
#pragma GCC unroll 16
  for (int b = 0; b < VB; ++b) {
    lanes[b] = V::tail(columns - v0 - b * V::kLanes);
#pragma GCC unroll 16
    for (int s = 0; s < S; ++s)
#pragma GCC unroll 16
      for (int q = 0; q < KW; ++q)
        held[b][s][q] = V::load(go_staged + s * span + v0 + b * V::kLanes +
                                (KW - 1 - q) * g.dilation_w);
  }
  for (int64_t r = 0; r < rows; ++r) {
    ahead.step();
    if (dest[r] < 0) continue;
#pragma GCC unroll 16
    for (int b = 0; b < VB; ++b) {
      const int64_t v = v0 + b * V::kLanes;
      const float* weights = filters_t + r * KW * span + v;
      typename V::Vec acc[S];
#pragma GCC unroll 16
      for (int s = 0; s < S; ++s) acc[s] = V::zero();
#pragma GCC unroll 16
      for (int q = 0; q < KW; ++q) {
        const auto w = V::load(weights + q * span + (KW - 1 - q) * g.dilation_w);
#pragma GCC unroll 16
        for (int s = 0; s < S; ++s) acc[s] = V::fmadd(held[b][s][q], w, acc[s]);
      }
      // Every sample's load before any store: the samples' rows may lie a multiple of 4 KB
      // apart (fmri_decoder_3d's do), and a load behind a store to the same address bits
      // 0-11 can wait on it (a first version, one vector of columns at a time: 1.22x slower
      // than the general block with each sample's load-add-store in turn, 1.10x with this).
      float* to = grad_input + dest[r] + x0 + v;
      typename V::Vec before[S];
#pragma GCC unroll 16
      for (int s = 0; s < S; ++s) before[s] = V::load(lanes[b], to + s * sample_size);
#pragma GCC unroll 16
      for (int s = 0; s < S; ++s)
        V::store(lanes[b], to + s * sample_size, V::add(before[s], acc[s]));
    }
  }
}

// grad_input_rows_held over a chunk's samples and columns: two samples and two vectors of
// columns at once, 2 x 2 x KW vectors held, which AVX-512's 32 registers allow (AVX2's 16 do
// not: there, held rows lost against the general block, 1.10-1.34x).
template <typename V, int KW>
LC_VECTOR_TARGET void grad_input_chunk_held(const float* go_staged, const float* filters_t,
                                            const int64_t* dest, const Geometry& g,
                                            int64_t span, int64_t x0, int64_t columns,
                                            int64_t samples, int64_t sample_size,
                                            float* grad_input, FetchAhead& ahead) {
  constexpr int kVectors = 2;
  const auto block = [&](auto samples_now, int64_t n) {
    constexpr int S = decltype(samples_now)::value;
    int64_t v0 = 0;
    for (; v0 + (kVectors - 1) * V::kLanes < columns; v0 += kVectors * V::kLanes) {
      grad_input_rows_held<V, S, KW, kVectors>(go_staged + n * span, filters_t, dest, g, span,
                                               x0, v0, columns, sample_size,
                                               grad_input + n * sample_size, ahead);
    }
    for (; v0 < columns; v0 += V::kLanes) {
      grad_input_rows_held<V, S, KW, 1>(go_staged + n * span, filters_t, dest, g, span, x0, v0,
                                        columns, sample_size, grad_input + n * sample_size,
                                        ahead);
    }
  };
  int64_t n = 0;
  for (; n + 2 <= samples; n += 2) block(std::integral_constant<int, 2>{}, n);
  if (n < samples) block(std::integral_constant<int, 1>{}, n);
}

// ---- grad_input by output rows, by sources: each source's sums over the filters first ----
// grad_input_rows_block sums a destination vector's kernel columns and filters at once, reading
// for each FMA a staged grad_output vector and a filter vector, both shifted by the kernel
// column (most straddling two cache lines): 1.25 loads per FMA at 4 samples. Where a group has
// many filters (grad_input_by_sources), each source vector (V::kLanes output columns of the
// span) of SB samples sums over the filters first, for KB patch columns at once: the SB
// grad_output vectors are loaded once per filter for all KB columns, (SB + KB) unshifted loads
// per SB x KB FMAs (10 per 24 on AVX-512). The sums go to `sums` (sample s's patch column k at
// (s * K + k) * stride, stride source_sums_stride), and add_source_sums adds each destination
// vector's kernel columns from there. Masked: the last source vector, under `lanes`.

// sums for patch columns [k0, k0 + KB) of SB samples at source vector jj0.
template <typename V, int SB, int KB, bool Masked>
LC_VECTOR_TARGET void source_sums_block(const float* go_staged, const float* filters_t,
                                        int64_t group_size, int64_t span, int64_t jj0,
                                        typename V::Mask lanes, int64_t k0, int64_t patch_size,
                                        int64_t stride, float* sums) {
  typename V::Vec acc[SB][KB];
#pragma GCC unroll 16
  for (int s = 0; s < SB; ++s)
#pragma GCC unroll 16
    for (int kb = 0; kb < KB; ++kb) acc[s][kb] = V::zero();
  const int64_t column_step = group_size * span;
  for (int64_t o = 0; o < group_size; ++o) {
    typename V::Vec go[SB];
#pragma GCC unroll 16
    for (int s = 0; s < SB; ++s) {
      const float* from = go_staged + (s * group_size + o) * span + jj0;
      go[s] = Masked ? V::load(lanes, from) : V::load(from);
    }
    const float* weights = filters_t + (k0 * group_size + o) * span + jj0;
#pragma GCC unroll 16
    for (int kb = 0; kb < KB; ++kb) {
      const float* from = weights + kb * column_step;
      const auto w = Masked ? V::load(lanes, from) : V::load(from);
#pragma GCC unroll 16
      for (int s = 0; s < SB; ++s) acc[s][kb] = V::fmadd(go[s], w, acc[s][kb]);
    }
  }
#pragma GCC unroll 16
  for (int s = 0; s < SB; ++s)
#pragma GCC unroll 16
    for (int kb = 0; kb < KB; ++kb) {
      float* to = sums + (s * patch_size + k0 + kb) * stride + jj0;
      if constexpr (Masked) {
        V::store(lanes, to, acc[s][kb]);
      } else {
        V::store(to, acc[s][kb]);
      }
    }
}

// The blocks of source_sums_block for SB samples by their patch columns, 1 to kSourceColumns.
template <typename V, int SB, bool Masked>
struct SourceSumsBlocks {
  using Block = void (*)(const float*, const float*, int64_t, int64_t, int64_t,
                         typename V::Mask, int64_t, int64_t, int64_t, float*);
  template <int... KB>
  static constexpr std::array<Block, sizeof...(KB)> make(std::integer_sequence<int, KB...>) {
    return {&source_sums_block<V, SB, KB + 1, Masked>...};
  }
  static constexpr auto table = make(std::make_integer_sequence<int, V::kSourceColumns>{});
};

// The SB samples' sums over the source columns [begin, end) of the chunk's into `sums`, K in
// even blocks of at most V::kSourceColumns; each block takes a step of `ahead`.
template <typename V, int SB>
LC_VECTOR_TARGET void source_sums(const float* go_staged, const float* filters_t,
                                  const Geometry& g, int64_t span, int64_t begin, int64_t end,
                                  float* sums, FetchAhead& ahead) {
  const int64_t group_size = g.group_out_channels(), patch_size = g.patch_size();
  const int64_t stride = source_sums_stride(g);
  const int64_t blocks = ceil_div(patch_size, V::kSourceColumns);
  for (int64_t jj0 = begin; jj0 < end; jj0 += V::kLanes) {
    const bool masked = end - jj0 < V::kLanes;
    const auto lanes = V::tail(end - jj0);
    for (int64_t b = 0, k0 = 0; b < blocks; ++b) {
      // Even blocks: K = 7 as 4 + 3, not 6 + 1 (whose one column reloads the SB vectors).
      const int64_t columns = ceil_div(patch_size - k0, blocks - b);
      ahead.step();
      (masked ? SourceSumsBlocks<V, SB, true>::table
              : SourceSumsBlocks<V, SB, false>::table)[columns - 1](
          go_staged, filters_t, group_size, span, jj0, lanes, k0, patch_size, stride, sums);
      k0 += columns;
    }
  }
}

// Adds SB samples' patch gradients from their source sums onto grad_input (as
// grad_input_rows_block: `dest`, x0, columns): per destination vector and patch row, the sum over
// kernel columns q of the sums of column (r, q) read shifted by (kernel_w - 1 - q) * dilation_w,
// then one load-add-store per sample. Every sample's load before any store (as
// grad_input_rows_held: their rows may lie a multiple of 4 KB apart).
template <typename V, int SB>
LC_VECTOR_TARGET void add_source_sums(const float* sums, const int64_t* dest, const Geometry& g,
                                      int64_t x0, int64_t columns, int64_t sample_size,
                                      float* grad_input) {
  const int64_t rows = patch_row_count(g), patch_size = g.patch_size();
  const int64_t stride = source_sums_stride(g);
  for (int64_t r = 0; r < rows; ++r) {
    if (dest[r] < 0) continue;
    float* to = grad_input + dest[r] + x0;
    for (int64_t v = 0; v < columns; v += V::kLanes) {
      const auto lanes = V::tail(columns - v);
      typename V::Vec total[SB];
#pragma GCC unroll 16
      for (int s = 0; s < SB; ++s) total[s] = V::zero();
      for (int64_t q = 0; q < g.kernel_w; ++q) {
        const float* column = sums + (r * g.kernel_w + q) * stride + v +
                              (g.kernel_w - 1 - q) * g.dilation_w;
#pragma GCC unroll 16
        for (int s = 0; s < SB; ++s)
          total[s] = V::add(total[s], V::load(column + s * patch_size * stride));
      }
      typename V::Vec before[SB];
#pragma GCC unroll 16
      for (int s = 0; s < SB; ++s) before[s] = V::load(lanes, to + s * sample_size + v);
#pragma GCC unroll 16
      for (int s = 0; s < SB; ++s)
        V::store(lanes, to + s * sample_size + v, V::add(before[s], total[s]));
    }
  }
}

// grad_input_chunk by sources: kSourceSamples samples at a time, then one at a time.
template <typename V>
LC_VECTOR_TARGET void grad_input_chunk_by_sources(const float* go_staged, const float* filters_t,
                                                  const int64_t* dest, const Geometry& g,
                                                  int64_t span, int64_t x0, int64_t first,
                                                  int64_t columns,
                                                  int64_t samples, int64_t sample_size,
                                                  float* grad_input, float* sums,
                                                  uintptr_t next_banks, int64_t next_lines) {
  constexpr int SB = kSourceSamples;
  const int64_t group_size = g.group_out_channels(), stride = source_sums_stride(g);
  // The sources the destinations read: through the last whole vector of columns and the
  // kernel's span less one; of them, those in the output row (from `first`, the chunk's first
  // source, on). The rest are staged zeros, whose sums are zeros: set once here, not summed
  // (cunn232_c1: 64 of 66 sources, 4 vectors, not 5).
  const int64_t sources =
      ceil_div(columns, V::kLanes) * V::kLanes + (g.kernel_w - 1) * g.dilation_w;
  const int64_t begin = std::clamp<int64_t>(-first, 0, sources);
  const int64_t end = std::clamp<int64_t>(g.out_w - first, begin, sources);
  for (int64_t row = 0; row < SB * g.patch_size(); ++row) {
    std::fill(sums + row * stride, sums + row * stride + begin, 0.0f);
    std::fill(sums + row * stride + end, sums + row * stride + sources, 0.0f);
  }
  FetchAhead fetch_next(next_banks, next_lines,
                        (samples / SB + samples % SB) * ceil_div(end - begin, V::kLanes) *
                            ceil_div(g.patch_size(), V::kSourceColumns));
  int64_t n = 0;
  for (; n + SB <= samples; n += SB) {
    source_sums<V, SB>(go_staged + n * group_size * span, filters_t, g, span, begin, end, sums,
                       fetch_next);
    add_source_sums<V, SB>(sums, dest, g, x0, columns, sample_size, grad_input + n * sample_size);
  }
  for (; n < samples; ++n) {
    source_sums<V, 1>(go_staged + n * group_size * span, filters_t, g, span, begin, end, sums,
                      fetch_next);
    add_source_sums<V, 1>(sums, dest, g, x0, columns, sample_size, grad_input + n * sample_size);
  }
}

// The filters of output row (z, i) and channel group `group` that a grad_input_row chunk reads,
// transposed: filters_t[((k * group_size + o) * span + jj] is filter o's weight k at source jj,
// output column first + jj (zero outside the output row). V::kLanes sources x V::kLanes columns of
// K at a time, transposed in registers.
template <typename V, typename T>
LC_VECTOR_TARGET void stage_chunk_filters(const Geometry& g, int64_t z, int64_t i,
                                          int64_t group, int64_t first, int64_t span,
                                          const T* weight, float* filters_t) {
  const int64_t group_size = g.group_out_channels(), patch_size = g.patch_size();
  const int64_t filter_size = g.out_channels * patch_size;
  for (int64_t jj0 = 0; jj0 < span; jj0 += V::kLanes) {
    const int64_t present = std::min<int64_t>(V::kLanes, span - jj0);
    // One group's filters are a location's whole bank: the sources' banks lie side by side.
    const int64_t location = (z * g.out_h + i) * g.out_w + first + jj0;
    FetchAhead ahead = tile_ahead(!g.shares_weights() && g.groups == 1, weight,
                                  location * filter_size * int64_t(sizeof(T)),
                                  V::kLanes * filter_size * int64_t(sizeof(T)),
                                  group_size * ceil_div(patch_size, V::kLanes));
    const T* banks[V::kLanes];
    for (int64_t r = 0; r < V::kLanes; ++r) {
      const int64_t j = first + jj0 + r;
      banks[r] = r < present && j >= 0 && j < g.out_w
                     ? weight + g.region_of(z, i, j) * filter_size + group * group_size * patch_size
                     : nullptr;
    }
    // Every index into the square a constant, so that it stays in registers (the compiler had
    // kept it on the stack); plain loads and stores where the square is whole.
    const auto sources = V::tail(present);
    for (int64_t o = 0; o < group_size; ++o) {
      for (int64_t k0 = 0; k0 < patch_size; k0 += V::kLanes) {
        const int64_t columns = std::min<int64_t>(V::kLanes, patch_size - k0);
        const auto read = V::tail(columns);
        ahead.step();
        typename V::Vec square[V::kLanes];
#pragma GCC unroll 16
        for (int r = 0; r < V::kLanes; ++r) {
          if (banks[r] == nullptr) {
            square[r] = V::zero();
            continue;
          }
          const T* from = banks[r] + o * patch_size + k0;
          square[r] = columns == V::kLanes ? V::load(from) : V::load(read, from);
        }
        V::transpose(square);
#pragma GCC unroll 16
        for (int c = 0; c < V::kLanes; ++c) {
          float* to = filters_t + ((k0 + c) * group_size + o) * span + jj0;
          if (present == V::kLanes && c < columns)
            V::store(to, square[c]);
          else if (c < columns)
            V::store(sources, to, square[c]);
        }
      }
    }
  }
}

// The grad_output of output rows (z, i) to (z, i + rows - 1), channel group `group`, `samples`
// samples (from grad_output on) that a chunk reads, staged: row r's at go_staged + r *
// staged_step, where [(n * group_size + o) * span + jj] is sample n's filter o at output column
// first + jj (zero outside the row). Each sample's and filter's rows in turn, so that the lines
// a fetch brings serve every row at once. Fetched now: where `rows_ahead` is null, each row's
// part `ahead` columns on (stage_row); else, into the L2, `fetch_bytes` from the run rows_ahead
// stands at, a run per sample and filter (the rows' lines, where they lie together).
template <typename V, typename T>
LC_VECTOR_TARGET void stage_chunk_grad_output(const T* grad_output, const Strides5& go_s,
                                              const Geometry& g, int64_t z, int64_t i,
                                              int64_t rows, int64_t group, int64_t samples,
                                              int64_t first, int64_t span, int64_t ahead,
                                              RowsAhead* rows_ahead, int64_t fetch_bytes,
                                              float* go_staged, int64_t staged_step) {
  const int64_t group_size = g.group_out_channels();
  const StagedRowPart<V> part(first, span, g.out_w);
  for (int64_t n = 0; n < samples; ++n) {
    for (int64_t o = 0; o < group_size; ++o) {
      if (rows_ahead != nullptr) rows_ahead->fetch_and_next(fetch_bytes);
      const T* row = grad_output + n * go_s.n + (group * group_size + o) * go_s.c +
                     z * go_s.d + i * go_s.h;
      for (int64_t r = 0; r < rows; ++r) {
        stage_row<V>(row + r * go_s.h, go_s.w, part, rows_ahead != nullptr ? 0 : ahead,
                     go_staged + r * staged_step + (n * group_size + o) * span);
      }
    }
  }
}

// A chunk's patch gradients, from its staged filters and grad_output (source jj at output column
// first + jj), added onto the `samples` samples of grad_input (`dest`: the patch rows'
// destination rows). `sums`: grad_input_source_sums(g) floats, where grad_input_by_sources.
// `next_banks`, `next_lines`: the lines fetched into the L2 while the patch rows go by (nothing
// where next_lines is 0).
template <typename V>
LC_VECTOR_TARGET void grad_input_chunk(const float* go_staged, const float* filters_t,
                                       const int64_t* dest, const Geometry& g, int64_t span,
                                       int64_t x0, int64_t first, int64_t columns,
                                       int64_t samples, int64_t sample_size, float* grad_input,
                                       float* sums, uintptr_t next_banks, int64_t next_lines) {
  const int64_t group_size = g.group_out_channels();
  if (grad_input_by_sources(g)) {
    return grad_input_chunk_by_sources<V>(go_staged, filters_t, dest, g, span, x0, first,
                                          columns, samples, sample_size, grad_input, sums,
                                          next_banks, next_lines);
  }
  if constexpr (V::kLanes == 16) {
    if (group_size == 1 && g.kernel_w <= kHeldKernelColumns &&
        patch_row_count(g) >= kHeldMinRows) {
      FetchAhead fetch_next(next_banks, next_lines,
                            ceil_div(samples, 2) * ceil_div(columns, 2 * V::kLanes) *
                                patch_row_count(g));
      const auto held = [&](auto kw) {
        grad_input_chunk_held<V, decltype(kw)::value>(go_staged, filters_t, dest, g, span, x0,
                                                      columns, samples, sample_size, grad_input,
                                                      fetch_next);
      };
      switch (g.kernel_w) {
        case 1: held(std::integral_constant<int, 1>{}); break;
        case 2: held(std::integral_constant<int, 2>{}); break;
        case 3: held(std::integral_constant<int, 3>{}); break;
        case 4: held(std::integral_constant<int, 4>{}); break;
        default: held(std::integral_constant<int, 5>{}); break;
      }
      return;
    }
  }
  constexpr int kSamples = 4;
  FetchAhead fetch_next(next_banks, next_lines,
                        (samples / kSamples + samples % kSamples) * patch_row_count(g));
  int64_t n = 0;
  for (; n + kSamples <= samples; n += kSamples)
    grad_input_rows_block<V, kSamples>(go_staged + n * group_size * span, filters_t, dest, g,
                                       span, x0, columns, sample_size,
                                       grad_input + n * sample_size, fetch_next);
  for (; n < samples; ++n)
    grad_input_rows_block<V, 1>(go_staged + n * group_size * span, filters_t, dest, g, span, x0,
                                columns, sample_size, grad_input + n * sample_size, fetch_next);
}

// The banks (every group's) of the `chunk` locations after (z, i, x0), the next chunk's or the
// next row's, as grad_input_chunk fetches them into the L2 while a chunk's patch rows go by, by
// the first group (in one process: grad_input of fmri_decoder_3d 0.91-0.96x, medvol_32cube_c2
// 0.86-0.91x, forced onto AVX2 0.89x and 0.91x; cunn232_c1, depthwise, genomics 0.99-1.02; the
// staging's own fetches come in bursts). Past the last row they lie outside the weight.
template <typename T>
inline int64_t next_chunk_lines(const Geometry& g, int64_t group, int64_t chunk) {
  return !g.shares_weights() && group == 0
             ? ceil_div(chunk * g.out_channels * g.patch_size() * int64_t(sizeof(T)), kLine)
             : 0;
}
template <typename T>
inline uintptr_t next_chunk_banks(const Geometry& g, const T* weight, int64_t z, int64_t i,
                                  int64_t x0, int64_t chunk) {
  const int64_t next_location = (z * g.out_h + i) * g.out_w + x0 + chunk;
  return reinterpret_cast<uintptr_t>(weight) +
         next_location * g.out_channels * g.patch_size() * sizeof(T);
}

template <typename V, typename T>
LC_VECTOR_TARGET void grad_input_row(const T* grad_output, const Strides5& go_s,
                                     const Geometry& g, int64_t z, int64_t i, int64_t group,
                                     int64_t samples, const T* weight, float* grad_input,
                                     float* scratch, int64_t* dest) {
  const int64_t sample_size = g.input_sample();
  const int64_t halo = (g.kernel_w - 1) * g.dilation_w;
  const int64_t chunk = grad_input_row_columns(g), span = chunk + halo;
  float* filters_t = scratch;
  float* go_staged = scratch + grad_input_row_filters(g);
  float* sums = scratch + grad_input_row_staged(g, samples);
  grad_input_row_destinations(g, z, i, group, dest);
  for (int64_t x0 = 0; x0 < g.in_w; x0 += chunk) {
    const int64_t columns = std::min(chunk, g.in_w - x0);
    // Destination column x reads output column j = x + pad_w - q * dilation_w; the chunk's
    // sources are the span output columns from `first` on, staged with zeros where they fall
    // outside the output row.
    const int64_t first = x0 + g.pad_w - halo;
    stage_chunk_filters<V>(g, z, i, group, first, span, weight, filters_t);
    // grad_output's runs, the next chunk's part fetched now; where the chunk is the whole row,
    // the runs kStagedRowsAhead on in the staging's order (as backward_row's: the next chunk's
    // part would lie in the plane's row after next, which this thread does not take next).
    RowsAhead rows_ahead =
        output_row_runs_ahead(grad_output, go_s, g, z, i, /*rows=*/1, first, samples,
                              group * samples * g.group_out_channels());
    const bool whole_row = columns == g.in_w && go_s.w == 1;
    stage_chunk_grad_output<V>(grad_output, go_s, g, z, i, /*rows=*/1, group, samples, first,
                               span, span + chunk, whole_row ? &rows_ahead : nullptr,
                               span * int64_t(sizeof(T)) + kLine, go_staged, 0);
    grad_input_chunk<V>(go_staged, filters_t, dest, g, span, x0, first, columns, samples,
                        sample_size, grad_input, sums, next_chunk_banks(g, weight, z, i, x0, chunk),
                        next_chunk_lines<T>(g, group, chunk));
  }
}

// ---- grad_weight by row tiles: FB filters x KB patch columns, each a vector over locations ----
// acc[f][kb], lanes t: sum over the samples of staged grad_output (filter f) times the input
// column the patch's column k0 + kb reads at location t (offsets[kb] from `input`, under
// columns[column_of[kb]]; the all-off mask for a row in the padding and for the padded columns
// past K), added onto sums (f at f*filter_stride, kb at kb*kRowTileLocations) where accumulate.
// Sample n's staged grad_output of filter f at go_staged + n*go_step + f*go_filter_step.
template <typename V, typename T, int FB, int KB>
LC_VECTOR_TARGET void grad_weight_row_block(const T* input, int64_t sample_stride,
                                            const float* go_staged, int64_t go_step,
                                            int64_t go_filter_step, int64_t samples,
                                            const int64_t* offsets,
                                            const int64_t* column_of,
                                            const typename V::Mask* columns,
                                            int64_t filter_stride, bool accumulate,
                                            float* sums) {
  typename V::Vec acc[FB][KB];
#pragma GCC unroll 16
  for (int f = 0; f < FB; ++f)
#pragma GCC unroll 16
    for (int kb = 0; kb < KB; ++kb)
      acc[f][kb] = accumulate ? V::load(sums + f * filter_stride + kb * kRowTileLocations)
                              : V::zero();
  typename V::Mask masks[KB];
#pragma GCC unroll 16
  for (int kb = 0; kb < KB; ++kb) masks[kb] = columns[column_of[kb]];
  for (int64_t n = 0; n < samples; ++n) {
    typename V::Vec go[FB];
#pragma GCC unroll 16
    for (int f = 0; f < FB; ++f) go[f] = V::load(go_staged + n * go_step + f * go_filter_step);
    const T* sample = input + n * sample_stride;
    // The input a few tiles on (each sample's row a stream of its own, as in row_tile_block).
    _mm_prefetch(reinterpret_cast<const char*>(sample + offsets[0] +
                                               kRowTilePrefetchTiles * kRowTileLocations),
                 _MM_HINT_T0);
#pragma GCC unroll 16
    for (int kb = 0; kb < KB; ++kb) {
      const auto values = V::load(masks[kb], sample + offsets[kb]);
#pragma GCC unroll 16
      for (int f = 0; f < FB; ++f) acc[f][kb] = V::fmadd(go[f], values, acc[f][kb]);
    }
  }
#pragma GCC unroll 16
  for (int f = 0; f < FB; ++f)
#pragma GCC unroll 16
    for (int kb = 0; kb < KB; ++kb)
      V::store(sums + f * filter_stride + kb * kRowTileLocations, acc[f][kb]);
}

// The accumulators of a grad_weight row block: FB x KB with FB of 1, 2 or 4.
template <typename V>
constexpr int kGradWeightRowAccumulators = V::kLanes == 16 ? 16 : 8;

// Where each patch column k = (c, a, p, q) of a group reads at output row (z, i), from the
// group's first channel at the location's column less pad_w (offsets[k]), and the mask it reads
// under (column_of[k]: kernel column q, or kernel_w, the all-off mask, for a row in the padding
// and the padded columns past K): grad_weight_row_patch(g) of each. (Row by row: the divisions
// that took each k apart had cost a third of fmri_decoder_3d's grad_weight.)
inline void grad_weight_row_offsets(const Geometry& g, const Strides5& s, int64_t z, int64_t i,
                                    int64_t* offsets, int64_t* column_of) {
  for_each_patch_row(g, s, z, i, [&](int64_t r, int64_t start) {
    for (int64_t q = 0; q < g.kernel_w; ++q) {
      offsets[r * g.kernel_w + q] = start < 0 ? 0 : start + q * g.dilation_w - g.pad_w;
      column_of[r * g.kernel_w + q] = start < 0 ? g.kernel_w : q;
    }
  });
  for (int64_t k = g.patch_size(); k < grad_weight_row_patch(g); ++k) {
    offsets[k] = 0;
    column_of[k] = g.kernel_w;
  }
}

// grad_weight_row_tile's products for the filters of channel group `group`, from staged
// grad_output: sample n's filter o (of the group) over the tile at go + n * go_step + o *
// go_filter_step; `offsets` and `column_of` as grad_weight_row_offsets leaves them.
template <typename V, typename T>
LC_VECTOR_TARGET void grad_weight_row_products(const T* input, const Strides5& s,
                                               const float* go, int64_t go_step,
                                               int64_t go_filter_step, const Geometry& g,
                                               int64_t j0, int64_t width, int64_t group,
                                               int64_t samples, const int64_t* offsets,
                                               const int64_t* column_of, bool accumulate,
                                               float* sums) {
  static_assert(kGradWeightRowAccumulators<V> == kGradWeightRowColumns ||
                kGradWeightRowAccumulators<V> * 2 == kGradWeightRowColumns);
  constexpr int64_t acc = kGradWeightRowAccumulators<V>;
  const int64_t patch_size = g.patch_size(), padded = grad_weight_row_patch(g);
  const int64_t group_size = g.group_out_channels();
  using Block = void (*)(const T*, int64_t, const float*, int64_t, int64_t, int64_t,
                         const int64_t*, const int64_t*, const typename V::Mask*, int64_t, bool,
                         float*);
  constexpr Block blocks[3] = {&grad_weight_row_block<V, T, 1, acc>,
                               &grad_weight_row_block<V, T, 2, acc / 2>,
                               &grad_weight_row_block<V, T, 4, acc / 4>};
  // The same at half the columns, for a patch's last columns where they fit: short patches
  // (genomics_1d_50k: K = 5 of 16) would otherwise spend most FMAs on the padding. The sums'
  // columns past K that no block writes are never read into grad_weight (the banks' stores
  // take K's lanes only).
  constexpr Block halves[3] = {&grad_weight_row_block<V, T, 1, acc / 2>,
                               &grad_weight_row_block<V, T, 2, acc / 4>,
                               &grad_weight_row_block<V, T, 4, acc / 8>};
  constexpr int64_t block_columns[3] = {acc, acc / 2, acc / 4};
  const T* group_input = input + group * g.group_in_channels() * s.c + j0;
  for (int64_t t = 0; t < width; t += V::kLanes) {
    typename V::Mask columns[kRowTilePatchLimit + 1];
    for (int64_t q = 0; q < g.kernel_w; ++q)
      columns[q] = V::both(V::tail(width - t),
                           V::columns(j0 + t - g.pad_w + q * g.dilation_w, 0, g.in_w));
    columns[g.kernel_w] = V::tail(0);
    for (int64_t o = 0; o < group_size;) {
      const int64_t left = group_size - o;
      const int which = left >= 4 ? 2 : left >= 2 ? 1 : 0;
      for (int64_t k0 = 0; k0 < patch_size;) {
        const int64_t half = block_columns[which] / 2;
        const bool last = patch_size - k0 <= half;
        (last ? halves : blocks)[which](
            group_input + t, s.n, go + o * go_filter_step + t, go_step, go_filter_step, samples,
            offsets + k0, column_of + k0, columns, padded * kRowTileLocations, accumulate,
            sums + ((group * group_size + o) * padded + k0) * kRowTileLocations + t);
        k0 += last ? half : block_columns[which];
      }
      o += int64_t(1) << which;
    }
  }
}

template <typename V, typename T>
LC_VECTOR_TARGET void grad_weight_row_tile(const T* input, const Strides5& s,
                                           const T* grad_output, const Strides5& go_s,
                                           const Geometry& g, int64_t z, int64_t i, int64_t j0,
                                           int64_t width, int64_t samples, bool accumulate,
                                           float* sums, float* scratch) {
  const int64_t group_size = g.group_out_channels();
  float* go_staged = scratch;
  int64_t* offsets = reinterpret_cast<int64_t*>(go_staged + samples * g.out_channels *
                                                                kRowTileLocations);
  int64_t* column_of = offsets + grad_weight_row_patch(g);
  // grad_output's runs over the tile (zeros past its width). Fetched now: the part a few tiles
  // on; or where that lies in a later output row, the tile's part of the run kStagedRowsAhead
  // on in the staging's order, and past the last sample the next tile's (depthwise_32x32_c32's
  // grad_weight 0.89-0.93x, fmri_decoder_3d's 0.96-0.98x; genomics_1d_50k's long rows keep the
  // parts a few tiles on: 2.3x slower with the runs ahead).
  const int64_t ahead = kRowTilePrefetchTiles * kRowTileLocations;
  const bool runs_ahead = go_s.w == 1 && g.out_w <= ahead;
  RowsAhead rows_ahead(
      reinterpret_cast<uintptr_t>(grad_output + z * go_s.d + i * go_s.h + j0),
      {{g.out_channels, go_s.c * int64_t(sizeof(T))}, {samples, go_s.n * int64_t(sizeof(T))}},
      kRowTileLocations * int64_t(sizeof(T)), 0, kStagedRowsAhead);
  const StagedRowPart<V> part(j0, kRowTileLocations, g.out_w);
  for (int64_t n = 0; n < samples; ++n) {
    for (int64_t o = 0; o < g.out_channels; ++o) {
      if (runs_ahead) rows_ahead.fetch_and_next(kRowTileLocations * int64_t(sizeof(T)) + kLine);
      stage_row<V>(grad_output + n * go_s.n + o * go_s.c + z * go_s.d + i * go_s.h, go_s.w,
                   part, runs_ahead ? 0 : ahead,
                   go_staged + (n * g.out_channels + o) * kRowTileLocations);
    }
  }
  grad_weight_row_offsets(g, s, z, i, offsets, column_of);
  for (int64_t group = 0; group < g.groups; ++group) {
    grad_weight_row_products<V>(input, s, go_staged + group * group_size * kRowTileLocations,
                                g.out_channels * kRowTileLocations, kRowTileLocations, g, j0,
                                width, group, samples, offsets, column_of, accumulate, sums);
  }
}

// The sums of grad_weight_row_tile into the tile's banks (location t's at banks + t *
// filter_size), rounded to T: V::kLanes columns of K x V::kLanes locations at a time,
// transposed in registers.
template <typename V, typename T>
LC_VECTOR_TARGET void grad_weight_row_banks(const float* sums, const Geometry& g, int64_t width,
                                            T* banks) {
  const int64_t patch_size = g.patch_size(), padded = grad_weight_row_patch(g);
  const int64_t filter_size = g.out_channels * patch_size;
  // The lines of the banks a few tiles on, fetched into the L2 before the squares overwrite
  // them (grad_weight_row_tile's tiles come in order and their banks lie side by side; a plain
  // prefetch: these targets leave out prfchw, so a write hint would compile to the same).
  FetchAhead ahead = tile_ahead(true, banks, 0,
                                kRowTileLocations * filter_size * int64_t(sizeof(T)),
                                g.out_channels * ceil_div(patch_size, V::kLanes) *
                                    ceil_div(width, V::kLanes));
  for (int64_t o = 0; o < g.out_channels; ++o) {
    for (int64_t k0 = 0; k0 < patch_size; k0 += V::kLanes) {
      const auto columns = V::tail(patch_size - k0);
      const bool whole = patch_size - k0 >= V::kLanes;
      for (int64_t t0 = 0; t0 < width; t0 += V::kLanes) {
        ahead.step();
        typename V::Vec square[V::kLanes];
#pragma GCC unroll 16
        for (int c = 0; c < V::kLanes; ++c)
          square[c] = V::load(sums + ((o * padded + k0 + c) * kRowTileLocations + t0));
        V::transpose(square);
        // Constant indices into the square, as in stage_chunk_filters.
#pragma GCC unroll 16
        for (int t = 0; t < V::kLanes; ++t) {
          T* to = banks + (t0 + t) * filter_size + o * patch_size + k0;
          if (t0 + t < width && whole)
            V::store(to, square[t]);
          else if (t0 + t < width)
            V::store(columns, to, square[t]);
        }
      }
    }
  }
}

// ---- the backward of one or two output rows from one staging of their grad_output ----

// Where a row's grad_input is one chunk (backward_row_fits), the staged grad_output that
// grad_input_chunk reads also serves grad_weight_row_products (each tile a part of the staged
// span) and the bias sums: grad_output is read from memory once, not once per gradient
// (cunn232_c1's 16.8 MB had been read three times, each time as 1024 streams of a few lines).
// Two rows of a plane at once (backward_row_rows): each sample's and filter's runs of both rows
// are staged together, from the lines one fetch brought; staged a row at a time, the second
// row's half of those lines was read again a whole row later, by then evicted from the L2 (the
// runs lie a plane apart, in a few of its sets). Against a row at a time (with the same joint
// fetch), the backward in one process on the Zen 3: cunn232_c1 float32 0.97x, 0.94x; bfloat16
// 1.00x; medvol_32cube_c2 0.98x.
template <typename V, typename T>
LC_VECTOR_TARGET void backward_row(const T* grad_output, const Strides5& go_s, const T* input,
                                   const Strides5& s, const Geometry& g, int64_t z, int64_t i,
                                   int64_t rows, const T* weight, float* grad_input,
                                   float* weight_sums, float* bias_sums, float* scratch,
                                   int64_t* dest) {
  const int64_t sample_size = g.input_sample();
  const int64_t group_size = g.group_out_channels(), span = backward_row_span(g);
  const int64_t start = backward_row_start(g), chunk = grad_input_row_columns(g);
  // The chunk's sources from column `first` on, `lead` columns into the staged rows.
  const int64_t first = backward_row_chunk_first(g), lead = first - start;
  const int64_t locations = g.locations(), padded = grad_weight_row_patch(g);
  // Row r's parts: its scratch (staged filters and grad_output, grad_weight's offsets and the
  // source sums), its grad_weight sums and its destinations, one after another.
  const int64_t scratch_step = backward_row_scratch(g);
  const int64_t sums_step = backward_row_weight_sums(g), dest_step = patch_row_count(g);
  const int64_t filters_floats = g.patch_size() * group_size * span;
  const auto offsets_of = [&](int64_t r) {
    return reinterpret_cast<int64_t*>(scratch + r * scratch_step + backward_row_staged(g));
  };
  const auto source_sums_of = [&](int64_t r) {
    return scratch + r * scratch_step + backward_row_staged(g) + 4 * padded;
  };
  for (int64_t r = 0; r < rows; ++r)
    grad_weight_row_offsets(g, s, z, i + r, offsets_of(r), offsets_of(r) + padded);
  // The runs of both rows in one fetch (backward_row_rows pairs rows whose runs lie within a
  // line of each other): the two rows' lines of a plane lie together, one stream of them rather
  // than two of one row each.
  const int64_t fetch_bytes = (span + (rows - 1) * go_s.h) * int64_t(sizeof(T)) + kLine;
  for (int64_t group = 0; group < g.groups; ++group) {
    for (int64_t r = 0; r < rows; ++r) {
      grad_input_row_destinations(g, z, i + r, group, dest + r * dest_step);
      stage_chunk_filters<V>(g, z, i + r, group, first, span, weight, scratch + r * scratch_step);
    }
    for (int64_t n0 = 0; n0 < g.batch; n0 += kBackwardRowSamples) {
      const int64_t samples = std::min(kBackwardRowSamples, g.batch - n0);
      RowsAhead rows_ahead = output_row_runs_ahead(grad_output, go_s, g, z, i, rows, start,
                                                   g.batch, (group * g.batch + n0) * group_size);
      stage_chunk_grad_output<V>(grad_output + n0 * go_s.n, go_s, g, z, i, rows, group, samples,
                                 start, span, 0, go_s.w == 1 ? &rows_ahead : nullptr,
                                 fetch_bytes, scratch + filters_floats, scratch_step);
      for (int64_t r = 0; r < rows; ++r) {
        const float* filters_t = scratch + r * scratch_step;
        const float* go_staged = filters_t + filters_floats;
        const int64_t* offsets = offsets_of(r);
        // The banks of the row after the last, fetched while the first sample block goes by.
        grad_input_chunk<V>(go_staged + lead, filters_t, dest + r * dest_step, g, span,
                            /*x0=*/0, first, g.in_w, samples, sample_size,
                            grad_input + n0 * sample_size, source_sums_of(r),
                            next_chunk_banks(g, weight, z, i + r, 0, chunk),
                            n0 == 0 && r == rows - 1 ? next_chunk_lines<T>(g, group, chunk) : 0);
        for (int64_t j0 = 0; j0 < g.out_w; j0 += kRowTileLocations) {
          grad_weight_row_products<V>(input + n0 * s.n, s, go_staged + j0 - start,
                                      group_size * span, span, g, j0,
                                      std::min(kRowTileLocations, g.out_w - j0), group, samples,
                                      offsets, offsets + padded, n0 > 0,
                                      weight_sums + r * sums_step +
                                          j0 / kRowTileLocations * grad_weight_row_sums(g));
        }
        if (bias_sums == nullptr) continue;
        // Each location's sum over the samples in sample order, as cpu_grad_bias adds them.
        float* row_bias = bias_sums + (z * g.out_h + i + r) * g.out_w;
        for (int64_t o = 0; o < group_size; ++o) {
          float* to = row_bias + (group * group_size + o) * locations;
          for (int64_t j = 0; j < g.out_w; j += V::kLanes) {
            const auto lanes = V::tail(g.out_w - j);
            auto sum = n0 > 0 ? V::load(lanes, to + j) : V::zero();
            for (int64_t n = 0; n < samples; ++n)
              sum = V::add(sum, V::load(go_staged + (n * group_size + o) * span + j - start));
            V::store(lanes, to + j, sum);
          }
        }
      }
    }
  }
}

}  // namespace generic
}  // namespace

namespace LC_VECTOR_NAMESPACE {

template <typename T>
void forward(int64_t out_channels, int64_t samples, int64_t patch_size, const T* filters,
             const T* patches, float* out) {
  generic::forward<LC_VECTOR_TRAITS>(out_channels, samples, patch_size, filters, patches, out);
}

template <typename T>
void grad_patches(int64_t out_channels, int64_t samples, int64_t patch_size, const T* filters,
                  const T* grad_output, const T* next, float* grad_patches) {
  generic::grad_patches<LC_VECTOR_TRAITS>(out_channels, samples, patch_size, filters,
                                          grad_output, next, grad_patches);
}

template <typename T>
void grad_filters(int64_t out_channels, int64_t samples, int64_t patch_size, const T* patches,
                  const T* grad_output, bool accumulate, float* grad_filters, T* rounded,
                  bool stream) {
  generic::grad_filters<LC_VECTOR_TRAITS>(out_channels, samples, patch_size, patches,
                                          grad_output, accumulate, grad_filters, rounded, stream);
}

template <typename T>
void pack_patches(const T* input, int64_t sample_stride, const PatchRow* rows, int64_t locations,
                  const Geometry& g, int64_t samples, T* patches) {
  generic::pack_patches<LC_VECTOR_TRAITS>(input, sample_stride, rows, locations, g, samples,
                                          patches);
}

void scatter_add_patches(const float* grad_patches, const PatchRow* rows, const Geometry& g,
                         int64_t samples, float* grad_input) {
  generic::scatter_add_patches<LC_VECTOR_TRAITS>(grad_patches, rows, g, samples, grad_input);
}

void scatter_add_run(const float* grad_patches, const int64_t* dest, const Geometry& g, int64_t j,
                     int64_t run, int64_t samples, float* grad_input) {
  generic::scatter_add_run<LC_VECTOR_TRAITS>(grad_patches, dest, g, j, run, samples, grad_input);
}

int64_t scatter_run_length(const Geometry& g) {
  return scatter_run_locations(g, LC_VECTOR_TRAITS::kLanes);
}

int64_t row_tile_filters() { return LC_VECTOR_TRAITS::kRowTileFilters; }

void forward_in_place(int64_t out_channels, int64_t samples, const float* input,
                      int64_t sample_stride, int64_t step, const PatchRow* rows,
                      const Geometry& g, const float* filters, float* filters_t,
                      const float* next, float* out) {
  generic::forward_in_place<LC_VECTOR_TRAITS>(out_channels, samples, input, sample_stride, step,
                                              rows, g, filters, filters_t, next, out);
}

void grad_filters_in_place(int64_t out_channels, int64_t samples, const float* input,
                           int64_t sample_stride, int64_t step, const PatchRow* rows,
                           const Geometry& g, const float* grad_output, bool accumulate,
                           float* sums_t, int64_t* columns, float* grad_filters, bool stream) {
  generic::grad_filters_in_place<LC_VECTOR_TRAITS>(out_channels, samples, input, sample_stride,
                                                   step, rows, g, grad_output, accumulate,
                                                   sums_t, columns, grad_filters, stream);
}

template <typename T>
void write_tile(const float* staged, int64_t staged_stride, int64_t width, const Geometry& g,
                int64_t samples, const float* bias_rows, int64_t bias_stride, T* out,
                int64_t locations) {
  generic::write_tile<LC_VECTOR_TRAITS>(staged, staged_stride, width, g, samples, bias_rows,
                                        bias_stride, out, locations);
}

template <typename T>
void forward_row_run(const T* input, const Strides5& s, const Geometry& g, int64_t z, int64_t i,
                     int64_t j0, int64_t width, int64_t samples, const T* weight, const T* bias,
                     bool shared_bias, T* out, float* scratch) {
  generic::forward_row_run<LC_VECTOR_TRAITS, false>(input, s, g, z, i, j0, width, samples,
                                                    weight, bias, shared_bias, out, scratch);
}

#ifdef LC_VECTOR_PAIR_ROW_TILES
void forward_pair_row_run(const c10::BFloat16* input, const Strides5& s, const Geometry& g,
                          int64_t z, int64_t i, int64_t j0, int64_t width, int64_t samples,
                          const c10::BFloat16* weight, const c10::BFloat16* bias,
                          bool shared_bias, c10::BFloat16* out, float* scratch) {
  generic::forward_row_run<LC_VECTOR_TRAITS, true>(input, s, g, z, i, j0, width, samples,
                                                   weight, bias, shared_bias, out, scratch);
}
#endif

template <typename T>
void grad_input_row(const T* grad_output, const Strides5& go_s, const Geometry& g, int64_t z,
                    int64_t i, int64_t group, int64_t samples, const T* weight,
                    float* grad_input, float* scratch, int64_t* dest) {
  generic::grad_input_row<LC_VECTOR_TRAITS>(grad_output, go_s, g, z, i, group, samples, weight,
                                            grad_input, scratch, dest);
}

template <typename T>
void grad_weight_row_tile(const T* input, const Strides5& s, const T* grad_output,
                          const Strides5& go_s, const Geometry& g, int64_t z, int64_t i,
                          int64_t j0, int64_t width, int64_t samples, bool accumulate,
                          float* sums, float* scratch) {
  generic::grad_weight_row_tile<LC_VECTOR_TRAITS>(input, s, grad_output, go_s, g, z, i, j0,
                                                  width, samples, accumulate, sums, scratch);
}

template <typename T>
void grad_weight_row_banks(const float* sums, const Geometry& g, int64_t width, T* banks) {
  generic::grad_weight_row_banks<LC_VECTOR_TRAITS>(sums, g, width, banks);
}

template <typename T>
void backward_row(const T* grad_output, const Strides5& go_s, const T* input, const Strides5& s,
                  const Geometry& g, int64_t z, int64_t i, int64_t rows, const T* weight,
                  float* grad_input, float* weight_sums, float* bias_sums, float* scratch,
                  int64_t* dest) {
  generic::backward_row<LC_VECTOR_TRAITS>(grad_output, go_s, input, s, g, z, i, rows,
                                          weight, grad_input, weight_sums, bias_sums, scratch,
                                          dest);
}

#define LC_CUDA_INSTANTIATE(T)                                                                 \
  template void forward<T>(int64_t, int64_t, int64_t, const T*, const T*, float*);             \
  template void grad_patches<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*,       \
                                float*);                                                       \
  template void grad_filters<T>(int64_t, int64_t, int64_t, const T*, const T*, bool, float*,    \
                                T*, bool);                                                     \
  template void write_tile<T>(const float*, int64_t, int64_t, const Geometry&, int64_t,        \
                              const float*, int64_t, T*, int64_t);                              \
  template void pack_patches<T>(const T*, int64_t, const PatchRow*, int64_t, const Geometry&,  \
                                int64_t, T*);                                                  \
  template void forward_row_run<T>(const T*, const Strides5&, const Geometry&, int64_t,        \
                                   int64_t, int64_t, int64_t, int64_t, const T*, const T*,     \
                                   bool, T*, float*);                                         \
  template void grad_input_row<T>(const T*, const Strides5&, const Geometry&, int64_t, int64_t, \
                                  int64_t, int64_t, const T*, float*, float*, int64_t*);   \
  template void grad_weight_row_tile<T>(const T*, const Strides5&, const T*, const Strides5&,   \
                                        const Geometry&, int64_t, int64_t, int64_t, int64_t,    \
                                        int64_t, bool, float*, float*);                   \
  template void grad_weight_row_banks<T>(const float*, const Geometry&, int64_t, T*);   \
  template void backward_row<T>(const T*, const Strides5&, const T*, const Strides5&,          \
                                const Geometry&, int64_t, int64_t, int64_t, const T*, float*,  \
                                float*, float*, float*, int64_t*);
LC_CUDA_INSTANTIATE(float)
LC_CUDA_INSTANTIATE(c10::BFloat16)
LC_CUDA_INSTANTIATE(c10::Half)
#undef LC_CUDA_INSTANTIATE

}  // namespace LC_VECTOR_NAMESPACE
}  // namespace cpu
}  // namespace lc_cuda
