// The forward pass on tensor cores, for float16 and bfloat16 (float accumulation), and for float32
// on TF32 (forward_tf32_kernel), for the whole operator family (1 to 3 spatial dimensions, channel
// groups, filter banks per location or per region).
//
// Why a second forward kernel: a half-precision layer streams its weight (each weight element is
// used only N times), so its floor is the time to read the weight once, and the FFMA kernel,
// which converts every operand to float in shared memory, is far from it. This one:
//   - reads the weight straight from global memory into mma.sync B fragments, in its own layout
//     (a region's filters are a C_out x K row-major matrix, K = C_in/groups*KD*KH*KW, so a
//     fragment's pairs of neighbouring patch columns are one aligned 32-bit load), once per CTA;
//   - covers LOCATIONS neighbouring output columns of one output row (z, y) per CTA, a warp each,
//     so the input columns their windows share are staged in shared memory once for all of them;
//     each warp reads its own location's region filters; a CTA's output channels lie in one group;
//   - takes the input packed as (C_in, D, H, W, N8) and stages it as in input_staging.cuh, with
//     cp.async into a double buffer, so that ldmatrix.trans builds the A fragment (samples x
//     patch columns) of any 16 consecutive patch columns.
// Each output element is summed by one thread in a fixed order: bitwise-identical results from
// run to run.
#pragma once

#include <cstdint>

#include "cuda/input_staging.cuh"

namespace lc_cuda {
namespace kernels {

template <int OUT_TILES_>
struct TensorCoreForwardTiles : StripTiles<uint16_t> {
  static constexpr int STEPS = STAGE_K / 16;      // k16 MMA steps per stage
  static constexpr int BATCH_TILES = BATCH / 16;  // 16-row MMA tiles per warp
  static constexpr int OUT_TILES = OUT_TILES_;    // 8-column MMA tiles per warp
  static constexpr int OUT_CHANNELS = 8 * OUT_TILES;
};

// The same for float32 on TF32 tensor cores: 8-wide k steps.
template <int OUT_TILES_>
struct TensorCoreTF32ForwardTiles : StripTiles<float> {
  static constexpr int STEPS = STAGE_K / 8;       // k8 MMA steps per stage
  static constexpr int BATCH_TILES = BATCH / 16;  // 16-row MMA tiles per warp
  static constexpr int OUT_TILES = OUT_TILES_;    // 8-column MMA tiles per warp
  static constexpr int OUT_CHANNELS = 8 * OUT_TILES;
};

// Two buffers of stage_k patch columns and one 16-byte row of zeros, which stands in for patch
// columns past K.
template <typename T, typename index_t>
int64_t tensor_core_forward_shared_bytes(const ConvShape<index_t>& s, index_t stage_k) {
  return 2 * tensor_core_buffer_bytes<T>(s, stage_k) + 16;
}

// Grid: x = batch tiles (fastest, so that the CTAs reading the same weights run together and
// the second finds them in L2), y = (output row (z, y), group of LOCATIONS columns), z = C_out
// tiles of each group.
template <typename T, typename index_t>
dim3 tensor_core_forward_grid(const ConvShape<index_t>& s) {
  return dim3{grid_blocks(s.batch, T::BATCH),
              row_segment_blocks<T::LOCATIONS>(s.out_d * s.out_h, s.out_w),
              channel_tile_blocks(s.groups, s.group_out_channels, T::OUT_CHANNELS)};
}

// Patch columns k and k+1 of one region's filter row for output channel o, as the B fragment
// wants them (k in the low half), or zeros from `end` (K, or the stage's end) on. EVEN_K: K is
// even and the weight 4-byte aligned, so the pair is one aligned 32-bit load (and end, K or a
// multiple of 16, is even).
template <bool EVEN_K, typename index_t>
__device__ inline uint32_t filter_pair(const uint16_t* __restrict__ filter_row, index_t k,
                                       index_t end) {
  if (k >= end) return 0;
  if (EVEN_K) return load_pair(filter_row + k);
  const uint32_t high = k + 1 < end ? filter_row[k + 1] : 0;
  return filter_row[k] | (high << 16);
}

// The B fragments of one stage, patch columns [k_base, stage_end): for each k16 step and 8-wide
// output tile, patch columns (k + 2t, k + 2t + 1) and (k + 2t + 8, k + 2t + 9) of output channel
// o_base + 8*tile + g (zeros from o_end, the group's end, on).
template <typename T, bool EVEN_K, typename index_t>
__device__ inline void load_stage_filters(uint32_t (&b)[T::STEPS][T::OUT_TILES][2],
                                          const uint16_t* __restrict__ region_filters,
                                          index_t o_base, index_t o_end, index_t k_base,
                                          index_t stage_end, index_t patch_size) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int tile = 0; tile < T::OUT_TILES; ++tile) {
    const index_t o = o_base + tile * 8 + g;
    const bool valid = o < o_end;
    const uint16_t* row = region_filters + (valid ? o : 0) * patch_size;
#pragma unroll
    for (int step = 0; step < T::STEPS; ++step) {
      const index_t k = k_base + step * 16 + 2 * t;
      b[step][tile][0] = valid ? filter_pair<EVEN_K>(row, k, stage_end) : 0;
      b[step][tile][1] = valid ? filter_pair<EVEN_K>(row, k + 8, stage_end) : 0;
    }
  }
}

