// The forward pass on tensor cores, for float16 and bfloat16 (float accumulation).
//
// Why a second forward kernel: a half-precision layer streams its weight (each weight element is
// used only N times), so its floor is the time to read the weight once, and the FFMA kernel,
// which converts every operand to float in shared memory, is far from it. This one:
//   - reads the weight straight from global memory into mma.sync B fragments, in its own layout
//     (a location's filters are a C_out x K row-major matrix, K = C_in*KH*KW, so a fragment's
//     pairs of neighbouring patch columns are one aligned 32-bit load), once per CTA;
//   - covers LOCATIONS neighbouring output columns of one output row per CTA, a warp each, so the
//     input columns their windows share are staged in shared memory once for all of them;
//   - takes the input packed as (C_in, H, W, N8): samples innermost, the batch padded to N8, a
//     multiple of 8, with zeros. A patch column k = (c, p, q) of 8 consecutive samples is then
//     one 16-byte row of shared memory, at an address only k and the location decide, which is
//     what ldmatrix.trans needs to build the A fragment of any 16 consecutive patch columns;
//   - stages kernel rows with cp.async, double-buffered, STAGE_K patch columns at a time.
// Each output element is summed by one thread in a fixed order: bitwise-identical results from
// run to run.
#pragma once

#include <cstdint>

#include "cuda/local_conv2d_kernels.cuh"
#include "cuda/tensor_core.cuh"

namespace lc_cuda {
namespace kernels {

template <int OUT_TILES_>
struct TensorCoreForwardTiles {
  static constexpr int LOCATIONS = 8;  // neighbouring output columns per CTA, one warp each
  static constexpr int THREADS = 32 * LOCATIONS;
  static constexpr int BATCH = 64;  // samples per CTA
  static constexpr int BATCH_TILES = BATCH / 16;  // 16-row MMA tiles per warp
  static constexpr int OUT_TILES = OUT_TILES_;    // 8-column MMA tiles per warp
  static constexpr int OUT_CHANNELS = 8 * OUT_TILES;
  static constexpr int STAGE_K = 64;  // patch columns per pipeline stage: four k16 steps
  static constexpr int STEPS = STAGE_K / 16;
  // A staged input column holds BATCH samples plus 8 padding elements. ldmatrix reads eight
  // 16-byte rows per phase, here eight neighbouring taps of a kernel row (neighbouring columns);
  // at 144 bytes apart (an odd number of 16-byte units) they fall in eight distinct bank groups.
  static constexpr int COLUMN = BATCH + 8;
};

// Staged input columns per kernel row: the LOCATIONS windows side by side.
template <typename T, typename index_t>
__host__ __device__ inline index_t tensor_core_strip_width(const ConvShape<index_t>& s) {
  return (T::LOCATIONS - 1) * s.stride_w + (s.kernel_w - 1) * s.dilation_w + 1;
}

// Kernel rows one stage may touch: STAGE_K consecutive patch columns span at most this many.
template <typename T, typename index_t>
__host__ __device__ inline index_t tensor_core_stage_rows(const ConvShape<index_t>& s) {
  const index_t spanned = (T::STAGE_K - 1) / s.kernel_w + 2, total = s.in_channels * s.kernel_h;
  return spanned < total ? spanned : total;
}

// One pipeline buffer: the staged kernel rows, then a table of STAGE_K row offsets.
template <typename T, typename index_t>
__host__ __device__ inline int64_t tensor_core_buffer_bytes(const ConvShape<index_t>& s) {
  const int64_t rows = tensor_core_stage_rows<T>(s);
  return rows * tensor_core_strip_width<T>(s) * T::COLUMN * 2 + T::STAGE_K * 4;
}

// Two buffers and one 16-byte row of zeros, which stands in for patch columns past K.
template <typename T, typename index_t>
int64_t tensor_core_forward_shared_bytes(const ConvShape<index_t>& s) {
  return 2 * tensor_core_buffer_bytes<T>(s) + 16;
}

// Grid: x = batch tiles (fastest, so that the CTAs reading the same weights run together and
// the second finds them in L2), y = (output row, group of LOCATIONS columns), z = C_out tiles.
template <typename T, typename index_t>
dim3 tensor_core_forward_grid(const ConvShape<index_t>& s) {
  const int64_t column_groups = (s.out_w + T::LOCATIONS - 1) / T::LOCATIONS;
  return dim3{grid_blocks(s.batch, T::BATCH), static_cast<unsigned int>(s.out_h * column_groups),
              grid_blocks(s.out_channels, T::OUT_CHANNELS)};
}

// Patch columns k and k+1 of one location's filter row for output channel o, as the B fragment
// wants them (k in the low half), or zeros past K. EVEN_K: K is even and the weight 4-byte
// aligned, so the pair is one aligned 32-bit load.
template <bool EVEN_K, typename index_t>
__device__ inline uint32_t filter_pair(const uint16_t* __restrict__ filter_row, index_t k,
                                       index_t patch_size) {
  if (k >= patch_size) return 0;
  if (EVEN_K) return load_pair(filter_row + k);
  const uint32_t high = k + 1 < patch_size ? filter_row[k + 1] : 0;
  return filter_row[k] | (high << 16);
}

// The B fragments of one stage: for each k16 step and 8-wide output tile, patch columns
// (k + 2t, k + 2t + 1) and (k + 2t + 8, k + 2t + 9) of output channel o_base + 8*tile + g.
template <typename T, bool EVEN_K, typename index_t>
__device__ inline void load_stage_filters(uint32_t (&b)[T::STEPS][T::OUT_TILES][2],
                                          const uint16_t* __restrict__ location_filters,
                                          index_t o_base, index_t k_base,
                                          const ConvShape<index_t>& s, index_t patch_size) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int tile = 0; tile < T::OUT_TILES; ++tile) {
    const index_t o = o_base + tile * 8 + g;
    const bool valid = o < s.out_channels;
    const uint16_t* row = location_filters + (valid ? o : 0) * patch_size;
#pragma unroll
    for (int step = 0; step < T::STEPS; ++step) {
      const index_t k = k_base + step * 16 + 2 * t;
      b[step][tile][0] = valid ? filter_pair<EVEN_K>(row, k, patch_size) : 0;
      b[step][tile][1] = valid ? filter_pair<EVEN_K>(row, k + 8, patch_size) : 0;
    }
  }
}

