// The bfloat16 products by vdpbf16ps (AVX512-BF16), vector_kernels.h's avx512_bf16 namespace.
// vdpbf16ps multiplies pairs of bfloat16 and adds each pair's two products into one float lane:
// 32 products per instruction against a float FMA's 16, with nothing widened first.
// - forward: the dot products run along K, where both operands are contiguous, so the pairs are
//   neighbouring k as they lie in memory. Structure as the float forward of
//   vector_kernels_impl.h: 4 filters x up to 6 samples of accumulators, each reduced across its
//   lanes once at the end; the last vector of K under a 32-lane mask (an odd K's last pair
//   multiplies by 0).
// - grad_patches sums over the output channels and grad_filters over the samples, so their pairs
//   are two neighbouring filter rows (or two samples' patch rows), interleaved in registers
//   column by column (one vpermw per vector), against a broadcast of the matching pair of
//   grad_output values; blocks and chunks of K as the float gradients'. An odd count's last row
//   is paired with zeros.
// - Without packing, as the float kernels read the input in place: the forward per location by
//   pairs of neighbouring kernel columns (forward_in_place), grad_weight by pairs of samples from
//   a paired copy of the input (grad_filters_in_place), and the forward's row tiles by pairs of
//   kernel columns over a tile's locations (pair_row_tile_block, run by vector_kernels_impl.h's
//   driver).
// Compiled for AVX512-BF16 by attribute; callers check the CPU first (product_isa.h).
#include <c10/util/Exception.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "avx512_vectors.h"
#include "fetch_ahead.h"
#include "register_blocks.h"
#include "vector_kernels.h"

#define LC_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")))

namespace lc_cuda {
namespace cpu {
namespace {

constexpr int64_t kPairLanes = 32;  // bfloat16 elements per vector
constexpr int kFilters = 4, kSamples = 6;
// The filters stream from memory once; prefetched into L2 this many rows ahead, as the float
// forward's.
constexpr int64_t kAheadRows = 8;

LC_AVX512_BF16 inline __m512bh load(__mmask32 mask, const c10::BFloat16* p) {
  return reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(mask, p));
}
LC_AVX512_BF16 inline __m512bh load(const c10::BFloat16* p) {
  return reinterpret_cast<__m512bh>(_mm512_loadu_si512(p));
}

// One vector of K at k; Masked: the last, partial one.
template <int FB, int SB, bool Masked>
LC_AVX512_BF16 inline void dot_step(int64_t patch_size, int64_t k, const c10::BFloat16* filters,
                                    const c10::BFloat16* patches, __m512 (&acc)[FB][SB]) {
  const int64_t left = patch_size - k;
  const __mmask32 mask = left >= kPairLanes ? ~__mmask32(0) : (__mmask32(1) << left) - 1;
  __m512bh w[FB];
#pragma GCC unroll 4
  for (int f = 0; f < FB; ++f) {
    _mm_prefetch(reinterpret_cast<const char*>(filters + (f + kAheadRows) * patch_size + k),
                 _MM_HINT_T1);
    w[f] = Masked ? load(mask, filters + f * patch_size + k) : load(filters + f * patch_size + k);
  }
#pragma GCC unroll 6
  for (int s = 0; s < SB; ++s) {
    const __m512bh p =
        Masked ? load(mask, patches + s * patch_size + k) : load(patches + s * patch_size + k);
#pragma GCC unroll 4
    for (int f = 0; f < FB; ++f) acc[f][s] = _mm512_dpbf16_ps(acc[f][s], w[f], p);
  }
}

template <int FB, int SB>
LC_AVX512_BF16 void forward_block(int64_t out_channels, int64_t patch_size,
                                  const c10::BFloat16* filters, const c10::BFloat16* patches,
                                  float* out) {
  __m512 acc[FB][SB];
#pragma GCC unroll 4
  for (int f = 0; f < FB; ++f)
#pragma GCC unroll 6
    for (int s = 0; s < SB; ++s) acc[f][s] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + kPairLanes <= patch_size; k += kPairLanes)
    dot_step<FB, SB, false>(patch_size, k, filters, patches, acc);
  if (k < patch_size) dot_step<FB, SB, true>(patch_size, k, filters, patches, acc);
  if constexpr (FB == 4) {
#pragma GCC unroll 6
    for (int s = 0; s < SB; ++s)
      _mm_storeu_ps(out + s * out_channels,
                    Avx512::reduce4(acc[0][s], acc[1][s], acc[2][s], acc[3][s]));
  } else {
#pragma GCC unroll 4
    for (int f = 0; f < FB; ++f)
#pragma GCC unroll 6
      for (int s = 0; s < SB; ++s) out[s * out_channels + f] = Avx512::reduce(acc[f][s]);
  }
}

using ForwardFn = void (*)(int64_t, int64_t, const c10::BFloat16*, const c10::BFloat16*, float*);
struct Forward {
  template <int FB, int SB>
  static constexpr ForwardFn at() {
    return &forward_block<FB, SB>;
  }
};
constexpr auto forward_blocks = make_block_table<ForwardFn, kFilters, kSamples, Forward>();


// ---- the gradients: pairs of rows interleaved column by column ----
constexpr int kMaxBlock = Avx512::kMaxBlock, kChunkVectors = Avx512::kChunkVectors;
constexpr int64_t kLanes = Avx512::kLanes, kChunk = kChunkVectors * kLanes;
// Pairs of samples whose grad_output pairs grad_filters gathers at a time (on the stack), for
// every chunk of K.
constexpr int64_t kPairRun = 64;

// (a[t], b[t]) for the 16 columns t from a and b on, a pair per float lane: columns off `mask`
// are 0, and so is b's half where b_mask is empty (the missing partner of an odd row).
LC_AVX512_BF16 inline __m512bh interleave(const c10::BFloat16* a, const c10::BFloat16* b,
                                          __mmask16 mask, __mmask16 b_mask) {
  const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                         24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                         16, 0);
  const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_maskz_loadu_epi16(mask, a)),
                                          _mm256_maskz_loadu_epi16(b_mask, b), 1);
  return reinterpret_cast<__m512bh>(_mm512_permutexvar_epi16(order, both));
}