// The end of the stage from k_base: stage_k patch columns, or fewer at the end of K.
template <typename index_t>
__device__ inline index_t stage_end(index_t k_base, index_t stage_k, index_t patch_size) {
  return k_base + stage_k < patch_size ? k_base + stage_k : patch_size;
}

// Where a forward CTA's warp works: output row (out_z, out_i), column out_j (one of LOCATIONS
// neighbours) and its weight region, samples from n_base, the output channels of one group's
// tile. Grid as in tensor_core_forward_grid. Warps past the row's end still stage and meet at
// every barrier; they skip the math.
template <typename T, typename index_t>
struct ForwardPosition {
  index_t out_j, location, region, n_base;
  ChannelTile<index_t> outputs;
  StripOrigin<index_t> origin;
  bool has_location;

  __device__ ForwardPosition(const ConvShape<index_t>& s, int warp) {
    const RowSegment<index_t> segment = row_segment<T::LOCATIONS>(s.out_w);
    const index_t out_z = segment.row / s.out_h, out_i = segment.row - out_z * s.out_h;
    out_j = segment.first_column + warp;
    has_location = out_j < s.out_w;
    location = segment.row * s.out_w + out_j;
    region = has_location ? s.region_of(out_z, out_i, out_j) : 0;
    n_base = static_cast<index_t>(blockIdx.x) * T::BATCH;
    outputs = channel_tile<T::OUT_CHANNELS>(static_cast<index_t>(blockIdx.z), s.group_out_channels);
    origin = {outputs.group * s.group_in_channels * s.input_stride_c,
              out_z * s.stride_d - s.pad_d, out_i * s.stride_h - s.pad_h,
              segment.first_column * s.stride_w - s.pad_w};
  }
};

// The forward kernels' input pipeline: two buffers at the start of dynamic shared memory, stage
// i (staging.stage_k patch columns) in buffer i % 2, each staged while the one before it is
// computed.
template <typename T, typename index_t>
struct ForwardPipeline {
  using element_t = typename T::element_t;
  element_t* buffers;
  index_t buffer_elements, stages, patch_size;
  StripStaging<index_t> staging;
  const element_t* packed;
  StagingWalk<T, index_t> walk;
  TableWalk<T, index_t> table_walk;

  // Stages stage 0.
  __device__ ForwardPipeline(const ConvShape<index_t>& s, const ForwardPosition<T, index_t>& at,
                             const element_t* packed_input, const StripStaging<index_t>& staging_)
      : buffers(reinterpret_cast<element_t*>(dynamic_shared_memory())),
        buffer_elements(tensor_core_buffer_bytes<T>(s, staging_.stage_k) / sizeof(element_t)),
        patch_size(s.patch_size()),
        staging(staging_),
        packed(packed_input),
        walk(s),
        table_walk(s, staging_.stage_k) {
    stages = (patch_size + staging.stage_k - 1) / staging.stage_k;
    stage(s, at, 0);
    commit_async_copies();
  }

  __device__ void stage(const ConvShape<index_t>& s, const ForwardPosition<T, index_t>& at,
                        index_t which) {
    stage_input<T>(buffers + (which % 2) * buffer_elements, packed, s, walk, table_walk, staging,
                   which * staging.stage_k, patch_size, at.origin, at.n_base);
  }

  // Starts staging stage + 1, then waits until stage `stage` has landed for every thread and
  // returns its buffer. The buffer stage + 1 goes to was last read in the previous iteration,
  // which every thread has left (the barrier after each stage's math).
  __device__ const element_t* next(const ConvShape<index_t>& s,
                                   const ForwardPosition<T, index_t>& at, index_t stage_index) {
    if (stage_index + 1 < stages) {
      table_walk.advance(s);
      stage(s, at, stage_index + 1);
    }
    commit_async_copies();
    wait_async_copies<1>();
    __syncthreads();
    return buffers + (stage_index % 2) * buffer_elements;
  }
};

