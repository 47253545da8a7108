// The hand-written kernels of one output location, one set per vector ISA (namespaces avx2 and
// avx512, the same kernels for 8 and 16 float lanes; avx512_bf16 holds the bfloat16 products
// that use vdpbf16ps): the three GEMMs of the CPU kernels without a BLAS call per location, the
// packing of patches and the scatter of their gradients, and the forward of short patches by row
// tiles. At the batches a locally-connected layer meets (a few to a few hundred samples per
// location, C_out of 16-256) the products are skinny, and their cost is reading the location's
// filters once; a BLAS call spends more on its own packing and dispatch than on that (measured in
// benchmarks/NOTES.md). Every product sums in an order fixed by its sizes alone, so the results do
// not depend on the thread count.
//
// Element types T: float, c10::BFloat16 and c10::Half. bfloat16 and float16 are widened to float
// as they are loaded and every sum is in float; the products write float (the callers round once),
// the row tiles round their outputs to T once.
//
// Layouts, for one location and one channel group (C_out and C_in below are the group's):
// filters (C_out x K, row o at o*K), patches (samples x K, row n at n*K), grad_output and the
// output staged as (samples x C_out, row n at n*C_out), K = C_in*KD*KH*KW. The caller checks
// that the CPU runs the ISA (product_isa.h).
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>

#include "fetch_ahead.h"
#include "patches.h"