// A pair of bfloat16 values, the first in the low half, broadcast to every lane.
LC_AVX512_BF16 inline __m512bh broadcast_pair(uint32_t pair) {
  return reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(pair)));
}

// The CV vectors of a chunk of K, rows a and b interleaved; the last vector under `last`.
template <int CV>
LC_AVX512_BF16 inline void interleave_chunk(const c10::BFloat16* a, const c10::BFloat16* b,
                                            bool has_b, __mmask16 last, __m512bh (&to)[CV]) {
#pragma GCC unroll 4
  for (int v = 0; v < CV; ++v) {
    const __mmask16 mask = v == CV - 1 ? last : __mmask16(0xFFFF);
    to[v] = interleave(a + v * kLanes, b + v * kLanes, mask, has_b ? mask : __mmask16(0));
  }
}

// A pair of neighbouring bfloat16 values from memory, the first in the low half, broadcast to
// every lane: one 32-bit broadcast load.
LC_AVX512_BF16 inline __m512bh broadcast_word(const c10::BFloat16* p) {
  uint32_t word;
  std::memcpy(&word, p, sizeof(word));
  return broadcast_pair(word);
}

// grad_patches over the output channels o and o + 1 (Odd: o alone, the last of an odd count,
// paired with zeros). A sample's pair of grad_output values are neighbours in its row: one
// broadcast load, not two loads, a shift and an or per sample (which had left DeepFace L6's
// bfloat16 grad_patches about as slow as float32's; grad_input 0.96x, convnet_local3 0.88x).
template <int SB, int CV, bool Odd>
LC_AVX512_BF16 inline void grad_patches_pair(int64_t o, int64_t out_channels,
                                             int64_t patch_size, __mmask16 last,
                                             const c10::BFloat16* filters,
                                             const c10::BFloat16* grad_output, bool prefetch,
                                             __m512 (&acc)[SB][CV]) {
  const c10::BFloat16* a = filters + o * patch_size;
  // The filters stream from memory once: both rows' chunk after next, into L2 (as the float
  // grad_patches).
  if (prefetch) {
    for (const c10::BFloat16* row : {a, a + patch_size})
      for (int64_t byte = 0; byte < kChunk * int64_t{sizeof(c10::BFloat16)}; byte += 64)
        _mm_prefetch(reinterpret_cast<const char*>(row + 2 * kChunk) + byte, _MM_HINT_T1);
  }
  __m512bh w[CV];
  interleave_chunk<CV>(a, a + patch_size, !Odd, last, w);
#pragma GCC unroll 6
  for (int s = 0; s < SB; ++s) {
    const c10::BFloat16* go = grad_output + s * out_channels + o;
    const __m512bh g = Odd ? broadcast_pair(go->x) : broadcast_word(go);
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) acc[s][v] = _mm512_dpbf16_ps(acc[s][v], w[v], g);
  }
}

// grad_patches: SB samples x CV vectors of K, summed over the output channels two at a time.
template <int SB, int CV>
LC_AVX512_BF16 void grad_patches_block(int64_t out_channels, int64_t patch_size, __mmask16 last,
                                       const c10::BFloat16* filters,
                                       const c10::BFloat16* grad_output, float* grad_patches,
                                       bool prefetch) {
  __m512 acc[SB][CV];
#pragma GCC unroll 6
  for (int s = 0; s < SB; ++s)
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) acc[s][v] = _mm512_setzero_ps();
  int64_t o = 0;
  for (; o + 1 < out_channels; o += 2) {
    grad_patches_pair<SB, CV, false>(o, out_channels, patch_size, last, filters, grad_output,
                                     prefetch, acc);
  }
  if (o < out_channels) {
    grad_patches_pair<SB, CV, true>(o, out_channels, patch_size, last, filters, grad_output,
                                    prefetch, acc);
  }
#pragma GCC unroll 6
  for (int s = 0; s < SB; ++s) {
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v)
      Avx512::store(v == CV - 1 ? last : Avx512::tail(kLanes),
                    grad_patches + s * patch_size + v * kLanes, acc[s][v]);
  }
}

// The CV float vectors of a chunk of K rounded to bfloat16 at `to`, the last under `last`.
// Where `stream` (final banks, written once; the caller fences), each two whole vectors that fill
// a cache line on its boundary are streamed past the caches, a line at a time: a bank's stores
// had first read each line from memory (mid_32x32_c64's bfloat16 grad_weight writes 75 MB of
// banks). Lines not whole or off a boundary are stored.
template <int CV>
LC_AVX512_BF16 inline void store_rounded(const __m512 (&sums)[CV], __mmask16 last, bool stream,
                                         c10::BFloat16* to) {
  __m256i rounded[CV];
#pragma GCC unroll 4
  for (int v = 0; v < CV; ++v) rounded[v] = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(sums[v]));
  for (int v = 0; v < CV;) {
    c10::BFloat16* at = to + v * kLanes;
    const bool whole_pair = v + 2 < CV || (v + 2 == CV && last == 0xFFFF);
    if (stream && whole_pair && reinterpret_cast<uintptr_t>(at) % kLine == 0) {
      const __m512i line = _mm512_inserti64x4(_mm512_castsi256_si512(rounded[v]),
                                              rounded[std::min(v + 1, CV - 1)], 1);
      _mm512_stream_si512(reinterpret_cast<__m512i*>(at), line);
      v += 2;
    } else {
      _mm256_mask_storeu_epi16(at, v == CV - 1 ? last : __mmask16(0xFFFF), rounded[v]);
      v += 1;
    }
  }
}

