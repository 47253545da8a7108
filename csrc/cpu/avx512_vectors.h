// AVX-512 as the vector kernels see it (vector_kernels_impl.h): 16 float lanes under 16-bit
// masks, loads that widen bfloat16 and float16 to float, stores that round back, lane sums.
// Every function is compiled for AVX-512 by attribute (LC_AVX512), not by a global flag, so that
// the library still loads on any x86-64 CPU; callers check the CPU first (product_isa.h).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#define LC_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

namespace lc_cuda {
namespace cpu {

struct Avx512 {
  static constexpr int kLanes = 16;
  // Block sizes, for 32 vector registers: the forward's filters x samples of dot products
  // (4 x 6 accumulators, 4 filter vectors, a patch vector); the gradients' rows (samples or
  // filters) x vectors of K (6 x 4 accumulators, 4 operand vectors, a broadcast); the row tiles'
  // filters (4, each block of them with as many samples as the registers hold: 6 for 4 filters,
  // 10 loads per 24 FMAs where 16 filters of one sample took 17 per 16; cunn232_c1's forward
  // 0.77x, medvol_32cube_c2's 0.86-0.96x).
  static constexpr int kForwardFilters = 4, kForwardSamples = 6;
  static constexpr int kMaxBlock = 6, kChunkVectors = 4;
  static constexpr int kRowTileFilters = 4;
  // grad_input_chunk_by_sources' patch columns per block: with its kSourceSamples (4) samples,
  // 24 accumulators, 4 grad_output vectors and a filter vector (cunn232_c1, K = 9 in two blocks,
  // against grad_input_rows_block: forward+grad_input 0.94x, forward+backward 0.95x; 3 samples
  // x 9 columns 1.07x slower, 8 x 2 1.03x).
  static constexpr int kSourceColumns = 6;
  using Vec = __m512;
  using Mask = __mmask16;

  // Lanes [0, count), all 16 for count >= 16; count >= 0.
  LC_AVX512 static Mask tail(int64_t count) {
    return count >= kLanes ? Mask(0xFFFF) : Mask((1u << count) - 1);
  }
  // The lanes of columns [first, last) of the 16 columns starting at `start`.
  LC_AVX512 static Mask columns(int64_t start, int64_t first, int64_t last) {
    const int64_t from = first - start > 0 ? first - start : 0;
    const int64_t to = last - start < kLanes ? last - start : kLanes;
    return to > from ? Mask(((1u << to) - 1) & ~((1u << from) - 1)) : Mask(0);
  }
  LC_AVX512 static Mask both(Mask a, Mask b) { return a & b; }
  LC_AVX512 static bool all(Mask m) { return m == 0xFFFF; }

  LC_AVX512 static Vec zero() { return _mm512_setzero_ps(); }
  LC_AVX512 static Vec set1(float x) { return _mm512_set1_ps(x); }
  LC_AVX512 static Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  LC_AVX512 static Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }

  // 16 elements of T from p as floats; masked: lanes off the mask read nothing and are 0.
  template <typename T>
  LC_AVX512 static Vec load(const T* p) {
    if constexpr (std::is_same_v<T, float>) {
      return _mm512_loadu_ps(p);
    } else {
      return widen<T>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
  }
  template <typename T>
  LC_AVX512 static Vec load(Mask m, const T* p) {
    if constexpr (std::is_same_v<T, float>) {
      return _mm512_maskz_loadu_ps(m, p);
    } else {
      return widen<T>(_mm256_maskz_loadu_epi16(m, p));
    }
  }
  // Stores the lanes on the mask as T, rounded to nearest even.
  template <typename T>
  LC_AVX512 static void store(Mask m, T* p, Vec v) {
    if constexpr (std::is_same_v<T, float>) {
      _mm512_mask_storeu_ps(p, m, v);
    } else {
      _mm256_mask_storeu_epi16(p, m, narrow<T>(v));
    }
  }
  template <typename T>
  LC_AVX512 static void store(T* p, Vec v) {
    if constexpr (std::is_same_v<T, float>) {
      _mm512_storeu_ps(p, v);
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow<T>(v));
    }
  }
  // A store that bypasses the caches: p on a 64-byte line.
  LC_AVX512 static void stream(float* p, Vec v) { _mm512_stream_ps(p, v); }
  // The 64-byte line at `from` copied to `to` past the caches: both on a line.
  LC_AVX512 static void stream_line(void* to, const void* from) {
    _mm512_stream_si512(static_cast<__m512i*>(to), _mm512_load_si512(from));
  }