namespace lc_cuda {
namespace cpu {

// For the loop helpers here, which take the kernels' lambdas: compiled without the kernels'
// target attribute, a helper is inlined into its caller only after GCC has declined to inline the
// lambda into the helper (a callee compiled for more of the ISA than its caller), which leaves the
// lambda out of line, its accumulators in memory: cunn232_c1's float32 forward by row tiles ran
// 2x slower (a9a2681 against 7bf9e69, one thread). Inlined first, the lambda is inlined too.
#define LC_ALWAYS_INLINE inline __attribute__((always_inline))

// The largest patch (K) the forward computes by row tiles (forward_row_run) instead of per
// location: below it a location's dot products are too short to pay for their lane reductions
// (cunn232_c1: K = 9).
constexpr int64_t kRowTilePatchLimit = 64;

// The locations of one row tile: neighbouring output columns of one output row.
constexpr int64_t kRowTileLocations = 16;

// The most neighbouring locations of an output row whose patch gradients scatter_add_run adds
// at once.
constexpr int64_t kScatterRun = 4;

// The locations scatter_add_run takes at once on an ISA of `lanes` float lanes: the largest power
// of two, at most kScatterRun, that keeps the span of their patch rows, (run - 1) * stride_w +
// kernel_w input columns, within a vector, or where no two locations fit one, within two side
// by side (AVX2's 8 lanes: DeepFace L4's rows of 9, L5's 7 at stride 2); 1 (per location) where
// kernel columns are dilated or no two locations fit two vectors. A power of two divides kMaxTile,
// so runs cut from a tile's start start at multiples of it in the output row, whatever the tile.
inline int64_t scatter_run_locations(const Geometry& g, int64_t lanes) {
  if (g.dilation_w != 1) return 1;
  const auto fit = [&](int64_t window) {
    return g.kernel_w > window
               ? int64_t(1)
               : std::min<int64_t>(kScatterRun, (window - g.kernel_w) / g.stride_w + 1);
  };
  const int64_t in_one = fit(lanes), most = in_one > 1 ? in_one : fit(2 * lanes);
  int64_t run = 1;
  while (2 * run <= most) run *= 2;
  return run;
}

// How many tiles ahead along its row a row tile block prefetches each sample's input and output.
constexpr int64_t kRowTilePrefetchTiles = 4;

// A group's filters up to which the forward goes by row tiles whatever its patch: per location,
// packing the patch would cost more than its few dot products (fmri_decoder_3d: 1 filter,
// K = 432, 8 samples).
constexpr int64_t kRowTileFewFilters = 4;

// Whether forward_row_run applies: neighbouring output columns read neighbouring input elements
// (stride_w 1, input rows contiguous), and the patch is short or a group has few filters (with
// at most kRowTilePatchLimit kernel columns).
inline bool row_tiles_fit(const Geometry& g, const Strides5& s) {
  return g.stride_w == 1 && s.w == 1 && g.kernel_w <= kRowTilePatchLimit &&
         (g.patch_size() <= kRowTilePatchLimit || g.group_out_channels() <= kRowTileFewFilters);
}

// The floats of scratch one tile of forward_row_run takes: its filters (every group's),
// transposed, its bias as a vector over the tile per filter, and the input lanes each kernel
// column reads (a cache line per kernel column: room for any ISA's masks of the tile's vectors).
inline int64_t row_tile_scratch(const Geometry& g) {
  return kRowTileLocations * (g.out_channels * (g.patch_size() + 1) + g.kernel_w);
}

// The floats of scratch a forward row run of `tiles` tiles takes: its patch rows (64-bit starts,
// for_row_tile_patch_rows), rounded up to whole lines so that the tiles' masks stay aligned,
// then row_tile_scratch for each tile.
static_assert(kRowTileLocations * sizeof(float) == kLine, "a tile's row of floats is a line");
inline int64_t row_run_rows_floats(const Geometry& g) {
  return ceil_div(patch_row_count(g) * int64_t(sizeof(int64_t) / sizeof(float)),
                  kRowTileLocations) *
         kRowTileLocations;
}
inline int64_t row_run_scratch(const Geometry& g, int64_t tiles) {
  return row_run_rows_floats(g) + tiles * row_tile_scratch(g);
}

// Calls block(o0, o, count) for each block of up to `filter_block` filters of each channel group
// (the row tiles' filter blocks, which never straddle a group): o0 the group's first output
// channel, o the block's first, count its filters.
template <typename Block>
LC_ALWAYS_INLINE void for_filter_blocks(const Geometry& g, int64_t filter_block, Block&& block) {
  const int64_t group_size = g.group_out_channels();
  for (int64_t o0 = 0; o0 < g.out_channels; o0 += group_size)
    for (int64_t o = o0; o < o0 + group_size; o += filter_block)
      block(o0, o, std::min(filter_block, o0 + group_size - o));
}

// The squares of a rows x columns float matrix (row r at from + r * columns), V::kLanes rows x
// V::kLanes columns at a time, either count partial (the missing rows read as zeros), transposed
// in registers: store(c, r0, present, vector) takes column c's rows [r0, r0 + present) as the
// vector's first lanes. Always inline, as for_row_tile_patch_rows, so that `store` is inlined
// into the caller's ISA. Whole squares go by plain loads and a fixed count of stores: with the
// partial squares' masked loads and counted stores for all, the square had lived on the stack,
// about 200 instructions a square (callgrind, DeepFace L6's AVX2 forward, where the transposed
// filters took a fifth of the time).
template <typename V, typename Store>
LC_ALWAYS_INLINE void for_transposed_squares(const float* from, int64_t rows, int64_t columns,
                                             Store&& store) {
  for (int64_t r0 = 0; r0 < rows; r0 += V::kLanes) {
    const int64_t present = std::min<int64_t>(V::kLanes, rows - r0);
    int64_t c0 = 0;
    if (present == V::kLanes) {
      for (; c0 + V::kLanes <= columns; c0 += V::kLanes) {
        typename V::Vec square[V::kLanes];
#pragma GCC unroll 16
        for (int r = 0; r < V::kLanes; ++r) square[r] = V::load(from + (r0 + r) * columns + c0);
        V::transpose(square);
#pragma GCC unroll 16
        for (int c = 0; c < V::kLanes; ++c) store(c0 + c, r0, V::kLanes, square[c]);
      }
    }
    for (; c0 < columns; c0 += V::kLanes) {
      const auto read = V::tail(columns - c0);
      typename V::Vec square[V::kLanes];
      for (int64_t r = 0; r < V::kLanes; ++r)
        square[r] = r < present ? V::load(read, from + (r0 + r) * columns + c0) : V::zero();
      V::transpose(square);
      const int64_t count = std::min<int64_t>(V::kLanes, columns - c0);
      for (int64_t c = 0; c < count; ++c) store(c0 + c, r0, present, square[c]);
    }
  }
}

// The row_count patch rows of a row tile block of `sample` over S samples, samples step_n apart:
// `rows` the output row's, listed once per forward row run (for_each_patch_row's starts, -1 in
// the padding; worked out per block, three loops and a bounds test a row had taken a quarter of
// a block's instructions where the patch is short: callgrind, cunn232_c1's AVX2 forward, 9
// taps a block). Each row takes a step of `ahead`; a row in the padding calls skipped(), any
// other row(pointer to its input row of sample 0) after fetching the part of each sample's row
// that a tile kRowTilePrefetchTiles on reads (each sample's row is a stream of its own, a whole
// sample from the next, more streams than the hardware prefetchers follow: genomics_1d_50k,
// 32). `ahead` is stepped as a local copy: the fetcher's stores might alias what the loop reads
// as far as the compiler knows.
template <int S, typename T, typename Row, typename Skipped>
LC_ALWAYS_INLINE void for_row_tile_patch_rows(const int64_t* rows, int64_t row_count,
                                              int64_t step_n, int64_t j0, const T* sample,
                                              FetchAhead& ahead, Row&& row, Skipped&& skipped) {
  FetchAhead fetch = ahead;
  for (int64_t r = 0; r < row_count; ++r) {
    fetch.step();
    if (rows[r] < 0) {
      skipped();
      continue;
    }
    const T* from = sample + rows[r];
#pragma GCC unroll 16
    for (int n = 0; n < S; ++n)
      _mm_prefetch(reinterpret_cast<const char*>(
                       from + n * step_n + j0 + kRowTilePrefetchTiles * kRowTileLocations),
                   _MM_HINT_T0);
    row(from);
  }
  ahead = fetch;
}

// Samples a row tile block takes at once: with few filters, one chain of FMAs per accumulator
// would wait on each FMA's latency; more samples give independent chains, share each filter load
// and spread each call's loop overhead, as far as the registers allow: up to 8, as many as the
// registers (32 on AVX-512, 16 lanes; 16 on AVX2) hold beside their accumulators and input
// vectors and a filter vector. AVX-512, one filter: 8 samples (fmri_decoder_3d's forward 0.95x,
// genomics_1d_50k's 0.90x, depthwise_32x32_c32's 0.85x against 4); four filters: 6. AVX2: 7, 5,
// 3 and 3 for 1 to 4 filters, against blocks of up to 12 filters of one sample (4 samples of
// one filter) before: on a Zen 3, one process, the forward of cunn232_c1 (16 filters: 12 and 4
// of one sample, then four blocks of 4 x 3) 0.89-0.93x, genomics_1d_50k 0.77x,
// fmri_decoder_3d 0.93x, medvol_32cube_c2 0.93x, depthwise_32x32_c32 1.01x. bfloat16's blocks
// by pairs take the same counts.
constexpr int row_tile_samples(int lanes, int filters) {
  const int registers = 2 * lanes;
  return std::min(8, (registers - 1) / (filters + 1));
}

// bfloat16's forward row tiles by vdpbf16ps (avx512::forward_pair_row_run): up to 4 filters
// (as the widened tiles on AVX-512) x 8 samples a block, patches of up to kPairRowTilePatch
// (their staging transposes a location's words on the stack).
constexpr int kPairRowTileFilters = 4, kPairRowTileSamples = 8;
constexpr int64_t kPairRowTilePatch = kRowTilePatchLimit;

// Whether bfloat16's forward row tiles go by pairs of kernel columns on AVX512-BF16: as
// row_tiles_fit, with a patch of at most kPairRowTilePatch.
inline bool pair_row_tiles_fit(const Geometry& g, const Strides5& s) {
  return row_tiles_fit(g, s) && g.patch_size() <= kPairRowTilePatch;
}

// The pairs of kernel columns of a patch: ceil(kernel_w / 2) per patch row (an odd width's last
// column paired with zeros). Within row_tile_scratch's filters.
inline int64_t pair_row_tile_pairs(const Geometry& g) {
  return patch_row_count(g) * ceil_div(g.kernel_w, 2);
}

// The most bytes of a forward row run's staged filters that one block of filters reads, sample
// block after sample block: about an L1 (two of medvol_32cube_c2's 28 KB tiles to a run made its
// forward 1.08x slower).
constexpr int64_t kRowRunBlockBytes = 32 << 10;

// The most bytes of a forward row run's scratch: a share of an L2.
constexpr int64_t kRowRunBytes = 256 << 10;

// The tiles of one forward row run (forward_row_run): each block of samples goes along the whole
// run before the next block starts, so that each sample's input and output go by as runs of
// lines, not one line of each of 2 x samples streams per tile (at 32 samples, 64 streams: more
// than the hardware prefetchers follow, and a DRAM page per line). As many as kRowRunBlockBytes
// (a block of up to `filter_block` filters, the ISA's row_tile_filters) and kRowRunBytes allow,
// within the row, leaving each of `threads` threads about 8 runs.
inline int64_t forward_row_run_tiles(const Geometry& g, int64_t threads, int64_t filter_block) {
  constexpr int64_t float_bytes = sizeof(float);
  const int64_t row_tiles = ceil_div(g.out_w, kRowTileLocations);
  const int64_t block_bytes = std::min(g.group_out_channels(), filter_block) * g.patch_size() *
                              kRowTileLocations * float_bytes;
  const int64_t by_block = kRowRunBlockBytes / block_bytes;
  const int64_t by_bytes = kRowRunBytes / (row_tile_scratch(g) * float_bytes);
  const int64_t by_threads = g.out_d * g.out_h * row_tiles / (8 * threads);
  return std::max<int64_t>(1, std::min({row_tiles, by_block, by_bytes, by_threads}));
}

// Where the backward goes by output rows (grad_input_row) instead of per location: the forward
// row tiles' geometries, for which a location's scatter of its few patch gradients costs more than
// its products (fmri_decoder_3d: one masked load-add-store per sample, location and patch row).
// The staged grad_output may have any strides; the destination is a contiguous float block.
inline bool backward_rows_fit(const Geometry& g) {
  return g.stride_w == 1 && g.kernel_w <= kRowTilePatchLimit &&
         (g.patch_size() <= kRowTilePatchLimit || g.group_out_channels() <= kRowTileFewFilters);
}

// The input columns grad_input_row adds per chunk: whole tiles of kRowTileLocations (so whole
// vectors on every ISA), at most four, no more than the input row needs.
inline int64_t grad_input_row_columns(const Geometry& g) {
  return std::min<int64_t>(4, ceil_div(g.in_w, kRowTileLocations)) * kRowTileLocations;
}

// The output columns a chunk's destinations read: its columns and the kernel's span less one.
inline int64_t grad_input_row_span(const Geometry& g) {
  return grad_input_row_columns(g) + (g.kernel_w - 1) * g.dilation_w;
}

// The floats of grad_input_row's staged filters (one group's, over the chunk's span).
inline int64_t grad_input_row_filters(const Geometry& g) {
  return g.patch_size() * g.group_out_channels() * grad_input_row_span(g);
}

// `count` floats rounded up to whole cache lines, so that what follows them in a scratch starts
// on a line of its own.
inline int64_t whole_lines_of_floats(int64_t count) {
  constexpr int64_t kLineFloats = kLine / int64_t(sizeof(float));
  return ceil_div(count, kLineFloats) * kLineFloats;
}

// A group's filters from which a chunk's patch gradients are summed by sources
// (vector_kernels_impl.h: grad_input_chunk_by_sources), each source's sums over the filters
// first, rather than by destinations: with fewer, a source's sums are too short to pay for
// storing them and reading them back (medvol_32cube_c2's 8 filters, K = 54: its
// forward+backward 1.07x slower by sources, forward+grad_input 1.10x).
constexpr int64_t kSourceSumsFilters = 16;
// The samples grad_input_chunk_by_sources sums at once, on every ISA.
constexpr int64_t kSourceSamples = 4;

inline bool grad_input_by_sources(const Geometry& g) {
  return g.group_out_channels() >= kSourceSumsFilters && g.patch_size() <= kRowTilePatchLimit;
}

// The stride of grad_input_chunk_by_sources' sums of one sample and patch column: the chunk's
// span in whole cache lines of floats.
inline int64_t source_sums_stride(const Geometry& g) {
  return whole_lines_of_floats(grad_input_row_span(g));
}

// The floats of grad_input_chunk_by_sources' sums (kSourceSamples x K rows), where it applies.
inline int64_t grad_input_source_sums(const Geometry& g) {
  return grad_input_by_sources(g) ? kSourceSamples * g.patch_size() * source_sums_stride(g) : 0;
}

// The floats of grad_input_row's staged filters and grad_output for `samples` samples, in whole
// cache lines of floats (the source sums follow).
inline int64_t grad_input_row_staged(const Geometry& g, int64_t samples) {
  return whole_lines_of_floats(grad_input_row_filters(g) +
                               samples * g.group_out_channels() * grad_input_row_span(g));
}

// The floats of scratch grad_input_row takes for `samples` samples: the staged filters and
// grad_output, and the source sums.
inline int64_t grad_input_row_scratch(const Geometry& g, int64_t samples) {
  return grad_input_row_staged(g, samples) + grad_input_source_sums(g);
}

// grad_weight_row_tile's patch columns per product block on every ISA; its sums pad K to a
// multiple of it.
constexpr int64_t kGradWeightRowColumns = 16;

// K padded to whole blocks of kGradWeightRowColumns.
inline int64_t grad_weight_row_patch(const Geometry& g) {
  return ceil_div(g.patch_size(), kGradWeightRowColumns) * kGradWeightRowColumns;
}

// The floats of grad_weight_row_tile's sums: (C_out x padded K) vectors over the tile.
inline int64_t grad_weight_row_sums(const Geometry& g) {
  return g.out_channels * grad_weight_row_patch(g) * kRowTileLocations;
}

// The floats of scratch grad_weight_row_tile takes for `samples` samples: the staged
// grad_output, and where each patch column reads (two int64 per padded column).
inline int64_t grad_weight_row_scratch(const Geometry& g, int64_t samples) {
  return samples * g.out_channels * kRowTileLocations + 4 * grad_weight_row_patch(g);
}

// The samples backward_row stages at once, read by grad_input, grad_weight and the bias sums in
// turn: cunn232_c1's 16 x 16 filters x 66 columns, 66 KB a row, within the L2 (its backward in
// one process against 16: 8 samples 1.00-1.02, 32 1.00, 64 1.02; medvol_32cube_c2's 2 1.21).
// With two rows at once (backward_row_rows) their state is about 338 KB; 8 samples then took
// 1.05x as long.
constexpr int64_t kBackwardRowSamples = 16;

// Whether backward_row applies: the geometries of both grad_input_row and grad_weight_row_tile,
// with an input row that one grad_input_row chunk covers (whose staged grad_output then holds
// the whole output row), and a grad_output at least twice the input. There, reading grad_output
// once pays: forward+backward in one process, cunn232_c1 (16 times its input) 0.86-0.88x,
// medvol_32cube_c2 (4 times) 0.94x; where it does not, the pass loses its split of grad_input
// by samples and its even split of grad_weight by tiles: depthwise_32x32_c32 (grad_output the
// size of its input) 1.13x slower, fmri_decoder_3d (a sixteenth) 1.03x.
inline bool backward_row_fits(const Geometry& g, const Strides5& s) {
  return backward_rows_fit(g) && row_tiles_fit(g, s) && !g.shares_weights() &&
         g.in_w <= grad_input_row_columns(g) &&
         g.out_channels * g.locations() >= 2 * g.input_sample();
}

// The first output column a grad_input_row chunk of a whole input row reads (its first source).
inline int64_t backward_row_chunk_first(const Geometry& g) {
  return g.pad_w - (g.kernel_w - 1) * g.dilation_w;
}

// The output column backward_row's staged grad_output starts at: the chunk's first source, or
// column 0 where the padding is wider than the kernel's span (grad_weight and the bias read
// every column).
inline int64_t backward_row_start(const Geometry& g) {
  return std::min<int64_t>(0, backward_row_chunk_first(g));
}

// The output columns backward_row stages: the chunk's sources, and the whole row tiles that
// grad_weight reads (where padding makes the output row longer than the input row).
inline int64_t backward_row_span(const Geometry& g) {
  return std::max(backward_row_chunk_first(g) + grad_input_row_span(g),
                  ceil_div(g.out_w, kRowTileLocations) * kRowTileLocations) -
         backward_row_start(g);
}

// The floats of backward_row's staged filters (one group's) and grad_output, rounded up to whole
// cache lines (grad_weight's offsets, int64, follow them).
inline int64_t backward_row_staged(const Geometry& g) {
  return whole_lines_of_floats((g.patch_size() + kBackwardRowSamples) * g.group_out_channels() *
                               backward_row_span(g));
}

// The floats of scratch backward_row takes: the staged filters and grad_output, grad_weight's
// offsets (as grad_weight_row_scratch), and grad_input's source sums.
inline int64_t backward_row_scratch(const Geometry& g) {
  return backward_row_staged(g) + 4 * grad_weight_row_patch(g) + grad_input_source_sums(g);
}

// The most output rows backward_row takes at once (its callers' scratch holds that many rows').
constexpr int64_t kBackwardRowsAtOnce = 2;

// How many output rows from (z, i) backward_row takes at once, where `next_row_too`: the caller's
// next row is (z, i + 1). Both, where each sample's and filter's runs of grad_output in the two
// rows lie within a line of each other (rows `row_step` elements of `element_size` bytes apart,
// a run span elements; a grad_output permuted from another layout can hold whole planes between
// them), so that one fetch brings both; else one. (Where columns are not contiguous the runs are
// staged element by element without fetches, and pairing them changes only the order.)
inline int64_t backward_row_rows(const Geometry& g, int64_t row_step, int64_t element_size,
                                 bool next_row_too) {
  return next_row_too && (row_step - backward_row_span(g)) * element_size <= kLine
             ? kBackwardRowsAtOnce
             : 1;
}

// The floats of backward_row's grad_weight sums: grad_weight_row_sums per row tile.
inline int64_t backward_row_weight_sums(const Geometry& g) {
  return ceil_div(g.out_w, kRowTileLocations) * grad_weight_row_sums(g);
}

// Whether the per-location forward of float reads the input in place (forward_in_place) instead
// of packing patches, and grad_weight without sharing (grad_filters_in_place): a group's filters
// fill whole vectors of `lanes` (the ISA's floats); the batch is large against a patch row, where
// transposing a location's filters once per sample block costs less than packing each sample's
// rows; and the transposed filters take at most an eighth of the scratch budget (`budget`
// bytes), which then still bounds the call (each thread holds one location's). Per location,
// packing takes about 4 cycles a row and sample (DeepFace L6's rows of 5: 0.8x the products), a
// transposition about 6/16 of a cycle a weight: in place pays from about batch >= kernel_w x
// C_out / 10 (taken from / 8; the batch, not the block, so that the choice does not depend on
// the thread count). Measured per location, one thread: DeepFace L6 (batch 32, 5 x 16) 0.74x,
// L5-like (16, 7 x 16) 0.95x, convnet_local3 (128, 3 x 64) 0.75x; mid_32x32_c64 (8, 3 x 64)
// 1.4x and L4 (8, 9 x 16) 1.01x slower.
inline bool forward_in_place_fits(const Geometry& g, int64_t lanes, int64_t budget) {
  const int64_t group_size = g.group_out_channels();
  return group_size % lanes == 0 && 8 * g.batch >= g.kernel_w * group_size &&
         8 * g.patch_size() * group_size * int64_t(sizeof(float)) <= budget;
}

// The patch columns of a location that read the input (grad_weight in place): for each such
// column k, in order, columns[count] = k and sources[count] = its element's offset from a sample's
// start (`rows` as patch_rows leaves them, kernel columns `step` elements apart); padding(k) for
// each column in the padding. Returns count.
template <typename Padding>
int64_t input_columns(const PatchRow* rows, const Geometry& g, int64_t step, int64_t* columns,
                      int64_t* sources, Padding&& padding) {
  int64_t count = 0;
  for (int64_t r = 0; r < patch_row_count(g); ++r) {
    const PatchRow& row = rows[r];
    for (int64_t q = 0; q < g.kernel_w; ++q) {
      const int64_t k = r * g.kernel_w + q;
      if (q >= row.first && q < row.last) {
        columns[count] = k;
        sources[count++] = row.source + (q - row.first) * step;
      } else {
        padding(k);
      }
    }
  }
  return count;
}

// The words of pair_samples' paired input: a word per element of a sample, per pair of samples
// (the last pair of an odd batch with a zero partner).
inline int64_t paired_input_words(const Geometry& g) {
  return ceil_div(g.batch, 2) * g.input_sample();
}

// Whether bfloat16's grad_weight by vdpbf16ps reads the input in place by pairs of samples
// (avx512_bf16::grad_filters_in_place): without sharing, as forward_in_place_fits for 16 lanes,
// where each sample's elements fill [0, s.n) (`dense`: a dense input whose samples lie s.n =
// input_sample() apart, so that the paired input keeps the input's offsets), and the paired
// input (pair_samples: a word per element and pair of samples) takes at most a quarter of the
// budget; not where grad_weight may go by row tiles (`row_tiles`), which would not use the copy.
inline bool grad_weight_pairs_in_place_fits(const Geometry& g, const Strides5& s, bool dense,
                                            bool row_tiles, int64_t budget) {
  return !g.shares_weights() && !row_tiles && dense && s.n == g.input_sample() &&
         forward_in_place_fits(g, 16, budget) &&
         4 * paired_input_words(g) * int64_t(sizeof(uint32_t)) <= budget;
}

// The 32-bit words of avx512_bf16::forward_in_place's transposed filters of one channel group: a
// pair of kernel columns per word, ceil(kernel_w / 2) pairs a patch row.
inline int64_t in_place_pair_words(const Geometry& g) {
  return patch_row_count(g) * ceil_div(g.kernel_w, 2) * g.group_out_channels();
}

// The 32-bit words of scratch avx512_bf16::forward_in_place takes: the pairs, then 16 output
// channels' filters transposed as words (ceil(K / 2) x 16) that it builds them from.
inline int64_t in_place_pairs_scratch(const Geometry& g) {
  return in_place_pair_words(g) + 16 * ceil_div(g.patch_size(), 2);
}

// Whether the per-location forward of bfloat16 by vdpbf16ps reads the input in place
// (avx512_bf16::forward_in_place): as forward_in_place_fits for 16 lanes, where a patch row's
// kernel columns are neighbouring input elements (column_step 1), so that a pair of them is one
// 32-bit broadcast. Its scratch (in_place_pairs_scratch) is at most 1.5x the float filters_t
// (kernel_w 1 and 16 filters: K pairs of one column each, and 8 K words), which the pass's
// scratch counts.
inline bool forward_pairs_in_place_fits(const Geometry& g, const Strides5& s, int64_t budget) {
  return column_step(g, s) == 1 && forward_in_place_fits(g, 16, budget);
}

// Each ISA's namespace declares the same kernels:
//
// forward:       out[n*C_out + o] = sum_k patches[n*K + k] * filters[o*K + k]
// grad_patches:  grad_patches[n*K + k] = sum_o grad_output[n*C_out + o] * filters[o*K + k];
//                the first two chunks of each row of `next` (the filters of the product after
//                this one, or null), which the rows' own fetches do not cover, fetched into the
//                L2 meanwhile, a share per chunk of K
// grad_filters:  grad_filters[o*K + k] = (accumulate ? grad_filters[o*K + k] : 0)
//                                        + sum_n grad_output[n*C_out + o] * patches[n*K + k];
//                where `rounded` is not null, the sums go to rounded[o*K + k] instead, rounded
//                to T (grad_filters is then only read, and only where accumulate). Where
//                `stream` (final sums, not read again soon), whole vectors of grad_filters are
//                streamed past the caches: grad_weight's banks, written once, are not read
//                first (the caller orders the streamed stores with _mm_sfence).
// pack_patches:  pack_patches (patches.h) where neighbouring kernel columns read neighbouring
//                input elements (column_step == 1), for `locations` locations at once: 64 bytes
//                of a sample's patch at a time on AVX-512 (8 floats on AVX2), each patch row's
//                part one masked load, the whole stored by one plain store; AVX2's 16-bit
//                elements a row at a time, one masked load and store per vector of columns.
// scatter_add_patches: scatter_add_patches (patches.h) where dilation_w == 1.
// scatter_add_run: the same for `run` neighbouring locations of output row (z, i) from column j
//                on (run at most scatter_run_locations), location u's patch gradients at
//                grad_patches + u * samples * K, one channel group's (`dest`:
//                grad_input_row_destinations): per sample and patch row, the run's rows summed
//                in registers (one vector, or two where the span is wider), each u * stride_w
//                lanes on, then one load-add-store of the input columns they span per vector, not
//                one per location.
// scatter_run_length: scatter_run_locations for the ISA's vectors of floats.
// forward_in_place: forward's out (n < samples) for float without packing: `filters` (C_out x K)
//                transposed into filters_t (K x C_out floats of scratch), each patch element
//                read from `input` (sample n at input + n*sample_stride; `rows` as patch_rows
//                leaves them, kernel columns `step` elements apart) and broadcast onto the
//                vectors of C_out; the filters of the same size at `next` (the next location's;
//                none where null) fetched into the L2 meanwhile. Only where
//                forward_in_place_fits.
// grad_filters_in_place: grad_filters for float without packing (accumulate and stream as
//                there; for finite values the same results to the bit, the columns in the
//                padding zero): the input read as forward_in_place reads it, the sums kept
//                transposed in sums_t (K x C_out floats of scratch; 2 K int64 at `columns`).
//                Only where forward_in_place_fits.
// write_tile:    a per-location tile's staged results (location t's samples x C_out matrix at
//                staged + t * staged_stride, staged_offset's layout) into the output (`out` at
//                the tile's first location of sample 0, a (N, C_out, locations) tensor), rounded
//                to T, plus bias_rows[o * bias_stride + t] where bias_rows is given.
// row_tile_filters: the most filters forward_row_run takes at once (a block of them goes along
//                the whole run, block after block).
// forward_row_run: the forward of `width` neighbouring locations (z, i, j0 + t), t < width, of
//                one output row, for `samples` samples, vectorised over the locations:
//                out[n, o, z, i, j0 + t] = sum_k filters(t)[o][k] *
//                patch(n, o's group, z, i, j0 + t)[k] + bias. A run of row tiles of
//                kRowTileLocations: each tile's filters are staged once, then each block of
//                samples goes along the whole run. `weight` is the whole weight (filters(t): its
//                location's region's bank), `input` and `out` start at the run's first sample,
//                `out` is contiguous (N, C_out, D, H, W); bias as the op takes it (null,
//                (C_out,) when shared_bias, else (C_out, *regions)). `scratch` holds
//                row_run_scratch(g, tiles) floats for the run's tiles. Only where
//                row_tiles_fit.
// grad_input_row: the patch gradients of output row (z, i) and channel group `group`, every
//                location, for `samples` samples, added onto grad_input (a contiguous float
//                block (samples, C_in, D, H, W)). Vectorised over input columns: chunks of
//                grad_input_row_columns destinations, each summing its sources' (kernel
//                column, filter) terms in registers, then one load-add-store (or where
//                grad_input_by_sources, each source's sums over the filters first); `grad_output`
//                (any strides) starts at the first sample. `scratch` holds
//                grad_input_row_scratch(g, samples) floats, `dest` patch_row_count(g) elements.
//                Only where backward_rows_fit.
// grad_weight_row_tile: the filter gradients of the row tile (z, i, j0 + t), t < width, of an
//                unshared weight, summed over `samples` samples (input and grad_output start
//                at the first; any strides of grad_output, input rows contiguous), vectorised
//                over the tile: sums[(o * grad_weight_row_patch(g) + k) * kRowTileLocations +
//                t] (every group's o), added onto what they hold where accumulate. `scratch`
//                holds grad_weight_row_scratch(g, samples) floats. Only where
//                backward_rows_fit and row_tiles_fit.
// grad_weight_row_banks: grad_weight_row_tile's sums of a tile of `width` locations into their
//                banks (location t's at banks + t * C_out * K), rounded to T.
// backward_row:  the three gradients of output rows (z, i) to (z, i + rows - 1) (`rows` as
//                backward_row_rows gives), every group and sample, from one staging of their
//                grad_output (kBackwardRowSamples samples at a time): their patch gradients
//                added onto grad_input (a contiguous float block of the batch), as
//                grad_input_row adds them; each row's grad_weight sums, tile after tile of
//                grad_weight_row_sums(g) floats from weight_sums + r *
//                backward_row_weight_sums(g), as grad_weight_row_tile sums them (not
//                accumulated); and where bias_sums is not null, each location's sum of
//                grad_output over the batch at bias_sums[o * locations + location], in sample
//                order. `scratch` holds rows x backward_row_scratch(g) floats, `dest` rows x
//                patch_row_count(g) elements. Only where backward_row_fits.
#define LC_CUDA_DECLARE_VECTOR_KERNELS                                                           \
  template <typename T>                                                                          \
  void forward(int64_t out_channels, int64_t samples, int64_t patch_size, const T* filters,      \
               const T* patches, float* out);                                                    \
  template <typename T>                                                                          \
  void grad_patches(int64_t out_channels, int64_t samples, int64_t patch_size, const T* filters, \
                    const T* grad_output, const T* next, float* grad_patches);                   \
  template <typename T>                                                                          \
  void grad_filters(int64_t out_channels, int64_t samples, int64_t patch_size, const T* patches, \
                    const T* grad_output, bool accumulate, float* grad_filters, T* rounded,      \
                    bool stream);                                                                \
  template <typename T>                                                                          \
  void pack_patches(const T* input, int64_t sample_stride, const PatchRow* rows,                 \
                    int64_t locations, const Geometry& g, int64_t samples, T* patches);          \
  void scatter_add_patches(const float* grad_patches, const PatchRow* rows, const Geometry& g,    \
                           int64_t samples, float* grad_input);                                  \
  void scatter_add_run(const float* grad_patches, const int64_t* dest, const Geometry& g,        \
                       int64_t j, int64_t run, int64_t samples, float* grad_input);              \
  int64_t scatter_run_length(const Geometry& g);                                                 \
  void forward_in_place(int64_t out_channels, int64_t samples, const float* input,              \
                        int64_t sample_stride, int64_t step, const PatchRow* rows,                \
                        const Geometry& g, const float* filters, float* filters_t,               \
                        const float* next, float* out);                                          \
  void grad_filters_in_place(int64_t out_channels, int64_t samples, const float* input,         \
                             int64_t sample_stride, int64_t step, const PatchRow* rows,           \
                             const Geometry& g, const float* grad_output, bool accumulate,        \
                             float* sums_t, int64_t* columns, float* grad_filters, bool stream);  \
  template <typename T>                                                                          \
  void write_tile(const float* staged, int64_t staged_stride, int64_t width, const Geometry& g,  \
                  int64_t samples, const float* bias_rows, int64_t bias_stride, T* out,          \
                  int64_t locations);                                                            \
  int64_t row_tile_filters();                                                                    \
  template <typename T>                                                                          \
  void forward_row_run(const T* input, const Strides5& s, const Geometry& g, int64_t z,          \
                       int64_t i, int64_t j0, int64_t width, int64_t samples, const T* weight,   \
                       const T* bias, bool shared_bias, T* out, float* scratch);                 \
  template <typename T>                                                                          \
  void grad_input_row(const T* grad_output, const Strides5& go_s, const Geometry& g, int64_t z,  \
                      int64_t i, int64_t group, int64_t samples, const T* weight,                \
                      float* grad_input, float* scratch, int64_t* dest);                 \
  template <typename T>                                                                          \
  void grad_weight_row_tile(const T* input, const Strides5& s, const T* grad_output,             \
                            const Strides5& go_s, const Geometry& g, int64_t z, int64_t i,       \
                            int64_t j0, int64_t width, int64_t samples, bool accumulate,         \
                            float* sums, float* scratch);                                \
  template <typename T>                                                                          \
  void grad_weight_row_banks(const float* sums, const Geometry& g, int64_t width, T* banks);    \
  template <typename T>                                                                          \
  void backward_row(const T* grad_output, const Strides5& go_s, const T* input,                 \
                    const Strides5& s, const Geometry& g, int64_t z, int64_t i,                  \
                    int64_t rows, const T* weight, float* grad_input, float* weight_sums,        \
                    float* bias_sums, float* scratch, int64_t* dest);

namespace avx2 {
LC_CUDA_DECLARE_VECTOR_KERNELS
}  // namespace avx2

namespace avx512 {
LC_CUDA_DECLARE_VECTOR_KERNELS
}  // namespace avx512

#undef LC_CUDA_DECLARE_VECTOR_KERNELS

// forward_pair_row_run: forward_row_run for bfloat16 on AVX512-BF16, by pairs of kernel columns
//                (avx512_bf16's pair_row_tile_block and stage_pair_filters; where
//                pair_row_tiles_fit): the same driver, staging and scratch.
namespace avx512 {
void forward_pair_row_run(const c10::BFloat16* input, const Strides5& s, const Geometry& g,
                          int64_t z, int64_t i, int64_t j0, int64_t width, int64_t samples,
                          const c10::BFloat16* weight, const c10::BFloat16* bias,
                          bool shared_bias, c10::BFloat16* out, float* scratch);
}  // namespace avx512

// The bfloat16 products by vdpbf16ps (AVX512-BF16): pairs of bfloat16 multiplied and summed into
// float lanes, twice the products of a float FMA per instruction. As the products above.
namespace avx512_bf16 {
// A row tile block of forward_pair_row_run (the widened row_tile_block's arguments, its masks
// as 16-bit integers; the filters as stage_pair_filters lays them out).
using PairRowTileBlock = void (*)(const c10::BFloat16*, const Strides5&, const Geometry&,
                                  const int64_t*, int64_t, uint16_t, const uint16_t*,
                                  const float*, const float*, c10::BFloat16*, int64_t, int64_t,
                                  bool, FetchAhead&);
// The block of `filters` (<= kPairRowTileFilters) x `samples` (<= kPairRowTileSamples).
PairRowTileBlock pair_row_tile_block(int filters, int samples);
// stage_pair_filters: a row tile's filters as pairs, for each block of filter_block filters of
//                each group (o its first): location t's pair kp = r * ceil(kernel_w / 2) + p
//                of filter o + f at pairs[o * pair_row_tile_pairs(g) * 16 + (kp * block + f) *
//                16 + t], from location t's filter bank at banks[t] (t < width; 0 past it).
//                Fetches ahead a step per 16 columns of K per filter.
void stage_pair_filters(const Geometry& g, const c10::BFloat16* const* banks, int64_t width,
                        int64_t filter_block, FetchAhead& ahead, uint32_t* pairs);
void forward(int64_t out_channels, int64_t samples, int64_t patch_size,
             const c10::BFloat16* filters, const c10::BFloat16* patches, float* out);
void grad_patches(int64_t out_channels, int64_t samples, int64_t patch_size,
                  const c10::BFloat16* filters, const c10::BFloat16* grad_output,
                  const c10::BFloat16* next, float* grad_patches);
// grad_filters: as the vector kernels' (stream: where `rounded`, the rounded sums of whole
//                cache lines are streamed past the caches, two vectors to a line).
void grad_filters(int64_t out_channels, int64_t samples, int64_t patch_size,
                  const c10::BFloat16* patches, const c10::BFloat16* grad_output, bool accumulate,
                  float* grad_filters, c10::BFloat16* rounded, bool stream);
// forward_in_place: forward's out (n < samples) without packing, as the float forward_in_place
//                reads the input (kernel columns neighbours): `filters` (C_out x K) transposed
//                into `pairs` (in_place_pairs_scratch words of scratch), a pair of
//                neighbouring kernel columns a word, and each pair of input elements broadcast
//                as one onto the vectors of C_out. Only where forward_pairs_in_place_fits.
void forward_in_place(int64_t out_channels, int64_t samples, const c10::BFloat16* input,
                      int64_t sample_stride, const PatchRow* rows, const Geometry& g,
                      const c10::BFloat16* filters, uint32_t* pairs,
                      const c10::BFloat16* next, float* out);
// pair_samples: the paired input of pairs [first, last) of samples (paired_input_words in all):
//                paired[p * sample_size + e] holds element e of sample 2p in its low half and of
//                sample 2p + 1 in its high half (0 past the batch); `input` dense samples of
//                sample_size elements.
void pair_samples(const c10::BFloat16* input, int64_t sample_size, int64_t batch, int64_t first,
                  int64_t last, uint32_t* paired);
// grad_filters_in_place: grad_filters for bfloat16 without packing (accumulate and rounded as
//                there; for finite values the same results to the bit, the columns in the
//                padding zero), two samples at a time as grad_filters pairs them: each patch
//                column's pair of input elements one word of the paired input (pair n at
//                paired + n * sample_stride; `rows` as patch_rows leaves them, kernel columns
//                `step` elements apart) broadcast onto grad_output's pairs of the vectors of
//                C_out. Scratch: sums_t (K x C_out floats), 2 K int64 at `columns`, and
//                ceil(samples / 2) x C_out words at go_pairs. Only where
//                grad_weight_pairs_in_place_fits.
void grad_filters_in_place(int64_t out_channels, int64_t samples, const uint32_t* paired,
                           int64_t sample_stride, int64_t step, const PatchRow* rows,
                           const Geometry& g, const c10::BFloat16* grad_output, bool accumulate,
                           float* sums_t, int64_t* columns, uint32_t* go_pairs,
                           float* grad_filters, c10::BFloat16* rounded);
}  // namespace avx512_bf16

}  // namespace cpu
}  // namespace lc_cuda