// grad_filters: FB filters x CV vectors of K, summed over `pairs` pairs of samples (from
// patches on), onto the sums at grad_filters where accumulate; the sums stored to grad_filters,
// or where `rounded` is not null rounded there instead (by vcvtneps2bf16, as the row tiles'):
// where `stream`, two whole rounded vectors that fill a cache line streamed past the caches
// (store_rounded).
// go_pairs[p * kMaxBlock + f]: the pair p's grad_output pair of filter f, built once for every
// chunk of K by the caller (per chunk, its two loads, shift and or per filter and pair had cost
// as many instructions as the products).
template <int FB, int CV>
LC_AVX512_BF16 void grad_filters_block(int64_t samples, int64_t pairs, int64_t patch_size,
                                       __mmask16 last, const c10::BFloat16* patches,
                                       const uint32_t* go_pairs, bool accumulate,
                                       float* grad_filters, c10::BFloat16* rounded, bool stream) {
  __m512 acc[FB][CV];
#pragma GCC unroll 6
  for (int f = 0; f < FB; ++f) {
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) {
      const __mmask16 mask = v == CV - 1 ? last : Avx512::tail(kLanes);
      acc[f][v] = accumulate ? Avx512::load(mask, grad_filters + f * patch_size + v * kLanes)
                             : _mm512_setzero_ps();
    }
  }
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t n = 2 * p;
    __m512bh x[CV];
    interleave_chunk<CV>(patches + n * patch_size, patches + (n + 1) * patch_size,
                         n + 1 < samples, last, x);
#pragma GCC unroll 6
    for (int f = 0; f < FB; ++f) {
      const __m512bh g = broadcast_pair(go_pairs[p * kMaxBlock + f]);
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) acc[f][v] = _mm512_dpbf16_ps(acc[f][v], x[v], g);
    }
  }
#pragma GCC unroll 6
  for (int f = 0; f < FB; ++f) {
    if (rounded != nullptr) {
      store_rounded<CV>(acc[f], last, stream, rounded + f * patch_size);
      continue;
    }
#pragma GCC unroll 4
    for (int v = 0; v < CV; ++v) {
      const __mmask16 mask = v == CV - 1 ? last : Avx512::tail(kLanes);
      Avx512::store(mask, grad_filters + f * patch_size + v * kLanes, acc[f][v]);
    }
  }
}

using GradPatchesFn = void (*)(int64_t, int64_t, __mmask16, const c10::BFloat16*,
                               const c10::BFloat16*, float*, bool);
using GradFiltersFn = void (*)(int64_t, int64_t, int64_t, __mmask16, const c10::BFloat16*,
                               const uint32_t*, bool, float*, c10::BFloat16*, bool);
struct GradPatches {
  template <int SB, int CV>
  static constexpr GradPatchesFn at() {
    return &grad_patches_block<SB, CV>;
  }
};
struct GradFilters {
  template <int FB, int CV>
  static constexpr GradFiltersFn at() {
    return &grad_filters_block<FB, CV>;
  }
};
constexpr auto grad_patches_blocks =
    make_block_table<GradPatchesFn, kMaxBlock, kChunkVectors, GradPatches>();
constexpr auto grad_filters_blocks =
    make_block_table<GradFiltersFn, kMaxBlock, kChunkVectors, GradFilters>();

// ---- forward in place: S samples x OB vectors of C_out, a pair of kernel columns at a time ----
// Where the batch is large against a patch row and a row's columns are neighbours in memory
// (forward_pairs_in_place_fits), the forward skips packing, as the float forward in place does:
// the location's filters are transposed once into pairs of neighbouring kernel columns, and each
// pair of input elements is broadcast from the input itself (one 32-bit broadcast) onto the OB
// vectors of C_out, for S samples at once. A row's pairs are its columns (0, 1), (2, 3), ...;
// where only one column of a pair is read (an odd kernel_w's last, or the other in the padding),
// the input and the weights are both broadcast into its half alone, the other half 0: nothing
// outside the patch is read or multiplied, and a non-finite weight in the padding does not reach
// the output (as in the float forward in place).

