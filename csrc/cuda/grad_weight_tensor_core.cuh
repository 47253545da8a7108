// grad_weight on tensor cores, for float16 and bfloat16 (float accumulation), and for float32 on
// TF32, for the whole operator family.
//
// Per weight region r it is the GEMM  gw_r[o, k] = sum over r's locations l and samples n of
// gy[n, o, l] * patch_l[n, k]: M = output channels, N = patch columns, reduced over the batch and
// the region's locations (one location without sharing). Like the half-precision forward it is
// weight-streaming (it writes a gradient of the weight's size, each element a sum of only
// N * |r| products), so it is built the same way:
//   - a CTA covers 16 output channels of one group and LOCATIONS neighbouring output columns of
//     one output row (z, y), a warp each, and stages the input strips of input_staging.cuh (the
//     input packed as (C_in, D, H, W, N8)) for stage_k patch columns and BATCH samples at a time,
//     with cp.async into a double buffer;
//   - ldmatrix (not transposed) of those strips gives mma.sync B fragments (samples x patch
//     columns) directly: a patch column of 8 samples is one 16-byte row;
//   - the CTA's slice of grad_output, (LOCATIONS x 16 channels x whole batch), is staged with
//     samples innermost, and gives the A fragments (channels x samples) by ldmatrix;
//   - each warp accumulates a 16 x stage_k block of its locations' gradient in registers;
//   - the bias gradient, a sum of the staged slice over the batch, comes along where asked for,
//     so that grad_output is read once for both.
//
// Where locations share weights, a CTA takes whole regions (RegionColumns): it walks the output
// rows its regions cover and, per row, steps of LOCATIONS consecutive columns, re-staging the
// grad_output slice for each (row, step). In tiled sharing each warp keeps one region; in blocks
// of more than one column the warps of one region are summed through shared memory at the end
// of each K stage, in warp order. Every gradient element is written once, by one thread, summed
// in a fixed order: no atomics, bitwise-identical results from run to run, and no per-location
// gradient in memory.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda/input_staging.cuh"

namespace lc_cuda {
namespace kernels {

// element_t: uint16_t for float16/bfloat16 (m16n8k16), float for float32 on TF32 (m16n8k8).
template <typename element_t>
struct TensorCoreGradWeightTilesOf : StripTiles<element_t> {
  static constexpr int OUT_CHANNELS = 16;  // one 16-row MMA tile per warp
  static constexpr int PATCH_TILES = StripTiles<element_t>::STAGE_K / 8;  // 8-column MMA tiles
};
using TensorCoreGradWeightTiles = TensorCoreGradWeightTilesOf<uint16_t>;
using TensorCoreTF32GradWeightTiles = TensorCoreGradWeightTilesOf<float>;

// Region columns per CTA: without sharing, or in tiled sharing, one per warp; in blocks of s
// columns, as many whole blocks as LOCATIONS columns hold (one, for s >= LOCATIONS).
template <typename T, typename index_t>
__host__ __device__ inline index_t grad_weight_regions_per_cta(const ConvShape<index_t>& s) {
  if (s.share_tile || s.share_w == 1) return T::LOCATIONS;
  return s.share_w < T::LOCATIONS ? T::LOCATIONS / s.share_w : 1;
}

// Whether the warps of one region are summed at the end of each K stage: blocks of more than one
// column, whose columns lie in several warps.
template <typename index_t>
__host__ __device__ inline bool grad_weight_sums_warps(const ConvShape<index_t>& s) {
  return !s.share_tile && s.share_w > 1;
}

// The grid's column groups per region row.
template <typename T, typename index_t>
__host__ __device__ inline index_t grad_weight_column_groups(const ConvShape<index_t>& s) {
  const index_t per_cta = grad_weight_regions_per_cta<T>(s);
  return (s.regions_w + per_cta - 1) / per_cta;
}

// Which output columns a CTA's warps take. At step j of a member row, warp w takes column
// first_column + j * step_stride + w, where it belongs to the CTA:
//   - tiled (period s): the CTA's regions are columns first_region .. first_region + 7 of the
//     period, warp w keeps region first_region + w, and the steps walk the periods;
//   - blocks of s (s = 1 without sharing): the CTA's regions are grad_weight_regions_per_cta
//     whole blocks, span columns from first_column, walked LOCATIONS at a time; warp w belongs to
//     the CTA's region w / s.
template <typename T, typename index_t>
struct RegionColumns {
  index_t first_region, first_column, step_stride, steps, span;

