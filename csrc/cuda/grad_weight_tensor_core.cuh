// grad_weight on tensor cores, for float16 and bfloat16 (float accumulation).
//
// Per output location l it is the GEMM  gw_l[o, k] = sum_n gy[n, o, l] * patch_l[n, k]:
// M = output channels, N = patch columns, reduced over the batch. Like the half-precision
// forward it is weight-streaming (it writes a gradient of the weight's size, each element a sum
// of only N products), so it is built the same way:
//   - a CTA covers LOCATIONS neighbouring output columns of one row (a warp each) and 16 output
//     channels, and stages the input strips of input_staging.cuh (the input packed as
//     (C_in, H, W, N8)) for STAGE_K patch columns and BATCH samples at a time, with cp.async
//     into a double buffer;
//   - ldmatrix (not transposed) of those strips gives mma.sync B fragments (samples x patch
//     columns) directly: a patch column of 8 samples is one 16-byte row;
//   - the CTA's slice of grad_output, (LOCATIONS x 16 channels x whole batch), is staged once
//     with samples innermost, and gives the A fragments (channels x samples) by ldmatrix;
//   - each warp accumulates a 16 x STAGE_K block of its location's gradient over the whole
//     batch, then stores it: every gradient element is written once, by one thread, summed in a
//     fixed order (no atomics, bitwise-identical results from run to run);
//   - the bias gradient, a sum of the staged slice over the batch, comes along where asked for,
//     so that grad_output is read once for both.
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

// Staged grad_output rows: samples of the batch rounded up to whole BATCH chunks, plus 8
// elements, so that rows are an odd number of 16-byte units apart (conflict-free ldmatrix).
template <typename T, typename index_t>
__host__ __device__ inline index_t tensor_core_grad_row(const ConvShape<index_t>& s) {
  return (s.batch + T::BATCH - 1) / T::BATCH * T::BATCH + 8;
}

// Two input buffers, one 16-byte row of zeros, then the staged grad_output.
template <typename T, typename index_t>
int64_t tensor_core_grad_weight_shared_bytes(const ConvShape<index_t>& s) {
  return 2 * tensor_core_buffer_bytes<T>(s) + 16 +
         int64_t(T::LOCATIONS) * T::OUT_CHANNELS * tensor_core_grad_row<T>(s) *
             int64_t(sizeof(typename T::element_t));
}