// Adds the bias (shared, or the location's region's) and writes a warp's accumulators:
// acc[m][tile][i] is sample m*16 + g (+8 for i >= 2) and output channel tile*8 + 2t + (i % 2),
// PTX's accumulator layout.
template <typename T, typename scalar_t, typename index_t>
__device__ inline void store_forward_results(const float (&acc)[T::BATCH_TILES][T::OUT_TILES][4],
                                             const ForwardPosition<T, index_t>& at,
                                             const scalar_t* __restrict__ bias, bool shared_bias,
                                             scalar_t* __restrict__ output,
                                             const ConvShape<index_t>& s) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const index_t locations = s.locations();
#pragma unroll
  for (int m = 0; m < T::BATCH_TILES; ++m)
#pragma unroll
    for (int tile = 0; tile < T::OUT_TILES; ++tile)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const index_t n = at.n_base + m * 16 + g + (i / 2) * 8;
        const index_t o = at.outputs.first + tile * 8 + 2 * t + (i % 2);
        if (n >= s.batch || o >= at.outputs.end) continue;
        float value = acc[m][tile][i];
        if (bias != nullptr)
          value += static_cast<float>(bias[shared_bias ? o : o * s.regions() + at.region]);
        output[(n * s.out_channels + o) * locations + at.location] =
            static_cast<scalar_t>(value);
      }
}

template <typename T>
__device__ inline void zero_accumulators(float (&acc)[T::BATCH_TILES][T::OUT_TILES][4]) {
#pragma unroll
  for (int m = 0; m < T::BATCH_TILES; ++m)
#pragma unroll
    for (int tile = 0; tile < T::OUT_TILES; ++tile)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[m][tile][i] = 0.f;
}

// ---------------------------------------------------------------------------------------------
// The float16/bfloat16 kernel. packed: the input as (C_in, D, H, W, N8), described by s's input
// strides (n: 1, c, d, h, w: the packed strides; w a multiple of 8) and 16-byte aligned. weight,
// bias and output as in forward_kernel.
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool BFLOAT16, bool EVEN_K, typename index_t, typename T>
__global__ void __launch_bounds__(T::THREADS)
    forward_tensor_core_kernel(const scalar_t* __restrict__ packed_input,
                               const scalar_t* __restrict__ weight,
                               const scalar_t* __restrict__ bias, bool shared_bias,
                               scalar_t* __restrict__ output, ConvShape<index_t> s,
                               StripStaging<index_t> staging) {
  static_assert(sizeof(scalar_t) == 2, "tensor-core forward is for float16 and bfloat16");
  const uint16_t* packed = reinterpret_cast<const uint16_t*>(packed_input);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const ForwardPosition<T, index_t> at(s, warp);
  const index_t patch_size = s.patch_size();
  const uint16_t* region_filters =
      reinterpret_cast<const uint16_t*>(weight) + at.region * s.out_channels * patch_size;

  // The pipeline's two buffers, then the zero row.
  ForwardPipeline<T, index_t> pipeline(s, at, packed, staging);
  uint16_t* const zero_row = pipeline.buffers + 2 * pipeline.buffer_elements;
  if (threadIdx.x < 8) zero_row[threadIdx.x] = 0;
  const index_t table_at = tensor_core_stage_rows<T>(s, staging.stage_k) *
                           tensor_core_strip_width<T>(s) * T::COLUMN;
  // ldmatrix.x4.trans row of this lane: matrix lane / 8 is (patch columns 0-7 or 8-15) x
  // (samples 0-7 or 8-15) of a 16 x 16 A tile; lane % 8 picks the patch column.
  const int lane_k = (lane & 7) + ((lane >> 4) << 3);
  const int lane_samples = ((lane >> 3) & 1) * 8;
  const index_t location_column = static_cast<index_t>(warp) * s.stride_w * T::COLUMN;

  float acc[T::BATCH_TILES][T::OUT_TILES][4];
  zero_accumulators<T>(acc);
  uint32_t b[T::STEPS][T::OUT_TILES][2];
  if (at.has_location)
    load_stage_filters<T, EVEN_K>(b, region_filters, at.outputs.first, at.outputs.end, index_t(0),
                                  stage_end(index_t(0), staging.stage_k, patch_size), patch_size);

  for (index_t stage = 0; stage < pipeline.stages; ++stage) {
    const index_t k_base = stage * staging.stage_k;
    const index_t end = stage_end(k_base, staging.stage_k, patch_size);
    const uint16_t* buffer = pipeline.next(s, at, stage);

    uint32_t next_b[T::STEPS][T::OUT_TILES][2];
    if (at.has_location) {
      if (stage + 1 < pipeline.stages)
        load_stage_filters<T, EVEN_K>(next_b, region_filters, at.outputs.first, at.outputs.end,
                                      end, stage_end(end, staging.stage_k, patch_size),
                                      patch_size);
      const int* table = reinterpret_cast<const int*>(buffer + table_at);
#pragma unroll
      for (int step = 0; step < T::STEPS; ++step) {
        if (k_base + step * 16 >= end) break;
        const int offset = table[step * 16 + lane_k];
        const uint16_t* row =
            offset < 0 ? zero_row : buffer + offset + location_column + lane_samples;
#pragma unroll
        for (int m = 0; m < T::BATCH_TILES; ++m) {
          uint32_t a[4];
          // Past K every lane reads the zero row (no sample offset: it is 8 elements long).
          load_matrix_x4<true>(a, offset < 0 ? row : row + m * 16);
#pragma unroll
          for (int tile = 0; tile < T::OUT_TILES; ++tile)
            mma_16x8x16<BFLOAT16>(acc[m][tile], a, b[step][tile]);
        }
      }
      if (stage + 1 < pipeline.stages) {
#pragma unroll
        for (int step = 0; step < T::STEPS; ++step)
#pragma unroll
          for (int tile = 0; tile < T::OUT_TILES; ++tile)
            b[step][tile][0] = next_b[step][tile][0], b[step][tile][1] = next_b[step][tile][1];
      }
    }
    __syncthreads();
  }
  if (at.has_location) store_forward_results<T>(acc, at, bias, shared_bias, output, s);
}