  // Whole 64-byte lines of a 32- or 16-bit T (16 or 32 lanes), for packing patches a line at a
  // time (pack_lines): each row's lanes loaded under a mask, the rows of a line or'ed together
  // and the line stored whole, where packing a row at a time took a masked store per row.
  template <typename T>
  static constexpr bool kPacksByLines = true;
  static constexpr int kLineLocations = 4;  // 16 lines for 4 samples
  using Line = __m512i;
  template <typename T>
  static constexpr int kLineLanes = 64 / int(sizeof(T));
  template <typename T>
  using LineMask = std::conditional_t<sizeof(T) == 4, __mmask16, __mmask32>;
  // The lanes of columns [first, last) of the kLineLanes<T> columns starting at `start`.
  template <typename T>
  LC_AVX512 static LineMask<T> line_columns(int64_t start, int64_t first, int64_t last) {
    const int64_t from = first - start > 0 ? first - start : 0;
    const int64_t to = last - start < kLineLanes<T> ? last - start : kLineLanes<T>;
    return to > from ? LineMask<T>(((uint64_t{1} << to) - 1) & ~((uint64_t{1} << from) - 1))
                     : LineMask<T>(0);
  }
  LC_AVX512 static Line zero_line() { return _mm512_setzero_si512(); }
  // The lanes on m of the line at p (others 0; lanes off the mask read nothing), or'ed onto `to`.
  template <typename T>
  LC_AVX512 static Line or_line(Line to, LineMask<T> m, const T* p) {
    if constexpr (sizeof(T) == 4) {
      return _mm512_or_si512(to, _mm512_maskz_loadu_epi32(m, p));
    } else {
      return _mm512_or_si512(to, _mm512_maskz_loadu_epi16(m, p));
    }
  }
  template <typename T>
  LC_AVX512 static void store_line(T* p, Line v) {
    _mm512_storeu_si512(p, v);
  }
  template <typename T>
  LC_AVX512 static void store_line(LineMask<T> m, T* p, Line v) {
    if constexpr (sizeof(T) == 4) {
      _mm512_mask_storeu_epi32(p, m, v);
    } else {
      _mm512_mask_storeu_epi16(p, m, v);
    }
  }

  // The first Lanes lanes (16, 8 or 4) of floats as a vector that wide (the masks' other lanes
  // off): loaded under a mask, added, and a sum added onto memory by one masked load, add and
  // store that wide (add_onto: on Zen 4 a 512-bit masked store takes 2.3 times as long as a
  // 256-bit one, which takes 1.4 times a 128-bit one); to[t] += from[t] (add_part).
  // scatter_add_rows' rows and scatter_add_run's runs of patch rows take the narrowest that spans
  // them (a run wider than a vector: two whole ones).
  template <int Lanes>
  using Part =
      std::conditional_t<Lanes == 16, __m512, std::conditional_t<Lanes == 8, __m256, __m128>>;
  template <int Lanes>
  LC_AVX512 static Part<Lanes> load_part(Mask m, const float* p) {
    static_assert(Lanes == 16 || Lanes == 8 || Lanes == 4);
    if constexpr (Lanes == 16) {
      return _mm512_maskz_loadu_ps(m, p);
    } else if constexpr (Lanes == 8) {
      return _mm256_maskz_loadu_ps(__mmask8(m), p);
    } else {
      return _mm_maskz_loadu_ps(__mmask8(m), p);
    }
  }
  LC_AVX512 static __m256 add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
  LC_AVX512 static __m128 add(__m128 a, __m128 b) { return _mm_add_ps(a, b); }
  template <int Lanes>
  LC_AVX512 static void add_onto(Mask m, float* to, Part<Lanes> sum) {
    const Part<Lanes> sums = add(load_part<Lanes>(m, to), sum);
    if constexpr (Lanes == 16) {
      _mm512_mask_storeu_ps(to, m, sums);
    } else if constexpr (Lanes == 8) {
      _mm256_mask_storeu_ps(to, __mmask8(m), sums);
    } else {
      _mm_mask_storeu_ps(to, __mmask8(m), sums);
    }
  }
  template <int Lanes>
  LC_AVX512 static void add_part(Mask m, const float* from, float* to) {
    add_onto<Lanes>(m, to, load_part<Lanes>(m, from));
  }

