// AVX2 + FMA as the vector kernels see it (vector_kernels_impl.h): 8 float lanes under lane
// masks (a lane all ones or all zeros), loads that widen bfloat16 and float16 to float, stores
// that round back, lane sums. A partial vector is stored without a masked store: AVX2's
// (vmaskmovps) took 4.4 ns against 1.0 ns for a plain store or three scalar ones on this
// project's Zen 4 (benchmarks/NOTES.md), so its lanes go by 128-, 64- and 32-bit stores where
// they are the first ones, element by element otherwise; AVX2 has no masked load or store of
// 16-bit elements at all. Every function is compiled for AVX2 by attribute (LC_AVX2), not by a
// global flag, so that the library still loads on any x86-64 CPU; callers check the CPU first
// (product_isa.h).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#define LC_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace lc_cuda {
namespace cpu {

struct Avx2 {
  static constexpr int kLanes = 8;
  // Block sizes, for 16 vector registers: the forward's filters x samples of dot products
  // (3 x 4 accumulators, 3 filter vectors, a patch vector: 7 loads per 12 FMAs, where 4 x 2
  // took 6 per 8); the gradients' rows (samples or filters) x vectors of K (3 x 4
  // accumulators, the broadcasts or one operand vector at a time); the row tiles' filters, as
  // on AVX-512 (4 filters x 3 samples: 12 accumulators, 3 input vectors, a filter vector; see
  // row_tile_samples).
  static constexpr int kForwardFilters = 3, kForwardSamples = 4;
  static constexpr int kMaxBlock = 3, kChunkVectors = 4;
  static constexpr int kRowTileFilters = 4;
  // grad_input_chunk_by_sources' patch columns per block: with its kSourceSamples (4) samples, 12
  // accumulators; the 4 grad_output vectors may be read from memory by the FMAs (cunn232_c1's
  // forward+grad_input 0.98x against 2 columns' 1.03x, both against grad_input_rows_block).
  static constexpr int kSourceColumns = 3;
  using Vec = __m256;
  using Mask = __m256i;