// The 32-bit pair of rows[l][r * kernel_w + 2p] (low half) and [... + 2p + 1] (high; 0 past the
// row's end) of 16 rows of K (a block of output channels' filters, or a row tile's locations'
// filters of one output channel; rows l >= present read as 0), for patch row r and pair p, at
// pairs[(r * per_row + p) * pair_stride + l], per_row = ceil(kernel_w / 2). In two passes. First
// the rows' 32-bit words (the pairs (2m, 2m + 1) as they lie in memory) transposed into `words`
// (ceil(K / 2) x 16), 16 x 16 words at a time in registers. Then each pair from them: a word
// where the pair starts at an even k, else the halves of two neighbouring words (a row starts at
// an odd k wherever kernel_w is odd; where it is even, the words are the pairs, and go there
// directly). One pass that widened each bfloat16 to a float and stored every column into its
// half of the pairs had cost half as much as the products (DeepFace L6); two passes with the
// widened columns between them, still 0.4x (L5).
LC_AVX512_BF16 void transpose_pairs(const c10::BFloat16* const* rows, int64_t present,
                                    int64_t patch_size, int64_t row_count, int64_t kernel_w,
                                    uint32_t* words, uint32_t* pairs, int64_t pair_stride) {
  const int64_t per_row = ceil_div(kernel_w, 2);
  const int64_t word_count = ceil_div(patch_size, 2);
  const auto word = [&](int64_t m) LC_AVX512_BF16 {
    return _mm512_loadu_si512(words + m * kLanes);
  };
  // Where kernel_w is even, every row starts at an even k and its pairs are its words, which
  // go straight into the pairs.
  float* to_words = reinterpret_cast<float*>(kernel_w % 2 == 0 ? pairs : words);
  const int64_t word_stride = kernel_w % 2 == 0 ? pair_stride : kLanes;
  for (int64_t m0 = 0; m0 < word_count; m0 += kLanes) {
    const int64_t left = patch_size - 2 * m0;  // bfloat16 elements from word m0 on
    const __mmask32 read = left >= kPairLanes ? ~__mmask32(0) : (__mmask32(1) << left) - 1;
    __m512 square[kLanes];
#pragma GCC unroll 16
    for (int l = 0; l < kLanes; ++l)
      square[l] = l < present
                      ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(read, rows[l] + 2 * m0))
                      : _mm512_setzero_ps();
    Avx512::transpose(square);
#pragma GCC unroll 16
    for (int m = 0; m < kLanes; ++m)
      if (m0 + m < word_count) _mm512_storeu_ps(to_words + (m0 + m) * word_stride, square[m]);
  }
  if (kernel_w % 2 == 0) return;
  const __m512i low_half = _mm512_set1_epi32(0xFFFF);
  for (int64_t r = 0; r < row_count; ++r) {
    uint32_t* to = pairs + r * per_row * pair_stride;
    const int64_t m = r * kernel_w / 2, full = kernel_w / 2;  // the word of the row's start
    if (r * kernel_w % 2 == 0) {
      for (int64_t p = 0; p < full; ++p, to += pair_stride)
        _mm512_storeu_si512(to, word(m + p));
      _mm512_storeu_si512(to, _mm512_and_si512(word(m + full), low_half));
    } else {  // k's value lies in word m's high half, its partner's in the next word's low
      for (int64_t p = 0; p < full; ++p, to += pair_stride)
        _mm512_storeu_si512(to, _mm512_or_si512(_mm512_srli_epi32(word(m + p), 16),
                                                _mm512_slli_epi32(word(m + p + 1), 16)));
      _mm512_storeu_si512(to, _mm512_srli_epi32(word(m + full), 16));
    }
  }
}

// The most lines of a bank grad_filters_in_place fetches ahead of its transposition: a quarter
// of a 1 MiB L2.
constexpr int64_t kBankAheadLines = (int64_t(1) << 18) / kLine;

// Which columns of a pair a step reads.
enum class PairHalves { both, first, second };

// One pair of kernel columns for S samples x OB vectors of C_out: `x` the pair's first read
// element of sample 0, `w` the pair's weights of the block's first output channel.
template <int OB, int S, PairHalves Halves>
LC_AVX512_BF16 inline void pair_step(const c10::BFloat16* x, int64_t sample_stride,
                                     const uint32_t* w, __m512 (&acc)[S][OB]) {
  constexpr __mmask32 kHalf = Halves == PairHalves::first ? 0x55555555 : 0xAAAAAAAA;
  __m512bh weights[OB];
#pragma GCC unroll 4
  for (int b = 0; b < OB; ++b) {
    weights[b] = reinterpret_cast<__m512bh>(Halves == PairHalves::both
                                                ? _mm512_loadu_si512(w + b * kLanes)
                                                : _mm512_maskz_loadu_epi16(kHalf, w + b * kLanes));
  }
#pragma GCC unroll 8
  for (int s = 0; s < S; ++s) {
    const c10::BFloat16* element = x + s * sample_stride;
    __m512i both;
    if constexpr (Halves == PairHalves::both) {
      uint32_t pair;
      std::memcpy(&pair, element, sizeof(pair));
      both = _mm512_set1_epi32(static_cast<int>(pair));
    } else {
      both = _mm512_maskz_set1_epi16(kHalf, static_cast<short>(element->x));
    }
#pragma GCC unroll 4
    for (int b = 0; b < OB; ++b)
      acc[s][b] = _mm512_dpbf16_ps(acc[s][b], weights[b], reinterpret_cast<__m512bh>(both));
  }
}

// out[s * C_out + b * 16 + lane] = the patch of sample s (at input + s * sample_stride; `rows`
// as patch_rows leaves them, kernel column q of a row at row.source + q - row.first) times the
// pairs of the OB vectors of C_out from `pairs` on, for s < S. Each patch row takes a step of
// `ahead` (the next location's filters).
template <int OB, int S>
LC_AVX512_BF16 void pairs_in_place_block(const c10::BFloat16* input, int64_t sample_stride,
                                         const PatchRow* rows, int64_t row_count,
                                         int64_t per_row, const uint32_t* pairs,
                                         int64_t out_channels, float* out, FetchAhead& ahead) {
  __m512 acc[S][OB];
#pragma GCC unroll 8
  for (int s = 0; s < S; ++s)
#pragma GCC unroll 4
    for (int b = 0; b < OB; ++b) acc[s][b] = _mm512_setzero_ps();
  for (int64_t r = 0; r < row_count; ++r) {
    ahead.step();
    const PatchRow& row = rows[r];
    const uint32_t* weights = pairs + r * per_row * out_channels;
    const c10::BFloat16* from = input + row.source;  // column row.first
    int64_t q = row.first;
    if (q < row.last && q % 2 == 1) {  // the pair's first column lies in the padding
      pair_step<OB, S, PairHalves::second>(from, sample_stride, weights + q / 2 * out_channels,
                                           acc);
      ++q;
    }
    for (; q + 1 < row.last; q += 2)
      pair_step<OB, S, PairHalves::both>(from + (q - row.first), sample_stride,
                                         weights + q / 2 * out_channels, acc);
    if (q < row.last)  // the row's last column, or its partner in the padding
      pair_step<OB, S, PairHalves::first>(from + (q - row.first), sample_stride,
                                          weights + q / 2 * out_channels, acc);
  }
#pragma GCC unroll 8
  for (int s = 0; s < S; ++s)
#pragma GCC unroll 4
    for (int b = 0; b < OB; ++b) _mm512_storeu_ps(out + s * out_channels + b * kLanes, acc[s][b]);
}