  __device__ RegionColumns(const ConvShape<index_t>& s, index_t column_group) {
    const index_t per_cta = grad_weight_regions_per_cta<T>(s);
    first_region = column_group * per_cta;
    if (s.share_tile) {
      first_column = first_region;
      step_stride = s.share_w;
      span = s.share_w - first_region;  // warps below it have a region
      steps = (s.out_w - first_column + s.share_w - 1) / s.share_w;
    } else {
      first_column = first_region * s.share_w;
      step_stride = T::LOCATIONS;
      span = per_cta * s.share_w;
      const index_t left = s.out_w - first_column;
      steps = ((span < left ? span : left) + T::LOCATIONS - 1) / T::LOCATIONS;
    }
  }

  __device__ index_t column(index_t step, int warp) const {
    return first_column + step * step_stride + warp;
  }
  __device__ bool has_location(const ConvShape<index_t>& s, index_t step, int warp) const {
    const index_t position = s.share_tile ? index_t(warp) : step * T::LOCATIONS + warp;
    return position < span && column(step, warp) < s.out_w;
  }
  // The region column of warp w's locations, and whether it is a region of the layer.
  __device__ index_t region_column(const ConvShape<index_t>& s, int warp) const {
    return first_region + (s.share_tile ? index_t(warp) : index_t(warp) / s.share_w);
  }
  __device__ bool has_region(const ConvShape<index_t>& s, int warp) const {
    return warp < span && region_column(s, warp) < s.regions_w;
  }
  // The warp that stores a region's gradient: its first.
  __device__ bool stores(const ConvShape<index_t>& s, int warp) const {
    return s.share_tile || warp % s.share_w == 0;
  }
};

// Where the CTA's stage sequence stands: K stage, then member row (out_z, out_i), then column
// step, then batch chunk, the last fastest.
template <typename index_t>
struct GradWeightCursor {
  index_t k_stage, out_z, out_i, step, chunk;

