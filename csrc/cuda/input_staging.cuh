// What lc_cuda's tensor-core forward and grad_weight share: the input staged in shared memory as
// strips of kernel rows, for LOCATIONS neighbouring output columns of one output row and BATCH
// samples, stage_k patch columns at a time, from the input packed as (C_in, D, H, W, N8)
// (samples innermost, the batch padded with zeros to a multiple of 8). A kernel row is a
// (channel, depth tap, height tap) triple (c, a, p) of the CTA's group, and a patch column
// k = (c, a, p, q) lies in row k / KW at tap q, so the samples of a patch column are contiguous
// in shared memory, at an address only k and the location decide: in 16-bit types 8 samples are
// one 16-byte row, and ldmatrix can build a fragment of any 16 consecutive patch columns.
//
// How many patch columns a stage holds is the launch's choice (StripStaging::stage_k, at most
// STAGE_K): the staged rows grow as stage_k / KW, so a 1x1 kernel of many channels stages 64
// rows at 64 columns a stage, more shared memory than a CTA has in TF32. launch_policy.cuh
// picks the largest stage that fits (two CTAs per SM where it can).
#pragma once

#include <cstdint>

#include "cuda/conv_shape.cuh"
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
  static constexpr int STAGE_K = 64;  // patch columns per pipeline stage, at most
  // The fewest: one MMA k step (16 in 16-bit types, 8 in TF32).
  static constexpr int MIN_STAGE_K = sizeof(element_t) == 2 ? 16 : 8;
  static constexpr int PIECE = 16 / sizeof(element_t);  // samples per 16-byte copy
  // A staged input column holds BATCH samples plus 8 padding elements. 16-bit: ldmatrix reads
  // eight 16-byte rows per phase, here eight neighbouring taps of a kernel row (neighbouring
  // columns); at 144 bytes apart (an odd number of 16-byte units) they fall in eight distinct
  // bank groups. 32-bit: a fragment load reads 8 samples from each of 4 neighbouring taps; at
  // 72 words apart (8 banks on) they fall in four distinct groups of eight banks.
  static constexpr int COLUMN = BATCH + 8;
};

// A launch's staging: stage_k patch columns per stage (a multiple of MIN_STAGE_K, at most
// STAGE_K), and the batch the packed input holds (a multiple of 8).
template <typename index_t>
struct StripStaging {
  index_t stage_k, batch_padded;
};

// Staged input columns per kernel row: the LOCATIONS windows side by side.
template <typename T, typename index_t>
__host__ __device__ inline index_t tensor_core_strip_width(const ConvShape<index_t>& s) {
  return (T::LOCATIONS - 1) * s.stride_w + (s.kernel_w - 1) * s.dilation_w + 1;
}

// Kernel rows one stage may touch: stage_k consecutive patch columns span at most this many.
template <typename T, typename index_t>
__host__ __device__ inline index_t tensor_core_stage_rows(const ConvShape<index_t>& s,
                                                          index_t stage_k) {
  const index_t spanned = (stage_k - 1) / s.kernel_w + 2;
  const index_t total = s.group_in_channels * s.kernel_d * s.kernel_h;
  return spanned < total ? spanned : total;
}

// One pipeline buffer: the staged kernel rows, then a table of STAGE_K row offsets.
template <typename T, typename index_t>
__host__ __device__ inline int64_t tensor_core_buffer_bytes(const ConvShape<index_t>& s,
                                                            index_t stage_k) {
  const int64_t rows = tensor_core_stage_rows<T>(s, stage_k);
  return rows * tensor_core_strip_width<T>(s) * T::COLUMN * int64_t(sizeof(typename T::element_t)) +
         T::STAGE_K * 4;
}

// Where a CTA's strip starts: the offset of its group's first input channel in the packed input,
// and the padded-input position (front, top, left) of its first window's first tap.
template <typename index_t>
struct StripOrigin {
  index_t group_offset, front, top, left;
};

// The input plane a kernel row (c, a, p) reads: its offset in the packed input, and the row its
// tap p = 0 reads (top). Where the depth tap a falls in the padding, top lies so far above the
// input that every tap of the row does too: the stagers' height check then rejects the whole
// plane, and a 2D layer pays no depth check per copy.
template <typename index_t>
struct StripPlane {
  index_t offset, top;
};