// The samples of a block by OB vectors of C_out (register_blocks.h).
template <int OB>
constexpr int kPairSamples = in_place_samples(kLanes, OB);

template <int OB, int S = kPairSamples<OB>>
LC_AVX512_BF16 void pairs_in_place_samples(int64_t count, const c10::BFloat16* input,
                                           int64_t sample_stride, const PatchRow* rows,
                                           int64_t row_count, int64_t per_row,
                                           const uint32_t* pairs, int64_t out_channels,
                                           float* out, FetchAhead& ahead) {
  if constexpr (S > 1) {
    if (count < S)
      return pairs_in_place_samples<OB, S - 1>(count, input, sample_stride, rows, row_count,
                                               per_row, pairs, out_channels, out, ahead);
  }
  pairs_in_place_block<OB, S>(input, sample_stride, rows, row_count, per_row, pairs,
                              out_channels, out, ahead);
}

// ---- forward row tiles by pairs of kernel columns: FB filters x S samples over 16 locations ----
// The row tiles of vector_kernels_impl.h (forward_row_run) with vdpbf16ps: each lane is a
// location of the tile, and a pair is two neighbouring kernel columns (q, q + 1) of one patch row.
// The input pair of location t, (x[t + q], x[t + q + 1]) (dilation apart), comes from two masked
// loads of the row interleaved by one vpermt2w; an odd kernel_w's last column pairs with zeros
// (a zero-extended load, and its filters' zero high half). The filters are staged as pairs per
// location (stage_pair_filters) and the sums rounded to bfloat16 by vcvtneps2bf16: the widened
// row tiles had spent two instructions widening each input vector and about nine rounding each
// output vector in software.

// forward_row_run's row_tile_block for bfloat16 by pairs: as there (the same arguments), its
// filters the pairs at `filters`: the pair kp = r * ceil(kernel_w / 2) + p of filter f at
// [(kp * FB + f) * 16 + t], t the location in the tile.
template <int FB, int S>
LC_AVX512_BF16 void pair_row_tile_block(const c10::BFloat16* sample, const Strides5& s,
                                        const Geometry& g, const int64_t* rows, int64_t j0,
                                        uint16_t width_mask, const uint16_t* columns,
                                        const float* filters, const float* bias,
                                        c10::BFloat16* out, int64_t sample_out, int64_t plane,
                                        bool /*stream: float only*/, FetchAhead& ahead) {
  const uint32_t* pairs = reinterpret_cast<const uint32_t*>(filters);
  // Word t of the interleaved pair: 16-bit lane 2t from the first load's lane t, 2t + 1 from
  // the second's (vpermt2w indices 32 and on).
  const __m512i order = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9,
                                         40, 8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1,
                                         32, 0);
  __m512 acc[S][FB];
#pragma GCC unroll 8
  for (int n = 0; n < S; ++n)
#pragma GCC unroll 4
    for (int f = 0; f < FB; ++f) acc[n][f] = _mm512_loadu_ps(bias + f * kRowTileLocations);
  const int64_t full = g.kernel_w / 2;
  const auto step = [&](const __m512i (&values)[S], int64_t kp) LC_AVX512_BF16 {
#pragma GCC unroll 4
    for (int f = 0; f < FB; ++f) {
      const __m512bh weights = reinterpret_cast<__m512bh>(
          _mm512_loadu_si512(pairs + (kp * FB + f) * kRowTileLocations));
#pragma GCC unroll 8
      for (int n = 0; n < S; ++n)
        acc[n][f] = _mm512_dpbf16_ps(acc[n][f], weights, reinterpret_cast<__m512bh>(values[n]));
    }
  };
  int64_t kp = 0;
  for_row_tile_patch_rows<S>(
      rows, patch_row_count(g), s.n, j0, sample, ahead,
      [&](const c10::BFloat16* row) LC_AVX512_BF16 {
        for (int64_t q = 0; q < 2 * full; q += 2, ++kp) {
          // Location j0 + t reads input column x + t; lanes outside the row read the padding.
          const int64_t x = j0 - g.pad_w + q * g.dilation_w;
          __m512i values[S];
#pragma GCC unroll 8
          for (int n = 0; n < S; ++n) {
            const c10::BFloat16* at = row + n * s.n + x;
            values[n] = _mm512_permutex2var_epi16(
                _mm512_castsi256_si512(_mm256_maskz_loadu_epi16(columns[q], at)), order,
                _mm512_castsi256_si512(
                    _mm256_maskz_loadu_epi16(columns[q + 1], at + g.dilation_w)));
          }
          step(values, kp);
        }
        if (g.kernel_w % 2 == 1) {  // the last column, paired with zeros
          const int64_t q = g.kernel_w - 1, x = j0 - g.pad_w + q * g.dilation_w;
          __m512i values[S];
#pragma GCC unroll 8
          for (int n = 0; n < S; ++n)
            values[n] = _mm512_cvtepu16_epi32(
                _mm256_maskz_loadu_epi16(columns[q], row + n * s.n + x));
          step(values, kp++);
        }
      },
      [&] { kp += ceil_div(g.kernel_w, 2); });