// A thread's part in staging the input: 16-byte pieces e = row * pieces_per_row + piece for
// e = thread, thread + THREADS, ... The walk advances (row, piece) by fixed steps instead of
// dividing e, since integer division would cost more instructions than the copies themselves.
template <typename T, typename index_t>
struct StagingWalk {
  static constexpr int CHUNKS = T::BATCH / 8;  // 16-byte pieces of a staged column
  index_t strip_width, pieces_per_row, first_row, first_piece, row_step, piece_step;

  __device__ StagingWalk(const ConvShape<index_t>& s) {
    strip_width = tensor_core_strip_width<T>(s);
    pieces_per_row = strip_width * CHUNKS;
    first_row = threadIdx.x / pieces_per_row;
    first_piece = threadIdx.x - first_row * pieces_per_row;
    row_step = T::THREADS / pieces_per_row;
    piece_step = T::THREADS - row_step * pieces_per_row;
  }
};

// Where patch column k_base + thread of each stage lies: kernel row (c * KH + p) and tap q,
// advanced by STAGE_K columns per stage without dividing. Threads past STAGE_K carry one too.
template <typename T, typename index_t>
struct TableWalk {
  index_t kernel_row, q, row_step, q_step;

  __device__ TableWalk(const ConvShape<index_t>& s) {
    kernel_row = threadIdx.x / s.kernel_w;
    q = threadIdx.x - kernel_row * s.kernel_w;
    row_step = T::STAGE_K / s.kernel_w;
    q_step = T::STAGE_K - row_step * s.kernel_w;
  }

  __device__ void advance(const ConvShape<index_t>& s) {
    kernel_row += row_step, q += q_step;
    if (q >= s.kernel_w) q -= s.kernel_w, ++kernel_row;
  }
};