template <typename index_t>
__device__ inline StripPlane<index_t> strip_plane(const ConvShape<index_t>& s,
                                                  const StripOrigin<index_t>& origin, index_t c,
                                                  index_t a) {
  const index_t z = origin.front + a * s.dilation_d;
  if (z < 0 || z >= s.in_d) return {0, -(s.kernel_h - 1) * s.dilation_h - 1};
  return {origin.group_offset + c * s.input_stride_c + z * s.input_stride_d, origin.top};
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

// Where patch column k_base + thread of each stage lies: kernel row ((c * KD + a) * KH + p) and
// tap q, advanced by stage_k columns per stage without dividing. Threads past stage_k carry one
// too, unused.
template <typename T, typename index_t>
struct TableWalk {
  index_t kernel_row, q, row_step, q_step;

  __device__ TableWalk(const ConvShape<index_t>& s, index_t stage_k) {
    kernel_row = threadIdx.x / s.kernel_w;
    q = threadIdx.x - kernel_row * s.kernel_w;
    row_step = stage_k / s.kernel_w;
    q_step = stage_k - row_step * s.kernel_w;
  }

  __device__ void advance(const ConvShape<index_t>& s) {
    kernel_row += row_step, q += q_step;
    if (q >= s.kernel_w) q -= s.kernel_w, ++kernel_row;
  }
};

// Stages the kernel rows that patch columns [k_base, k_base + stage_k) read, for all LOCATIONS
// windows and BATCH samples from n_base, and the table that maps each patch column to its row
// (offset in elements of the column for the CTA's first location; -1 past K).
template <typename T, typename index_t>
__device__ inline void stage_input(typename T::element_t* buffer,
                                   const typename T::element_t* __restrict__ packed,
                                   const ConvShape<index_t>& s, const StagingWalk<T, index_t>& walk,
                                   const TableWalk<T, index_t>& table_walk,
                                   const StripStaging<index_t>& staging, index_t k_base,
                                   index_t patch_size, const StripOrigin<index_t>& origin,
                                   index_t n_base) {
  constexpr int CHUNKS = StagingWalk<T, index_t>::CHUNKS;
  const index_t first_row = k_base / s.kernel_w;
  const index_t last_k = k_base + staging.stage_k <= patch_size ? k_base + staging.stage_k - 1
                                                                 : patch_size - 1;
  const index_t rows = last_k / s.kernel_w - first_row + 1;

  index_t row = walk.first_row, piece = walk.first_piece;
  // The thread's first kernel row as (c, a, p), then advanced without dividing.
  const index_t plane_row = (first_row + row) / s.kernel_h;
  index_t p = first_row + row - plane_row * s.kernel_h;
  index_t c = plane_row / s.kernel_d, a = plane_row - c * s.kernel_d;
  StripPlane<index_t> plane = strip_plane(s, origin, c, a);
  while (row < rows) {
    const int x = static_cast<int>(piece / CHUNKS), chunk = static_cast<int>(piece % CHUNKS);
    const index_t y = plane.top + p * s.dilation_h, column = origin.left + x;
    const index_t n = n_base + chunk * T::PIECE;
    const bool valid =
        y >= 0 && y < s.in_h && column >= 0 && column < s.in_w && n < staging.batch_padded;
    const typename T::element_t* source =
        valid ? packed + plane.offset + y * s.input_stride_h + column * s.input_stride_w + n
              : packed;
    copy_16_bytes_async(buffer + (row * walk.strip_width + x) * T::COLUMN + chunk * T::PIECE,
                        source, valid);
    index_t advance = walk.row_step;
    piece += walk.piece_step;
    if (piece >= walk.pieces_per_row) piece -= walk.pieces_per_row, ++advance;
    row += advance, p += advance;
    if (p >= s.kernel_h) {
      do {
        p -= s.kernel_h;
        if (++a == s.kernel_d) a = 0, ++c;
      } while (p >= s.kernel_h);
      plane = strip_plane(s, origin, c, a);
    }
  }
  if (static_cast<index_t>(threadIdx.x) < staging.stage_k) {
    int* table = reinterpret_cast<int*>(
        buffer + tensor_core_stage_rows<T>(s, staging.stage_k) * walk.strip_width * T::COLUMN);
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