// ---------------------------------------------------------------------------------------------
// The float32 kernel on TF32 tensor cores (mma.sync m16n8k8), for callers that allow TF32: the
// same CTA, staging and pipeline, with float strips. The A fragments are read as single floats
// (ldmatrix moves 16-bit elements) and every operand is rounded to TF32 (to nearest) on its way
// into a fragment. B fragments are loaded at the top of each stage, so that their latency
// overlaps the wait for the stage's input.
// ---------------------------------------------------------------------------------------------
template <typename index_t, typename T>
__global__ void __launch_bounds__(T::THREADS)
    forward_tf32_kernel(const float* __restrict__ packed, const float* __restrict__ weight,
                        const float* __restrict__ bias, bool shared_bias,
                        float* __restrict__ output, ConvShape<index_t> s,
                        StripStaging<index_t> staging) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const ForwardPosition<T, index_t> at(s, warp);
  const index_t patch_size = s.patch_size();
  const float* region_filters = weight + at.region * s.out_channels * patch_size;

  ForwardPipeline<T, index_t> pipeline(s, at, packed, staging);
  const index_t table_at = tensor_core_stage_rows<T>(s, staging.stage_k) *
                           tensor_core_strip_width<T>(s) * T::COLUMN;
  const index_t location_column = static_cast<index_t>(warp) * s.stride_w * T::COLUMN;

  float acc[T::BATCH_TILES][T::OUT_TILES][4];
  zero_accumulators<T>(acc);
  for (index_t stage = 0; stage < pipeline.stages; ++stage) {
    const index_t k_base = stage * staging.stage_k;
    const index_t end = stage_end(k_base, staging.stage_k, patch_size);
    // b[step][tile] = (B[t][g], B[t+4][g]) of patch columns k_base + 8*step + (t, t+4) and
    // output channel first + 8*tile + g; zeros past the stage or the group's channels.
    uint32_t b[T::STEPS][T::OUT_TILES][2];
    if (at.has_location) {
#pragma unroll
      for (int tile = 0; tile < T::OUT_TILES; ++tile) {
        const index_t o = at.outputs.first + tile * 8 + g;
        const float* row = region_filters + (o < at.outputs.end ? o : 0) * patch_size;
#pragma unroll
        for (int step = 0; step < T::STEPS; ++step)
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const index_t k = k_base + step * 8 + t + half * 4;
            b[step][tile][half] = o < at.outputs.end && k < end ? to_tf32(__ldg(row + k)) : 0u;
          }
      }
    }
    const float* buffer = pipeline.next(s, at, stage);

    if (at.has_location) {
      const int* table = reinterpret_cast<const int*>(buffer + table_at);
#pragma unroll
      for (int step = 0; step < T::STEPS; ++step) {
        if (k_base + step * 8 >= end) break;
        // Patch columns t and t + 4 of the step; past K their A values are zeros.
        const int offsets[2] = {table[step * 8 + t], table[step * 8 + t + 4]};
#pragma unroll
        for (int m = 0; m < T::BATCH_TILES; ++m) {
          uint32_t a[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int offset = offsets[i / 2];
            const int sample = m * 16 + g + (i % 2) * 8;
            a[i] = offset < 0 ? 0u : to_tf32(buffer[offset + location_column + sample]);
          }
#pragma unroll
          for (int tile = 0; tile < T::OUT_TILES; ++tile)
            mma_16x8x8_tf32(acc[m][tile], a, b[step][tile]);
        }
      }
    }
    __syncthreads();
  }
  if (at.has_location) store_forward_results<T>(acc, at, bias, shared_bias, output, s);
}

}  // namespace kernels
}  // namespace lc_cuda