// Stages the kernel rows that patch columns [k_base, k_base + STAGE_K) read, for all
// LOCATIONS windows and BATCH samples, and the table that maps each patch column to its row
// (offset in elements of the column for the CTA's first location; -1 past K).
template <typename T, typename index_t>
__device__ inline void stage_input(uint16_t* buffer, const uint16_t* __restrict__ packed,
                                   const ConvShape<index_t>& s, const StagingWalk<T, index_t>& walk,
                                   const TableWalk<T, index_t>& table_walk, index_t k_base,
                                   index_t patch_size, index_t window_top, index_t strip_left,
                                   index_t n_base, index_t batch_padded) {
  constexpr int CHUNKS = StagingWalk<T, index_t>::CHUNKS;
  const index_t first_row = k_base / s.kernel_w;
  const index_t last_k = k_base + T::STAGE_K <= patch_size ? k_base + T::STAGE_K - 1
                                                            : patch_size - 1;
  const index_t rows = last_k / s.kernel_w - first_row + 1;

  index_t row = walk.first_row, piece = walk.first_piece;
  index_t c = (first_row + row) / s.kernel_h, p = first_row + row - c * s.kernel_h;
  while (row < rows) {
    const int x = static_cast<int>(piece / CHUNKS), chunk = static_cast<int>(piece % CHUNKS);
    const index_t y = window_top + p * s.dilation_h, column = strip_left + x;
    const index_t n = n_base + chunk * 8;
    const bool valid = y >= 0 && y < s.in_h && column >= 0 && column < s.in_w && n < batch_padded;
    const uint16_t* source =
        valid ? packed + c * s.input_stride_c + y * s.input_stride_h + column * s.input_stride_w + n
              : packed;
    copy_16_bytes_async(buffer + (row * walk.strip_width + x) * T::COLUMN + chunk * 8, source,
                        valid);
    index_t advance = walk.row_step;
    piece += walk.piece_step;
    if (piece >= walk.pieces_per_row) piece -= walk.pieces_per_row, ++advance;
    row += advance, p += advance;
    while (p >= s.kernel_h) p -= s.kernel_h, ++c;
  }
  if (static_cast<int>(threadIdx.x) < T::STAGE_K) {
    int* table = reinterpret_cast<int*>(buffer + tensor_core_stage_rows<T>(s) * walk.strip_width *
                                                     T::COLUMN);
    table[threadIdx.x] =
        k_base + threadIdx.x < patch_size
            ? static_cast<int>(((table_walk.kernel_row - first_row) * walk.strip_width +
                                table_walk.q * s.dilation_w) *
                               T::COLUMN)
            : -1;
  }
}