// Grid: x = C_out tiles, y = (output row, group of LOCATIONS columns).
template <typename T, typename index_t>
dim3 tensor_core_grad_weight_grid(const ConvShape<index_t>& s) {
  return dim3{grid_blocks(s.out_channels, T::OUT_CHANNELS),
              row_segment_blocks<T::LOCATIONS>(s.out_h, s.out_w), 1};
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
// (16-bit types). bias_sums: nullptr, or a (C_out, OH, OW) float tensor for the per-location
// bias gradient. scalar_t float runs TF32 (m16n8k8, operands rounded with cvt.rna; ldmatrix
// moves 16-bit elements only, so fragments are read as single floats).
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool BFLOAT16, bool EVEN_K, typename index_t, typename T>
__global__ void __launch_bounds__(T::THREADS)
    grad_weight_tensor_core_kernel(const scalar_t* __restrict__ grad_output,
                                   const scalar_t* __restrict__ packed_input,
                                   scalar_t* __restrict__ grad_weight,
                                   float* __restrict__ bias_sums, ConvShape<index_t> s,
                                   index_t batch_padded) {
  using element_t = typename T::element_t;
  constexpr bool kTF32 = std::is_same_v<scalar_t, float>;
  static_assert(sizeof(scalar_t) == sizeof(element_t), "staged elements hold scalar_t");
  static_assert(T::THREADS == T::LOCATIONS * T::OUT_CHANNELS * 2, "grad_output staging layout");
  const element_t* packed = reinterpret_cast<const element_t*>(packed_input);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const RowSegment<index_t> segment = row_segment<T::LOCATIONS>(s.out_w);
  const index_t out_i = segment.row, first_j = segment.first_column;
  const index_t out_j = first_j + warp;
  const index_t strip_left = first_j * s.stride_w - s.pad_w;
  const index_t window_top = out_i * s.stride_h - s.pad_h;
  const index_t o_base = static_cast<index_t>(blockIdx.x) * T::OUT_CHANNELS;
  const index_t patch_size = s.in_channels * s.kernel_h * s.kernel_w;
  const bool has_location = out_j < s.out_w;
  const index_t location = out_i * s.out_w + out_j;

  // Shared memory: two pipeline buffers, the zero row, the grad_output slice.
  element_t* const buffers = reinterpret_cast<element_t*>(dynamic_shared_memory());
  const index_t buffer_elements = tensor_core_buffer_bytes<T>(s) / sizeof(element_t);
  uint16_t* const zero_row = reinterpret_cast<uint16_t*>(buffers + 2 * buffer_elements);
  element_t* const grads = reinterpret_cast<element_t*>(zero_row + 8);
  const index_t grad_row = tensor_core_grad_row<T>(s);
  const index_t table_at = tensor_core_stage_rows<T>(s) * tensor_core_strip_width<T>(s) *
                           T::COLUMN;
  if (threadIdx.x < 8) zero_row[threadIdx.x] = 0;
  {
    // grads[location][o][n] = gy[n, o_base + o, out_i, first_j + location], zero past the
    // layer's edges. Neighbouring threads take neighbouring locations (contiguous in an NCHW
    // grad_output).
    const int slot = threadIdx.x % T::LOCATIONS;
    const int o = (threadIdx.x / T::LOCATIONS) % T::OUT_CHANNELS;
    const int first_n = threadIdx.x / (T::LOCATIONS * T::OUT_CHANNELS);
    const bool valid = first_j + slot < s.out_w && o_base + o < s.out_channels;
    const element_t* source = reinterpret_cast<const element_t*>(grad_output) +
                              (valid ? grad_output_offset(s, index_t(0), o_base + o, out_i,
                                                          first_j + slot)
                                     : 0);
    element_t* row = grads + (slot * T::OUT_CHANNELS + o) * grad_row;
    for (index_t n = first_n; n < grad_row - 8; n += 2)
      row[n] = valid && n < s.batch ? source[n * s.grad_stride_n] : element_t(0);
  }
  if (bias_sums != nullptr) {
    // The bias gradient comes with the staged slice, saving a pass over grad_output:
    // bias_sums[o, location] = sum over the batch of gy[n, o, location], in float, in order.
    __syncthreads();
    if (threadIdx.x < T::LOCATIONS * T::OUT_CHANNELS) {
      const int slot = threadIdx.x % T::LOCATIONS, o = threadIdx.x / T::LOCATIONS;
      if (first_j + slot < s.out_w && o_base + o < s.out_channels) {
        const element_t* row = grads + (slot * T::OUT_CHANNELS + o) * grad_row;
        float sum = 0.f;
        for (index_t n = 0; n < s.batch; ++n) sum += float_of<scalar_t>(row[n]);
        bias_sums[(o_base + o) * s.out_h * s.out_w + out_i * s.out_w + first_j + slot] = sum;
      }
    }
  }

  // This lane's ldmatrix rows. A (channels x samples): matrix lane / 8 is channels 0-7 or 8-15
  // by samples 0-7 or 8-15. B (samples x patch columns), two 8-column tiles per ldmatrix:
  // matrix lane / 8 is (tile 0, samples 0-7), (tile 0, 8-15), (tile 1, 0-7), (tile 1, 8-15).
  const element_t* a_row = grads + (warp * T::OUT_CHANNELS + (lane & 7) +
                                    ((lane >> 3) & 1) * 8) * grad_row + (lane >> 4) * 8;
  const int b_column = (lane & 7) + (lane >> 4) * 8;
  const int b_samples = ((lane >> 3) & 1) * 8;
  const index_t location_column = static_cast<index_t>(warp) * s.stride_w * T::COLUMN;

  const index_t batch_chunks = (s.batch + T::BATCH - 1) / T::BATCH;
  const index_t k_stages = (patch_size + T::STAGE_K - 1) / T::STAGE_K;
  const index_t stages = k_stages * batch_chunks;  // (k stage, batch chunk), chunk fastest
  const StagingWalk<T, index_t> walk(s);
  TableWalk<T, index_t> table_walk(s);
  stage_input<T>(buffers, packed, s, walk, table_walk, index_t(0), patch_size, window_top,
                 strip_left, index_t(0), batch_padded);
  commit_async_copies();

  float acc[T::PATCH_TILES][4];
  for (index_t stage = 0; stage < stages; ++stage) {
    const index_t k_stage = stage / batch_chunks, chunk = stage - k_stage * batch_chunks;
    const index_t k_base = k_stage * T::STAGE_K;
    if (chunk == 0) {
#pragma unroll
      for (int tile = 0; tile < T::PATCH_TILES; ++tile)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[tile][i] = 0.f;
    }
    // The next stage's copies fly while this one computes (see the forward kernel).
    if (stage + 1 < stages) {
      const index_t next_chunk = chunk + 1 < batch_chunks ? chunk + 1 : 0;
      if (next_chunk == 0) table_walk.advance(s);
      stage_input<T>(buffers + ((stage + 1) % 2) * buffer_elements, packed, s, walk, table_walk,
                     next_chunk == 0 ? k_base + T::STAGE_K : k_base, patch_size, window_top,
                     strip_left, next_chunk * T::BATCH, batch_padded);
    }
    commit_async_copies();
    wait_async_copies<1>();
    __syncthreads();

    if (has_location) {
      const element_t* buffer = buffers + (stage % 2) * buffer_elements;
      const int* table = reinterpret_cast<const int*>(buffer + table_at);
      if constexpr (kTF32) {
        // A = (A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]) of (channels x 8 samples),
        // B = (B[t][g], B[t+4][g]) of (8 samples x patch columns); zeros past K.
        const int g = lane / 4, t = lane % 4;
        const element_t* channel_rows = grads + warp * T::OUT_CHANNELS * grad_row;
#pragma unroll
        for (int step = 0; step < T::BATCH / 8; ++step) {
          const index_t samples = chunk * T::BATCH + step * 8;
          if (samples >= s.batch) break;
          uint32_t a[4];
#pragma unroll
          for (int i = 0; i < 4; ++i)
            a[i] = to_tf32(channel_rows[(g + (i & 1) * 8) * grad_row + samples + t + (i >> 1) * 4]);
#pragma unroll
          for (int tile = 0; tile < T::PATCH_TILES; ++tile) {
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
          const index_t samples = chunk * T::BATCH + step * 16;
          if (samples >= s.batch) break;
          uint32_t a[4];
          load_matrix_x4<false>(a, a_row + samples);
#pragma unroll
          for (int pair = 0; pair < T::PATCH_TILES / 2; ++pair) {
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
      if (chunk + 1 == batch_chunks) {
        // acc[tile][i]: output channel g (+8 for i >= 2), patch column tile*8 + 2t + (i % 2).
        const int g = lane / 4, t = lane % 4;
        scalar_t* location_grads = grad_weight + location * s.out_channels * patch_size;
#pragma unroll
        for (int tile = 0; tile < T::PATCH_TILES; ++tile)
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const index_t o = o_base + g + half * 8, k = k_base + tile * 8 + 2 * t;
            if (o >= s.out_channels || k >= patch_size) continue;
            scalar_t* target = location_grads + o * patch_size + k;
            const scalar_t low = static_cast<scalar_t>(acc[tile][2 * half]);
            const scalar_t high = static_cast<scalar_t>(acc[tile][2 * half + 1]);
            if constexpr (EVEN_K && !kTF32) {
              store_pair(target, bits_of(low) | (uint32_t(bits_of(high)) << 16));
            } else {
              target[0] = low;
              if (k + 1 < patch_size) target[1] = high;
            }
          }
      }
    }
    __syncthreads();
  }
}

}  // namespace kernels
}  // namespace lc_cuda