#pragma GCC unroll 8
  for (int n = 0; n < S; ++n) {
#pragma GCC unroll 4
    for (int f = 0; f < FB; ++f) {
      c10::BFloat16* to = out + n * sample_out + f * plane;
      __builtin_prefetch(to + kRowTilePrefetchTiles * kRowTileLocations, 1);
      _mm256_mask_storeu_epi16(to, width_mask,
                               reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(acc[n][f])));
    }
  }
}

struct PairRowTile {
  // The blocks forward_row_run runs (row_tile_samples' counts and their halves; the others
  // would need more registers than there are): null for the rest.
  template <int FB, int S>
  static constexpr avx512_bf16::PairRowTileBlock at() {
    if constexpr (S <= row_tile_samples(kLanes, FB))
      return &pair_row_tile_block<FB, S>;
    else
      return nullptr;
  }
};
constexpr auto pair_row_tile_blocks =
    make_block_table<avx512_bf16::PairRowTileBlock, kPairRowTileFilters, kPairRowTileSamples,
                     PairRowTile>();

// ---- grad_weight in place: pairs of samples, KB patch columns x OB vectors of C_out ----
// The adjoint of the forward in place, where grad_weight_pairs_in_place_fits: grad_filters sums
// over the samples, so its pairs are two samples (n, n + 1), as grad_filters pairs them. The
// input is paired once per call (pair_samples: each element of samples 2p and 2p + 1 side by side
// in one word), so that each patch column's pair is one 32-bit broadcast from memory; each
// location's grad_output is paired once (the pairs of each output channel across a vector), and
// the sums are kept as K x C_out (sums_t) and transposed into the filter bank, as float's.

// sums_t[k * C_out + b * 16 + lane] (+)= the sum over the pairs p < pairs of the word
// paired[p * pair_stride + sources[kb]] (two samples' input element) times the word
// go_pairs[p * C_out + b * 16 + lane] (their grad_output), for the KB patch columns
// k = columns[kb]; onto what sums_t holds where accumulate.
template <int KB, int OB>
LC_AVX512_BF16 void sample_pairs_block(const uint32_t* paired, int64_t pair_stride,
                                       int64_t pairs, const int64_t* sources,
                                       const int64_t* columns, const uint32_t* go_pairs,
                                       int64_t out_channels, bool accumulate, float* sums_t) {
  __m512 acc[KB][OB];
#pragma GCC unroll 8
  for (int kb = 0; kb < KB; ++kb)
#pragma GCC unroll 4
    for (int b = 0; b < OB; ++b)
      acc[kb][b] = accumulate ? _mm512_loadu_ps(sums_t + columns[kb] * out_channels + b * kLanes)
                              : _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh go[OB];
#pragma GCC unroll 4
    for (int b = 0; b < OB; ++b)
      go[b] = reinterpret_cast<__m512bh>(
          _mm512_loadu_si512(go_pairs + p * out_channels + b * kLanes));
    const uint32_t* words = paired + p * pair_stride;
#pragma GCC unroll 8
    for (int kb = 0; kb < KB; ++kb) {
      const __m512bh x = broadcast_pair(words[sources[kb]]);
#pragma GCC unroll 4
      for (int b = 0; b < OB; ++b) acc[kb][b] = _mm512_dpbf16_ps(acc[kb][b], go[b], x);
    }
  }
#pragma GCC unroll 8
  for (int kb = 0; kb < KB; ++kb)
#pragma GCC unroll 4
    for (int b = 0; b < OB; ++b)
      _mm512_storeu_ps(sums_t + columns[kb] * out_channels + b * kLanes, acc[kb][b]);
}

template <int OB, int KB = in_place_columns(kLanes, OB)>
LC_AVX512_BF16 void sample_pairs_columns(int64_t count, const uint32_t* paired,
                                         int64_t pair_stride, int64_t pairs,
                                         const int64_t* sources, const int64_t* columns,
                                         const uint32_t* go_pairs, int64_t out_channels,
                                         bool accumulate, float* sums_t) {
  if constexpr (KB > 1) {
    if (count < KB)
      return sample_pairs_columns<OB, KB - 1>(count, paired, pair_stride, pairs, sources, columns,
                                              go_pairs, out_channels, accumulate, sums_t);
  }
  sample_pairs_block<KB, OB>(paired, pair_stride, pairs, sources, columns, go_pairs,
                             out_channels, accumulate, sums_t);
}

// grad_filters_in_place's sums transposed, to[c * rows + r] = from[r * columns + c]: floats as
// they are, bfloat16 rounded by vcvtneps2bf16 (as the row tiles' and the packed grad_weight's
// sums; the AVX-512 build rounds in software, about half the transposition's instructions).
template <typename T>
LC_AVX512_BF16 void transpose_sums(const float* from, int64_t rows, int64_t columns, T* to) {
  for_transposed_squares<Avx512>(
      from, rows, columns, [&](int64_t c, int64_t r0, int64_t present, __m512 v) LC_AVX512_BF16 {
        if constexpr (std::is_same_v<T, float>) {
          Avx512::store(Avx512::tail(present), to + c * rows + r0, v);
        } else {
          _mm256_mask_storeu_epi16(to + c * rows + r0, Avx512::tail(present),
                                   reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
        }
      });
}

// to[p * to_stride + c] = the pair (rows[2p][c], rows[2p + 1][c]) for the `columns` columns c of
// the first `count` rows (row n at n * row_stride), p < ceil(count / 2): the input and
// grad_output paired by samples, as grad_weight sums over them. An odd count's last row has a
// zero partner (as has the input's past the batch, so that the missing sample adds 0). (The entry
// points carry no target attribute: their bodies that use the AVX512-BF16 intrinsics are
// functions of their own, as this one.)
LC_AVX512_BF16 void pair_rows(const c10::BFloat16* rows, int64_t count, int64_t row_stride,
                              int64_t columns, uint32_t* to, int64_t to_stride) {
  for (int64_t p = 0; p < ceil_div(count, 2); ++p) {
    const c10::BFloat16* a = rows + 2 * p * row_stride;
    const bool has_b = 2 * p + 1 < count;
    for (int64_t c = 0; c < columns; c += kLanes) {
      const __mmask16 mask = Avx512::tail(columns - c);
      _mm512_mask_storeu_epi32(to + p * to_stride + c, mask,
                               reinterpret_cast<__m512i>(interleave(
                                   a + c, a + row_stride + c, mask, has_b ? mask : 0)));
    }
  }
}

// The vectors of the chunk of K starting at k, and the mask of its last one.
struct Chunk {
  int vectors;
  __mmask16 last;
};
inline Chunk chunk_at(int64_t patch_size, int64_t k) {
  const int64_t width = std::min(kChunk, patch_size - k);
  const int vectors = static_cast<int>((width + kLanes - 1) / kLanes);
  const int64_t in_last = width - (vectors - 1) * kLanes;
  return {vectors, in_last >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << in_last) - 1)};
}
}  // namespace