// ---------------------------------------------------------------------------------------------
// The kernel. packed: the input as (C_in, H, W, N8), described by s's input strides (n: 1,
// c, h, w: the packed strides; w a multiple of 8) and 16-byte aligned. weight, bias and output
// as in forward_kernel.
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool BFLOAT16, bool EVEN_K, typename index_t, typename T>
__global__ void __launch_bounds__(T::THREADS)
    forward_tensor_core_kernel(const scalar_t* __restrict__ packed_input,
                               const scalar_t* __restrict__ weight,
                               const scalar_t* __restrict__ bias, bool shared_bias,
                               scalar_t* __restrict__ output, ConvShape<index_t> s,
                               index_t batch_padded) {
  static_assert(sizeof(scalar_t) == 2, "tensor-core forward is for float16 and bfloat16");
  const uint16_t* packed = reinterpret_cast<const uint16_t*>(packed_input);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const index_t column_groups = (s.out_w + T::LOCATIONS - 1) / T::LOCATIONS;
  const index_t out_i = blockIdx.y / column_groups;
  const index_t out_j = (blockIdx.y - out_i * column_groups) * T::LOCATIONS + warp;
  const index_t strip_left = (out_j - warp) * s.stride_w - s.pad_w;
  const index_t n_base = static_cast<index_t>(blockIdx.x) * T::BATCH;
  const index_t o_base = static_cast<index_t>(blockIdx.z) * T::OUT_CHANNELS;
  const index_t locations = s.out_h * s.out_w;
  const index_t location = out_i * s.out_w + out_j;
  const index_t patch_size = s.in_channels * s.kernel_h * s.kernel_w;
  // Warps past the row's end still stage and meet at every barrier; they skip the math.
  const bool has_location = out_j < s.out_w;
  const uint16_t* location_filters = reinterpret_cast<const uint16_t*>(weight) +
                                     (has_location ? location : 0) * s.out_channels * patch_size;

  // Two pipeline buffers (stage i uses buffer i % 2), then the zero row.
  uint16_t* const buffers = reinterpret_cast<uint16_t*>(dynamic_shared_memory());
  const index_t buffer_elements = tensor_core_buffer_bytes<T>(s) / 2;
  uint16_t* const zero_row = buffers + 2 * buffer_elements;
  if (threadIdx.x < 8) zero_row[threadIdx.x] = 0;
  const index_t table_at = tensor_core_stage_rows<T>(s) * tensor_core_strip_width<T>(s) *
                           T::COLUMN;
  // ldmatrix.x4.trans row of this lane: matrix lane / 8 is (patch columns 0-7 or 8-15) x
  // (samples 0-7 or 8-15) of a 16 x 16 A tile; lane % 8 picks the patch column.
  const int lane_k = (lane & 7) + ((lane >> 4) << 3);
  const int lane_samples = ((lane >> 3) & 1) * 8;
  const index_t location_column = static_cast<index_t>(warp) * s.stride_w * T::COLUMN;

  float acc[T::BATCH_TILES][T::OUT_TILES][4];
#pragma unroll
  for (int m = 0; m < T::BATCH_TILES; ++m)
#pragma unroll
    for (int tile = 0; tile < T::OUT_TILES; ++tile)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[m][tile][i] = 0.f;

  const index_t stages = (patch_size + T::STAGE_K - 1) / T::STAGE_K;
  uint32_t b[T::STEPS][T::OUT_TILES][2];
  if (has_location)
    load_stage_filters<T, EVEN_K>(b, location_filters, o_base, index_t(0), s, patch_size);
  const index_t window_top = out_i * s.stride_h - s.pad_h;
  const StagingWalk<T, index_t> walk(s);
  TableWalk<T, index_t> table_walk(s);
  stage_input<T>(buffers, packed, s, walk, table_walk, index_t(0), patch_size, window_top,
                 strip_left, n_base, batch_padded);
  commit_async_copies();

  for (index_t stage = 0; stage < stages; ++stage) {
    const index_t k_base = stage * T::STAGE_K;
    uint16_t* buffer = buffers + (stage % 2) * buffer_elements;
    // The next stage's input copies fly while this one computes; its buffer was last read in
    // the previous iteration, which every thread has left (the barrier at its end).
    if (stage + 1 < stages) {
      table_walk.advance(s);
      stage_input<T>(buffers + ((stage + 1) % 2) * buffer_elements, packed, s, walk, table_walk,
                     k_base + T::STAGE_K, patch_size, window_top, strip_left, n_base,
                     batch_padded);
    }
    commit_async_copies();
    wait_async_copies<1>();
    __syncthreads();

    uint32_t next_b[T::STEPS][T::OUT_TILES][2];
    if (has_location) {
      if (stage + 1 < stages)
        load_stage_filters<T, EVEN_K>(next_b, location_filters, o_base, k_base + T::STAGE_K, s,
                                      patch_size);
      const int* table = reinterpret_cast<const int*>(buffer + table_at);
#pragma unroll
      for (int step = 0; step < T::STEPS; ++step) {
        if (k_base + step * 16 >= patch_size) break;
        const int offset = table[step * 16 + lane_k];
        const uint16_t* row =
            offset < 0 ? zero_row : buffer + offset + location_column + lane_samples;
#pragma unroll
        for (int m = 0; m < T::BATCH_TILES; ++m) {
          uint32_t a[4];
          // Past K every lane reads the zero row (no sample offset: it is 8 elements long).
          load_matrix_x4_transposed(a, offset < 0 ? row : row + m * 16);
#pragma unroll
          for (int tile = 0; tile < T::OUT_TILES; ++tile)
            mma_16x8x16<BFLOAT16>(acc[m][tile], a, b[step][tile]);
        }
      }
      if (stage + 1 < stages) {
#pragma unroll
        for (int step = 0; step < T::STEPS; ++step)
#pragma unroll
          for (int tile = 0; tile < T::OUT_TILES; ++tile)
            b[step][tile][0] = next_b[step][tile][0], b[step][tile][1] = next_b[step][tile][1];
      }
    }
    __syncthreads();
  }

  if (!has_location) return;
  // Accumulator fragment layout: acc[m][tile][i] is sample m*16 + g (+8 for i >= 2), output
  // channel tile*8 + 2t + (i % 2).
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int m = 0; m < T::BATCH_TILES; ++m)
#pragma unroll
    for (int tile = 0; tile < T::OUT_TILES; ++tile)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const index_t n = n_base + m * 16 + g + (i / 2) * 8;
        const index_t o = o_base + tile * 8 + 2 * t + (i % 2);
        if (n >= s.batch || o >= s.out_channels) continue;
        float value = acc[m][tile][i];
        if (bias != nullptr)
          value += static_cast<float>(bias[shared_bias ? o : o * locations + location]);
        output[(n * s.out_channels + o) * locations + location] = static_cast<scalar_t>(value);
      }
}

}  // namespace kernels
}  // namespace lc_cuda