  // Lanes [0, count), all 8 for count >= 8; count >= 0.
  LC_AVX2 static Mask tail(int64_t count) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count < kLanes ? int(count) : kLanes), iota());
  }
  // The lanes of columns [first, last) of the 8 columns starting at `start`.
  LC_AVX2 static Mask columns(int64_t start, int64_t first, int64_t last) {
    const auto clamp = [](int64_t x) { return int(x < -1 ? -1 : x > kLanes ? kLanes : x); };
    const __m256i lane = iota();
    return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(clamp(first - start)), lane),
                               _mm256_cmpgt_epi32(_mm256_set1_epi32(clamp(last - start)), lane));
  }
  LC_AVX2 static Mask both(Mask a, Mask b) { return _mm256_and_si256(a, b); }
  LC_AVX2 static bool all(Mask m) { return _mm256_movemask_ps(_mm256_castsi256_ps(m)) == 0xFF; }

  LC_AVX2 static Vec zero() { return _mm256_setzero_ps(); }
  LC_AVX2 static Vec set1(float x) { return _mm256_set1_ps(x); }
  LC_AVX2 static Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  LC_AVX2 static Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }

  // 8 elements of T from p as floats; masked: lanes off the mask read nothing and are 0.
  template <typename T>
  LC_AVX2 static Vec load(const T* p) {
    if constexpr (std::is_same_v<T, float>) {
      return _mm256_loadu_ps(p);
    } else {
      return widen<T>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
  }
  template <typename T>
  LC_AVX2 static Vec load(Mask m, const T* p) {
    if constexpr (std::is_same_v<T, float>) {
      return _mm256_maskload_ps(p, m);
    } else {
      return widen<T>(load_halves(m, p));
    }
  }
  // Stores the lanes on the mask as T, rounded to nearest even.
  template <typename T>
  LC_AVX2 static void store(Mask m, T* p, Vec v) {
    if constexpr (std::is_same_v<T, float>) {
      const int on = _mm256_movemask_ps(_mm256_castsi256_ps(m));
      if (on == 0xFF) return _mm256_storeu_ps(p, v);
      if (on == 0) return;
      if ((on & (on + 1)) == 0) return store_first(__builtin_popcount(on), p, v);
      alignas(32) float lanes[kLanes];
      _mm256_store_ps(lanes, v);
      store_lanes(m, lanes, p);
    } else {
      store_halves(m, p, narrow<T>(v));
    }
  }
  template <typename T>
  LC_AVX2 static void store(T* p, Vec v) {
    if constexpr (std::is_same_v<T, float>) {
      _mm256_storeu_ps(p, v);
    } else {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow<T>(v));
    }
  }
  // The 64-byte line at `from` copied to `to` past the caches: both on a line.
  LC_AVX2 static void stream_line(void* to, const void* from) {
    const __m256i* source = static_cast<const __m256i*>(from);
    __m256i* target = static_cast<__m256i*>(to);
    _mm256_stream_si256(target, _mm256_load_si256(source));
    _mm256_stream_si256(target + 1, _mm256_load_si256(source + 1));
  }

  // Packing a vector of floats at a time, as Avx512's lines (pack_lines; 16-bit elements, which
  // these masks load and store one at a time, go a row at a time by copy), at most 2 locations
  // at once: their 8 vectors for 4 samples, the mask and a loaded vector within 16 registers.
  template <typename T>
  static constexpr bool kPacksByLines = std::is_same_v<T, float>;
  static constexpr int kLineLocations = 2;
  using Line = __m256;
  template <typename T>
  static constexpr int kLineLanes = kLanes;
  template <typename T>
  using LineMask = Mask;
  template <typename T>
  LC_AVX2 static Mask line_columns(int64_t start, int64_t first, int64_t last) {
    return columns(start, first, last);
  }
  LC_AVX2 static Line zero_line() { return _mm256_setzero_ps(); }
  LC_AVX2 static Line or_line(Line to, Mask m, const float* p) {
    return _mm256_or_ps(to, _mm256_maskload_ps(p, m));
  }
  LC_AVX2 static void store_line(float* p, Line v) { _mm256_storeu_ps(p, v); }
  LC_AVX2 static void store_line(Mask m, float* p, Line v) { store(m, p, v); }

  // Moves 8 elements of T unchanged (pack_rows, 16-bit elements): lanes off `read` read nothing
  // and store 0, lanes off `write` are not stored.
  template <typename T>
  LC_AVX2 static void copy(Mask read, Mask write, const T* from, T* to) {
    static_assert(sizeof(T) == 2);
    store_halves(write, to, load_halves(read, from));
  }

  // Avx512's narrower accesses (load_part, add_onto, add_part) take whole vectors here.
  template <int Lanes>
  LC_AVX2 static Vec load_part(Mask m, const float* p) {
    return load(m, p);
  }
  template <int Lanes>
  LC_AVX2 static void add_onto(Mask m, float* to, Vec sum) {
    store(m, to, add(load(m, to), sum));
  }
  template <int Lanes>
  LC_AVX2 static void add_part(Mask m, const float* from, float* to) {
    add_onto<Lanes>(m, to, load(m, from));
  }

  // Transposes 8 vectors in place: lane j of rows[i] goes to lane i of rows[j]. Pairs of lanes,
  // then of pairs, then the 128-bit halves: 24 shuffles for 64 elements.
  LC_AVX2 static void transpose(Vec (&rows)[kLanes]) {
    Vec a[8], b[8];
    for (int i = 0; i < 4; ++i) {
      a[2 * i] = _mm256_unpacklo_ps(rows[2 * i], rows[2 * i + 1]);
      a[2 * i + 1] = _mm256_unpackhi_ps(rows[2 * i], rows[2 * i + 1]);
    }
    // b[4h + m], half q: column 4q + m of rows 4h .. 4h + 3.
    for (int h = 0; h < 2; ++h) {
      b[4 * h] = _mm256_shuffle_ps(a[4 * h], a[4 * h + 2], 0x44);
      b[4 * h + 1] = _mm256_shuffle_ps(a[4 * h], a[4 * h + 2], 0xee);
      b[4 * h + 2] = _mm256_shuffle_ps(a[4 * h + 1], a[4 * h + 3], 0x44);
      b[4 * h + 3] = _mm256_shuffle_ps(a[4 * h + 1], a[4 * h + 3], 0xee);
    }
    for (int m = 0; m < 4; ++m) {
      rows[m] = _mm256_permute2f128_ps(b[m], b[4 + m], 0x20);
      rows[4 + m] = _mm256_permute2f128_ps(b[m], b[4 + m], 0x31);
    }
  }

  // The sums of the 8 lanes of each of a, b, c and d, in that order.
  LC_AVX2 static __m128 reduce4(Vec a, Vec b, Vec c, Vec d) {
    // Within each 128-bit lane: (a0+a1, a2+a3, b0+b1, b2+b3), the same for c and d.
    const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    // Within each 128-bit lane: (a's four, b's, c's, d's); then the two lanes added.
    const __m256 sums = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(sums), _mm256_extractf128_ps(sums, 1));
  }

 private:
  LC_AVX2 static __m256i iota() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }

  // 8 16-bit elements, those off the mask 0 and not read. Each lane on the mask is inserted
  // into the vector: gathered on the stack element by element and loaded as one vector, they
  // had waited for the stores to reach the cache (a store-forwarding stall: 38% of DeepFace L4's
  // bfloat16 packing on a Zen 3; the forward 0.90x without it).
  template <typename T>
  LC_AVX2 static __m128i load_halves(Mask m, const T* p) {
    if (all(m)) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return insert_lanes(_mm256_movemask_ps(_mm256_castsi256_ps(m)),
                        reinterpret_cast<const uint16_t*>(p),
                        std::make_integer_sequence<int, kLanes>{});
  }
  // The elements e[L] of the lanes L on `on`, others 0 (the lanes as immediates).
  template <int... L>
  LC_AVX2 static __m128i insert_lanes(int on, const uint16_t* e,
                                      std::integer_sequence<int, L...>) {
    __m128i v = _mm_setzero_si128();
    ((v = on >> L & 1 ? _mm_insert_epi16(v, e[L], L) : v), ...);
    return v;
  }
  // Stores the 16-bit elements on the mask.
  template <typename T>
  LC_AVX2 static void store_halves(Mask m, T* p, __m128i h) {
    if (all(m)) return _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
    alignas(16) uint16_t lanes[kLanes];
    _mm_store_si128(reinterpret_cast<__m128i*>(lanes), h);
    store_lanes(m, lanes, reinterpret_cast<uint16_t*>(p));
  }
  // Stores the first `count` lanes, 0 < count < 8 (a row of K's last vector, a patch row of a
  // location clear of the padding): the halves, pairs and single lanes of 128-bit stores.
  LC_AVX2 static void store_first(int count, float* p, Vec v) {
    __m128 part = _mm256_castps256_ps128(v);
    if (count >= 4) {
      _mm_storeu_ps(p, part);
      if ((count -= 4) == 0) return;
      p += 4;
      part = _mm256_extractf128_ps(v, 1);
    }
    if (count >= 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(p), part);
      if ((count -= 2) == 0) return;
      p += 2;
      part = _mm_movehl_ps(part, part);
    }
    _mm_store_ss(p, part);
  }
  // to[t] = lanes[t] for the lanes t on the mask.
  template <typename E>
  LC_AVX2 static void store_lanes(Mask m, const E* lanes, E* to) {
    for (int on = _mm256_movemask_ps(_mm256_castsi256_ps(m)); on != 0; on &= on - 1)
      to[__builtin_ctz(on)] = lanes[__builtin_ctz(on)];
  }
  // 16-bit floats to float: bfloat16 is a float's upper half.
  template <typename T>
  LC_AVX2 static Vec widen(__m128i h) {
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    } else {
      static_assert(std::is_same_v<T, c10::Half>);
      return _mm256_cvtph_ps(h);
    }
  }
  // float to 16-bit floats, rounded to nearest even (NaN stays NaN: a quiet bfloat16 NaN, as
  // c10::BFloat16 rounds it).
  template <typename T>
  LC_AVX2 static __m128i narrow(Vec v) {
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      const __m256i bits = _mm256_castps_si256(v);
      const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
      __m256i rounded = _mm256_srli_epi32(
          _mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
      rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0),
                                   _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
      // Both 128-bit lanes' four values, as 8 16-bit values in order.
      return _mm_packus_epi32(_mm256_castsi256_si128(rounded),
                              _mm256_extracti128_si256(rounded, 1));
    } else {
      static_assert(std::is_same_v<T, c10::Half>);
      return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
  }
};

}  // namespace cpu
}  // namespace lc_cuda