namespace avx512_bf16 {

void forward(int64_t out_channels, int64_t samples, int64_t patch_size,
             const c10::BFloat16* filters, const c10::BFloat16* patches, float* out) {
  const EvenBlocks sample_blocks(samples, kSamples);
  for (int64_t o = 0; o < out_channels; o += kFilters) {
    const int64_t rows = std::min<int64_t>(kFilters, out_channels - o);
    for (int64_t b = 0; b < sample_blocks.count; ++b) {
      const int64_t s = sample_blocks.first(b);
      forward_blocks[rows - 1][sample_blocks.size(b) - 1](out_channels, patch_size,
                                                          filters + o * patch_size,
                                                          patches + s * patch_size,
                                                          out + s * out_channels + o);
    }
  }
}

void forward_in_place(int64_t out_channels, int64_t samples, const c10::BFloat16* input,
                      int64_t sample_stride, const PatchRow* rows, const Geometry& g,
                      const c10::BFloat16* filters, uint32_t* pairs,
                      const c10::BFloat16* next, float* out) {
  const int64_t row_count = patch_row_count(g), per_row = ceil_div(g.kernel_w, 2);
  // 16 output channels at a time; the words after the pairs (in_place_pairs_scratch).
  const int64_t patch_size = g.patch_size();
  for (int64_t o0 = 0; o0 < out_channels; o0 += kLanes) {
    const c10::BFloat16* rows[kLanes];
    for (int64_t o = 0; o < kLanes; ++o) rows[o] = filters + (o0 + o) * patch_size;
    transpose_pairs(rows, kLanes, patch_size, row_count, g.kernel_w,
                    pairs + row_count * per_row * out_channels, pairs + o0, out_channels);
  }
  const int64_t vectors = out_channels / kLanes;
  int64_t block_rows = 0;
  for_vector_blocks<4>(vectors, [&](auto ob, int64_t) LC_AVX512_BF16 {
    block_rows += row_count * ceil_div(samples, kPairSamples<decltype(ob)::value>);
  });
  const int64_t next_lines =
      next == nullptr ? 0
                      : ceil_div(out_channels * patch_size * int64_t(sizeof(c10::BFloat16)),
                                 kLine);
  FetchAhead ahead(reinterpret_cast<uintptr_t>(next), next_lines, block_rows);
  for_vector_blocks<4>(vectors, [&](auto ob, int64_t v) LC_AVX512_BF16 {
    constexpr int OB = decltype(ob)::value;
    constexpr int S = kPairSamples<OB>;
    for (int64_t n0 = 0; n0 < samples; n0 += S) {
      pairs_in_place_samples<OB>(std::min<int64_t>(S, samples - n0),
                                 input + n0 * sample_stride, sample_stride, rows, row_count,
                                 per_row, pairs + v * kLanes, out_channels,
                                 out + n0 * out_channels + v * kLanes, ahead);
    }
  });
}

PairRowTileBlock pair_row_tile_block(int filters, int samples) {
  return pair_row_tile_blocks[filters - 1][samples - 1];
}

void stage_pair_filters(const Geometry& g, const c10::BFloat16* const* banks, int64_t width,
                        int64_t filter_block, FetchAhead& ahead, uint32_t* pairs) {
  const int64_t patch_size = g.patch_size(), pair_count = pair_row_tile_pairs(g);
  // The words of one filter of the tile's locations (pair_row_tiles_fit bounds the patch).
  TORCH_INTERNAL_ASSERT(patch_size <= kPairRowTilePatch, "a patch of ", patch_size,
                        " is past the pairs' row tiles");
  uint32_t words[kPairRowTilePatch / 2 * kLanes];
  for_filter_blocks(g, filter_block, [&](int64_t, int64_t o, int64_t block) LC_AVX512_BF16 {
    for (int64_t f = 0; f < block; ++f) {
      for (int64_t k0 = 0; k0 < patch_size; k0 += kLanes) ahead.step();
      const c10::BFloat16* rows[kLanes];
      for (int64_t t = 0; t < width; ++t) rows[t] = banks[t] + (o + f) * patch_size;
      transpose_pairs(rows, width, patch_size, patch_row_count(g), g.kernel_w, words,
                      pairs + o * pair_count * kRowTileLocations + f * kRowTileLocations,
                      block * kRowTileLocations);
    }
  });
}

void pair_samples(const c10::BFloat16* input, int64_t sample_size, int64_t batch, int64_t first,
                  int64_t last, uint32_t* paired) {
  pair_rows(input + 2 * first * sample_size, std::min(batch - 2 * first, 2 * (last - first)),
            sample_size, sample_size, paired + first * sample_size, sample_size);
}

void grad_filters_in_place(int64_t out_channels, int64_t samples, const uint32_t* paired,
                           int64_t sample_stride, int64_t step, const PatchRow* rows,
                           const Geometry& g, const c10::BFloat16* grad_output, bool accumulate,
                           float* sums_t, int64_t* columns, uint32_t* go_pairs,
                           float* grad_filters, c10::BFloat16* rounded) {
  const int64_t patch_size = g.patch_size(), pairs = ceil_div(samples, 2);
  if (accumulate) transpose_sums(grad_filters, out_channels, patch_size, sums_t);
  int64_t* sources = columns + patch_size;
  const int64_t count = input_columns(rows, g, step, columns, sources, [&](int64_t k) {
    // A column in the padding reads zeros: its sums are zero.
    if (!accumulate) std::fill_n(sums_t + k * out_channels, out_channels, 0.0f);
  });
  pair_rows(grad_output, samples, out_channels, out_channels, go_pairs, out_channels);
  // The bank the transposition below writes (bfloat16, or the float sums of a sample block but
  // the last), fetched into the L2 while the last block of vectors goes by: its stores, 32 or 64
  // bytes into each of 16 filters' rows, had waited on one line after another (DeepFace L5's
  // grad_weight 0.87x with this, L6's and convnet_local3's 1.00x). Not a bank past a quarter of
  // the L2, which would push out what the products read.
  const int64_t vectors = out_channels / kLanes;
  const uintptr_t bank = rounded != nullptr ? reinterpret_cast<uintptr_t>(rounded)
                                            : reinterpret_cast<uintptr_t>(grad_filters);
  const int64_t bank_bytes = patch_size * out_channels *
                             int64_t(rounded != nullptr ? sizeof(c10::BFloat16) : sizeof(float));
  const int64_t bank_lines = ceil_div(bank % kLine + bank_bytes, kLine);
  for_vector_blocks<4>(vectors, [&](auto ob, int64_t v) LC_AVX512_BF16 {
    constexpr int OB = decltype(ob)::value;
    constexpr int KB = in_place_columns(kLanes, OB);
    const bool last_block = v + OB == vectors;
    FetchAhead bank_ahead(bank / kLine * kLine,
                          last_block && bank_lines <= kBankAheadLines ? bank_lines : 0,
                          ceil_div(count, KB));
    for (int64_t c = 0; c < count; c += KB) {
      bank_ahead.step();
      sample_pairs_columns<OB>(std::min<int64_t>(KB, count - c), paired, sample_stride, pairs,
                               sources + c, columns + c, go_pairs + v * kLanes, out_channels,
                               accumulate, sums_t + v * kLanes);
    }
  });
  if (rounded != nullptr)
    transpose_sums(sums_t, patch_size, out_channels, rounded);
  else
    transpose_sums(sums_t, patch_size, out_channels, grad_filters);
}

void grad_patches(int64_t out_channels, int64_t samples, int64_t patch_size,
                  const c10::BFloat16* filters, const c10::BFloat16* grad_output,
                  const c10::BFloat16* next, float* grad_patches) {
  const EvenBlocks sample_blocks(samples, kMaxBlock);
  RowHeadsAhead<c10::BFloat16> ahead(next, patch_size, out_channels, 2 * kChunk,
                                     ceil_div(patch_size, kChunk));
  for (int64_t k = 0; k < patch_size; k += kChunk) {
    ahead.step();
    const Chunk chunk = chunk_at(patch_size, k);
    for (int64_t b = 0; b < sample_blocks.count; ++b) {
      const int64_t s = sample_blocks.first(b);
      grad_patches_blocks[sample_blocks.size(b) - 1][chunk.vectors - 1](
          out_channels, patch_size, chunk.last, filters + k, grad_output + s * out_channels,
          grad_patches + s * patch_size + k, /*prefetch=*/b == 0);
    }
  }
}

void grad_filters(int64_t out_channels, int64_t samples, int64_t patch_size,
                  const c10::BFloat16* patches, const c10::BFloat16* grad_output, bool accumulate,
                  float* grad_filters, c10::BFloat16* rounded, bool stream) {
  const EvenBlocks filter_blocks(out_channels, kMaxBlock);
  const int64_t pairs = ceil_div(samples, 2);
  uint32_t go_pairs[kPairRun * kMaxBlock];
  for (int64_t b = 0; b < filter_blocks.count; ++b) {
    const int64_t o = filter_blocks.first(b), block = filter_blocks.size(b);
    // Runs of up to kPairRun pairs, each over every chunk of K: the sums go through
    // grad_filters between runs (floats, so the same sums as in registers), rounded after the
    // last.
    for (int64_t p0 = 0; p0 < pairs; p0 += kPairRun) {
      const int64_t run = std::min(kPairRun, pairs - p0);
      pair_rows(grad_output + 2 * p0 * out_channels + o, std::min(2 * run, samples - 2 * p0),
                out_channels, block, go_pairs, kMaxBlock);
      const bool last_run = p0 + run == pairs;
      for (int64_t k = 0; k < patch_size; k += kChunk) {
        const Chunk chunk = chunk_at(patch_size, k);
        grad_filters_blocks[block - 1][chunk.vectors - 1](
            samples - 2 * p0, run, patch_size, chunk.last, patches + 2 * p0 * patch_size + k,
            go_pairs, accumulate || p0 > 0, grad_filters + o * patch_size + k,
            rounded == nullptr || !last_run ? nullptr : rounded + o * patch_size + k, stream);
      }
    }
  }
}

}  // namespace avx512_bf16
}  // namespace cpu
}  // namespace lc_cuda