  __device__ void advance(index_t chunks, index_t steps, const RegionMembers<index_t>& along_d,
                          const RegionMembers<index_t>& along_h) {
    if (++chunk < chunks) return;
    chunk = 0;
    if (++step < steps) return;
    step = 0;
    if ((out_i += along_h.step) < along_h.end) return;
    out_i = along_h.first;
    if ((out_z += along_d.step) < along_d.end) return;
    out_z = along_d.first;
    ++k_stage;
  }
};

// Staged grad_output rows: samples of the batch rounded up to whole BATCH chunks, plus 8
// elements, so that rows are an odd number of 16-byte units apart (conflict-free ldmatrix).
template <typename T, typename index_t>
__host__ __device__ inline index_t tensor_core_grad_row(const ConvShape<index_t>& s) {
  return (s.batch + T::BATCH - 1) / T::BATCH * T::BATCH + 8;
}

// The bytes of the shared memory a CTA sums its warps' accumulators in (grad_weight_sums_warps):
// per warp and lane its 16 x STAGE_K block's share, PATCH_TILES * 4 floats.
template <typename T>
constexpr int64_t tensor_core_warp_sums_bytes() {
  return int64_t(T::LOCATIONS) * T::PATCH_TILES * 4 * 32 * 4;
}

// Two input buffers, one 16-byte row of zeros, the staged grad_output, then where blocks of
// shared weights span several warps, the space to sum them.
template <typename T, typename index_t>
int64_t tensor_core_grad_weight_shared_bytes(const ConvShape<index_t>& s, index_t stage_k) {
  return 2 * tensor_core_buffer_bytes<T>(s, stage_k) + 16 +
         int64_t(T::LOCATIONS) * T::OUT_CHANNELS * tensor_core_grad_row<T>(s) *
             int64_t(sizeof(typename T::element_t)) +
         (grad_weight_sums_warps(s) ? tensor_core_warp_sums_bytes<T>() : 0);
}

// Grid: x = C_out tiles of each group, y = (region row (z, y), group of region columns).
template <typename T, typename index_t>
dim3 tensor_core_grad_weight_grid(const ConvShape<index_t>& s) {
  return dim3{channel_tile_blocks(s.groups, s.group_out_channels, T::OUT_CHANNELS),
              static_cast<unsigned int>(s.regions_d * s.regions_h *
                                        grad_weight_column_groups<T>(s)),
              1};
}

template <typename scalar_t>
__device__ inline uint16_t bits_of(scalar_t value) {
  static_assert(sizeof(scalar_t) == 2, "a 16-bit type");
  uint16_t bits;
  memcpy(&bits, &value, 2);
  return bits;
}

// A staged element as float: 16-bit elements hold scalar_t's bits, 32-bit ones are floats.
template <typename scalar_t>
__device__ inline float float_of(uint16_t bits) {
  scalar_t value;
  memcpy(&value, &bits, 2);
  return static_cast<float>(value);
}
template <typename scalar_t>
__device__ inline float float_of(float value) {
  return value;
}

// ---------------------------------------------------------------------------------------------
// The kernel. grad_output has any strides (s.grad_stride_*); packed_input as in the forward
// (s's input strides describe it); grad_weight contiguous. EVEN_K: K is even and grad_weight
// 4-byte aligned, so each thread's pair of neighbouring gradient elements is one 32-bit store
// (16-bit types). bias_sums: nullptr, or a (C_out, OD, OH, OW) float tensor for the per-location
// bias gradient (the caller sums it over regions). scalar_t float runs TF32 (m16n8k8, operands
// rounded with cvt.rna; ldmatrix moves 16-bit elements only, so fragments are read as single
// floats).
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool BFLOAT16, bool EVEN_K, typename index_t, typename T>
__global__ void __launch_bounds__(T::THREADS)
    grad_weight_tensor_core_kernel(const scalar_t* __restrict__ grad_output,
                                   const scalar_t* __restrict__ packed_input,
                                   scalar_t* __restrict__ grad_weight,
                                   float* __restrict__ bias_sums, ConvShape<index_t> s,
                                   StripStaging<index_t> staging) {
  using element_t = typename T::element_t;
  constexpr bool kTF32 = std::is_same_v<scalar_t, float>;
  static_assert(sizeof(scalar_t) == sizeof(element_t), "staged elements hold scalar_t");
  static_assert(T::THREADS == T::LOCATIONS * T::OUT_CHANNELS * 2, "grad_output staging layout");
  const element_t* packed = reinterpret_cast<const element_t*>(packed_input);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const index_t column_groups = grad_weight_column_groups<T>(s);
  const index_t region_row = static_cast<index_t>(blockIdx.y) / column_groups;
  const RegionColumns<T, index_t> columns(
      s, static_cast<index_t>(blockIdx.y) - region_row * column_groups);
  const index_t region_z = region_row / s.regions_h, region_y = region_row - region_z * s.regions_h;
  const RegionMembers<index_t> along_d = region_members(s, region_z, s.share_d, s.out_d);
  const RegionMembers<index_t> along_h = region_members(s, region_y, s.share_h, s.out_h);
  const ChannelTile<index_t> outputs =
      channel_tile<T::OUT_CHANNELS>(static_cast<index_t>(blockIdx.x), s.group_out_channels);
  const index_t group_offset = outputs.group * s.group_in_channels * s.input_stride_c;
  const index_t patch_size = s.patch_size();

  // Shared memory: two pipeline buffers, the zero row, the grad_output slice, the warp sums.
  element_t* const buffers = reinterpret_cast<element_t*>(dynamic_shared_memory());
  const index_t buffer_elements =
      tensor_core_buffer_bytes<T>(s, staging.stage_k) / sizeof(element_t);
  uint16_t* const zero_row = reinterpret_cast<uint16_t*>(buffers + 2 * buffer_elements);
  element_t* const grads = reinterpret_cast<element_t*>(zero_row + 8);
  const index_t grad_row = tensor_core_grad_row<T>(s);
  float* const warp_sums =
      reinterpret_cast<float*>(grads + T::LOCATIONS * T::OUT_CHANNELS * grad_row);
  const index_t table_at = tensor_core_stage_rows<T>(s, staging.stage_k) *
                           tensor_core_strip_width<T>(s) * T::COLUMN;
  if (threadIdx.x < 8) zero_row[threadIdx.x] = 0;

  // This lane's ldmatrix rows. A (channels x samples): matrix lane / 8 is channels 0-7 or 8-15
  // by samples 0-7 or 8-15. B (samples x patch columns), two 8-column tiles per ldmatrix:
  // matrix lane / 8 is (tile 0, samples 0-7), (tile 0, 8-15), (tile 1, 0-7), (tile 1, 8-15).
  const element_t* a_row = grads + (warp * T::OUT_CHANNELS + (lane & 7) +
                                    ((lane >> 3) & 1) * 8) * grad_row + (lane >> 4) * 8;
  const int b_column = (lane & 7) + (lane >> 4) * 8;
  const int b_samples = ((lane >> 3) & 1) * 8;
  const index_t location_column = static_cast<index_t>(warp) * s.stride_w * T::COLUMN;

  const index_t batch_chunks = (s.batch + T::BATCH - 1) / T::BATCH;
  const index_t k_stages = (patch_size + staging.stage_k - 1) / staging.stage_k;
  // One (member row, column step) in all: the grad_output slice is staged once.
  const bool one_slice = along_d.first + along_d.step >= along_d.end &&
                         along_h.first + along_h.step >= along_h.end && columns.steps == 1;
  const auto origin_of = [&](const GradWeightCursor<index_t>& at) {
    return StripOrigin<index_t>{group_offset, at.out_z * s.stride_d - s.pad_d,
                                at.out_i * s.stride_h - s.pad_h,
                                columns.column(at.step, 0) * s.stride_w - s.pad_w};
  };
  const StagingWalk<T, index_t> walk(s);
  TableWalk<T, index_t> table_walk(s, staging.stage_k);
  GradWeightCursor<index_t> at{0, along_d.first, along_h.first, 0, 0};
  stage_input<T>(buffers, packed, s, walk, table_walk, staging, index_t(0), patch_size,
                 origin_of(at), index_t(0));
  commit_async_copies();

  float acc[T::PATCH_TILES][4];
  for (index_t stage = 0; at.k_stage < k_stages; ++stage) {
    GradWeightCursor<index_t> next = at;
    next.advance(batch_chunks, columns.steps, along_d, along_h);
    const index_t k_base = at.k_stage * staging.stage_k;
    const index_t end = k_base + staging.stage_k < patch_size ? k_base + staging.stage_k
                                                               : patch_size;
    if (at.chunk == 0 && (stage == 0 || !one_slice)) {
      // grads[slot][o][n] = gy[n, first + o, out_z, out_i, column of warp `slot`], zero where
      // the slot has no location of the CTA. The previous stage's reads of it ended at its last
      // barrier. Neighbouring threads take neighbouring locations (contiguous in an NCDHW
      // grad_output).
      const int slot = threadIdx.x % T::LOCATIONS;
      const int o = (threadIdx.x / T::LOCATIONS) % T::OUT_CHANNELS;
      const int first_n = threadIdx.x / (T::LOCATIONS * T::OUT_CHANNELS);
      const bool valid =
          columns.has_location(s, at.step, slot) && outputs.first + o < outputs.end;
      const element_t* source =
          reinterpret_cast<const element_t*>(grad_output) +
          (valid ? grad_output_offset(s, index_t(0), outputs.first + o, at.out_z, at.out_i,
                                      columns.column(at.step, slot))
                 : 0);
      element_t* row = grads + (slot * T::OUT_CHANNELS + o) * grad_row;
      for (index_t n = first_n; n < grad_row - 8; n += 2)
        row[n] = valid && n < s.batch ? source[n * s.grad_stride_n] : element_t(0);
      if (bias_sums != nullptr && at.k_stage == 0) {
        // The bias gradient comes with the staged slice, saving a pass over grad_output:
        // bias_sums[o, location] = sum over the batch of gy[n, o, location], in float, in order.
        __syncthreads();
        if (threadIdx.x < T::LOCATIONS * T::OUT_CHANNELS) {
          const int sum_slot = threadIdx.x % T::LOCATIONS, sum_o = threadIdx.x / T::LOCATIONS;
          if (columns.has_location(s, at.step, sum_slot) && outputs.first + sum_o < outputs.end) {
            const element_t* sum_row = grads + (sum_slot * T::OUT_CHANNELS + sum_o) * grad_row;
            float sum = 0.f;
            for (index_t n = 0; n < s.batch; ++n) sum += float_of<scalar_t>(sum_row[n]);
            bias_sums[(outputs.first + sum_o) * s.locations() +
                      (at.out_z * s.out_h + at.out_i) * s.out_w +
                      columns.column(at.step, sum_slot)] = sum;
          }
        }
      }
    }
    if (at.chunk == 0 && at.step == 0 && at.out_i == along_h.first && at.out_z == along_d.first) {
#pragma unroll
      for (int tile = 0; tile < T::PATCH_TILES; ++tile)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[tile][i] = 0.f;
    }
    // The next stage's copies fly while this one computes (see the forward kernel).
    if (next.k_stage < k_stages) {
      if (next.k_stage != at.k_stage) table_walk.advance(s);
      stage_input<T>(buffers + ((stage + 1) % 2) * buffer_elements, packed, s, walk, table_walk,
                     staging, next.k_stage * staging.stage_k, patch_size, origin_of(next),
                     next.chunk * T::BATCH);
    }
    commit_async_copies();
    wait_async_copies<1>();
    __syncthreads();

    if (columns.has_location(s, at.step, warp)) {
      const element_t* buffer = buffers + (stage % 2) * buffer_elements;
      const int* table = reinterpret_cast<const int*>(buffer + table_at);
      if constexpr (kTF32) {
        // A = (A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]) of (channels x 8 samples),
        // B = (B[t][g], B[t+4][g]) of (8 samples x patch columns); zeros past K.
        const int g = lane / 4, t = lane % 4;
        const element_t* channel_rows = grads + warp * T::OUT_CHANNELS * grad_row;
#pragma unroll
        for (int step = 0; step < T::BATCH / 8; ++step) {
          const index_t samples = at.chunk * T::BATCH + step * 8;
          if (samples >= s.batch) break;
          uint32_t a[4];
#pragma unroll
          for (int i = 0; i < 4; ++i)
            a[i] = to_tf32(channel_rows[(g + (i & 1) * 8) * grad_row + samples + t + (i >> 1) * 4]);
#pragma unroll
          for (int tile = 0; tile < T::PATCH_TILES; ++tile) {
            if (tile * 8 >= staging.stage_k) break;
            const int offset = table[tile * 8 + g];
            uint32_t b[2];
#pragma unroll
            for (int half = 0; half < 2; ++half)
              b[half] = offset < 0 ? 0u
                                   : to_tf32(buffer[offset + location_column + step * 8 + t +
                                                    half * 4]);
            mma_16x8x8_tf32(acc[tile], a, b);
          }
        }
      } else {
#pragma unroll
        for (int step = 0; step < T::BATCH / 16; ++step) {
          const index_t samples = at.chunk * T::BATCH + step * 16;
          if (samples >= s.batch) break;
          uint32_t a[4];
          load_matrix_x4<false>(a, a_row + samples);
#pragma unroll
          for (int pair = 0; pair < T::PATCH_TILES / 2; ++pair) {
            if (pair * 16 >= staging.stage_k) break;
            const int offset = table[pair * 16 + b_column];
            // Past K every lane reads the zero row (no sample offset: it is 8 elements long).
            const void* row = offset < 0 ? static_cast<const void*>(zero_row)
                                         : buffer + offset + location_column + step * 16 +
                                               b_samples;
            uint32_t b[4];
            load_matrix_x4<false>(b, row);
            const uint32_t first[2] = {b[0], b[1]}, second[2] = {b[2], b[3]};
            mma_16x8x16<BFLOAT16>(acc[2 * pair], a, first);
            mma_16x8x16<BFLOAT16>(acc[2 * pair + 1], a, second);
          }
        }
      }
    }
    if (next.k_stage != at.k_stage) {
      if (grad_weight_sums_warps(s)) {
        // The warps of a block of regions sum their accumulators, the block's first warp in
        // warp order: a fixed order, like every other sum here.
#pragma unroll
        for (int tile = 0; tile < T::PATCH_TILES; ++tile)
#pragma unroll
          for (int i = 0; i < 4; ++i)
            warp_sums[((warp * T::PATCH_TILES + tile) * 4 + i) * 32 + lane] = acc[tile][i];
        __syncthreads();
        if (columns.stores(s, warp)) {
          const int last = warp + s.share_w < T::LOCATIONS ? warp + s.share_w : T::LOCATIONS;
#pragma unroll
          for (int tile = 0; tile < T::PATCH_TILES; ++tile)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              float sum = 0.f;
              for (int other = warp; other < last; ++other)
                sum += warp_sums[((other * T::PATCH_TILES + tile) * 4 + i) * 32 + lane];
              acc[tile][i] = sum;
            }
        }
      }
      if (columns.stores(s, warp) && columns.has_region(s, warp)) {
        // acc[tile][i]: output channel g (+8 for i >= 2), patch column tile*8 + 2t + (i % 2).
        const int g = lane / 4, t = lane % 4;
        const index_t region = region_row * s.regions_w + columns.region_column(s, warp);
        scalar_t* region_grads = grad_weight + region * s.out_channels * patch_size;
#pragma unroll
        for (int tile = 0; tile < T::PATCH_TILES; ++tile)
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const index_t o = outputs.first + g + half * 8, k = k_base + tile * 8 + 2 * t;
            if (o >= outputs.end || k >= end) continue;
            scalar_t* target = region_grads + o * patch_size + k;
            const scalar_t low = static_cast<scalar_t>(acc[tile][2 * half]);
            const scalar_t high = static_cast<scalar_t>(acc[tile][2 * half + 1]);
            if constexpr (EVEN_K && !kTF32) {
              store_pair(target, bits_of(low) | (uint32_t(bits_of(high)) << 16));
            } else {
              target[0] = low;
              if (k + 1 < end) target[1] = high;
            }
          }
      }
    }
    __syncthreads();
    at = next;
  }
}

}  // namespace kernels
}  // namespace lc_cuda
