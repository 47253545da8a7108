// What lc_cuda's tensor-core kernels share: the input staged in shared memory as strips of
// kernel rows, for LOCATIONS neighbouring output columns of one output row and BATCH samples,
// STAGE_K patch columns at a time, from the input packed as (C_in, H, W, N8) (samples
// innermost, the batch padded with zeros to a multiple of 8). The samples of a patch column
// k = (c, p, q) are then contiguous in shared memory, at an address only k and the location
// decide: in 16-bit types 8 samples are one 16-byte row, so ldmatrix can build a fragment of any
// 16 consecutive patch columns.
#pragma once

#include <cstdint>

#include "cuda/local_conv2d_kernels.cuh"
#include "cuda/tensor_core.cuh"

namespace lc_cuda {
namespace kernels {

// element_t: uint16_t for float16 and bfloat16 (stored as bits), float for float32.
template <typename element_t_>
struct StripTiles {
  using element_t = element_t_;
  static constexpr int LOCATIONS = 8;  // neighbouring output columns per CTA, one warp each
  static constexpr int THREADS = 32 * LOCATIONS;
  static constexpr int BATCH = 64;    // samples per staged strip
  static constexpr int STAGE_K = 64;  // patch columns per pipeline stage
  static constexpr int PIECE = 16 / sizeof(element_t);  // samples per 16-byte copy
  // A staged input column holds BATCH samples plus 8 padding elements. 16-bit: ldmatrix reads
  // eight 16-byte rows per phase, here eight neighbouring taps of a kernel row (neighbouring
  // columns); at 144 bytes apart (an odd number of 16-byte units) they fall in eight distinct
  // bank groups. 32-bit: a fragment load reads 8 samples from each of 4 neighbouring taps; at
  // 72 words apart (8 banks on) they fall in four distinct groups of eight banks.
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
  return rows * tensor_core_strip_width<T>(s) * T::COLUMN * int64_t(sizeof(typename T::element_t)) +
         T::STAGE_K * 4;
}

// A thread's part in staging the input: 16-byte pieces e = row * pieces_per_row + piece for
// e = thread, thread + THREADS, ... The walk advances (row, piece) by fixed steps instead of
// dividing e, since integer division would cost more instructions than the copies themselves.
template <typename T, typename index_t>
struct StagingWalk {
  static constexpr int CHUNKS = T::BATCH / T::PIECE;  // 16-byte pieces of a staged column
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
__device__ inline void stage_input(typename T::element_t* buffer,
                                   const typename T::element_t* __restrict__ packed,
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
    const index_t n = n_base + chunk * T::PIECE;
    const bool valid = y >= 0 && y < s.in_h && column >= 0 && column < s.in_w && n < batch_padded;
    const typename T::element_t* source =
        valid ? packed + c * s.input_stride_c + y * s.input_stride_h + column * s.input_stride_w + n
              : packed;
    copy_16_bytes_async(buffer + (row * walk.strip_width + x) * T::COLUMN + chunk * T::PIECE, source,
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
        k_base + static_cast<index_t>(threadIdx.x) < patch_size
            ? static_cast<int>(((table_walk.kernel_row - first_row) * walk.strip_width +
                                table_walk.q * s.dilation_w) *
                               T::COLUMN)
            : -1;
  }
}

}  // namespace kernels
}  // namespace lc_cuda