  // Transposes 16 vectors in place: lane j of rows[i] goes to lane i of rows[j]. Pairs of lanes,
  // then of pairs, then 128-bit quarters twice: 64 shuffles for 256 elements.
  LC_AVX512 static void transpose(Vec (&rows)[kLanes]) {
    Vec a[16], b[16];
    for (int i = 0; i < 8; ++i) {
      a[2 * i] = _mm512_unpacklo_ps(rows[2 * i], rows[2 * i + 1]);
      a[2 * i + 1] = _mm512_unpackhi_ps(rows[2 * i], rows[2 * i + 1]);
    }
    // b[4i + m], quarter q: column 4q + m of rows 4i .. 4i + 3.
    for (int i = 0; i < 4; ++i) {
      const __m512d even = _mm512_castps_pd(a[4 * i]), odd = _mm512_castps_pd(a[4 * i + 1]);
      const __m512d even2 = _mm512_castps_pd(a[4 * i + 2]);
      const __m512d odd2 = _mm512_castps_pd(a[4 * i + 3]);
      b[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(even, even2));
      b[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(even, even2));
      b[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(odd, odd2));
      b[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(odd, odd2));
    }
    // a[8h + m] (m < 4): columns m, 8 + m of rows 8h .. 8h + 7, by quarters; a[8h + 4 + m]:
    // columns 4 + m, 12 + m.
    for (int h = 0; h < 2; ++h)
      for (int m = 0; m < 4; ++m) {
        a[8 * h + m] = _mm512_shuffle_f32x4(b[8 * h + m], b[8 * h + 4 + m], 0x88);
        a[8 * h + 4 + m] = _mm512_shuffle_f32x4(b[8 * h + m], b[8 * h + 4 + m], 0xdd);
      }
    for (int m = 0; m < 4; ++m) {
      rows[m] = _mm512_shuffle_f32x4(a[m], a[8 + m], 0x88);
      rows[8 + m] = _mm512_shuffle_f32x4(a[m], a[8 + m], 0xdd);
      rows[4 + m] = _mm512_shuffle_f32x4(a[4 + m], a[12 + m], 0x88);
      rows[12 + m] = _mm512_shuffle_f32x4(a[4 + m], a[12 + m], 0xdd);
    }
  }

  // The sums of the 16 lanes of each of a, b, c and d, in that order: 13 instructions for the
  // four (a lane reduction each would take about 8), which matters where K is short.
  LC_AVX512 static __m128 reduce4(Vec a, Vec b, Vec c, Vec d) {
    // Within each 128-bit lane: x = (a0+a2, b0+b2, a1+a3, b1+b3), y the same for c and d.
    const __m512 x = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const __m512 y = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    // Within each 128-bit lane: (sum of a's four, b's, c's, d's).
    const __m512 z = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x), _mm512_castps_pd(y))),
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x), _mm512_castps_pd(y))));
    // Add the four 128-bit lanes.
    const __m256 halves =
        _mm256_add_ps(_mm512_castps512_ps256(z),
                      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(halves), _mm256_extractf128_ps(halves, 1));
  }
  LC_AVX512 static float reduce(Vec v) { return _mm512_reduce_add_ps(v); }

 private:
  // 16-bit floats to float: bfloat16 is a float's upper half.
  template <typename T>
  LC_AVX512 static Vec widen(__m256i h) {
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
      static_assert(std::is_same_v<T, c10::Half>);
      return _mm512_cvtph_ps(h);
    }
  }
  // float to 16-bit floats, rounded to nearest even (NaN stays NaN: a quiet bfloat16 NaN, as
  // c10::BFloat16 rounds it).
  template <typename T>
  LC_AVX512 static __m256i narrow(Vec v) {
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      const __m512i bits = _mm512_castps_si512(v);
      const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
      __m512i rounded = _mm512_srli_epi32(
          _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
      rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                                      _mm512_set1_epi32(0x7FC0));
      return _mm512_cvtepi32_epi16(rounded);
    } else {
      static_assert(std::is_same_v<T, c10::Half>);
      return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
  }
};

}  // namespace cpu
}  // namespace lc_cuda
