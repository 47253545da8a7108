// The bfloat16 forward by vdpbf16ps (AVX512-BF16), the products of vector_kernels.h's avx512_bf16
// namespace. The forward's dot products run along K, where both operands are contiguous, so pairs
// of neighbouring k are exactly what vdpbf16ps multiplies and sums into a float lane: 32 products
// per instruction against a float FMA's 16, with nothing widened first. Structure as the float
// forward of vector_kernels_impl.h: 4 filters x up to 6 samples of accumulators, each reduced
// across its lanes once at the end; the last vector of K under a 32-lane mask (an odd K's last
// pair multiplies by 0). Compiled for AVX512-BF16 by attribute; callers check the CPU first
// (product_isa.h).
#include <immintrin.h>

#include "avx512_vectors.h"
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

}  // namespace avx512_bf16
}  // namespace cpu
}  // namespace lc_cuda
