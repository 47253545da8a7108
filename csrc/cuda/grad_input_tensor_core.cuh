// grad_input on tensor cores, for float16 and bfloat16 (float accumulation) and for float32 on
// TF32, as a gather, for the whole operator family:
//
//   gin[n, c, z, y, x] = sum over the (location (k, i, j), tap (a, p, q)) pairs whose window
//                        reads (z, y, x), and over the o of c's group, of
//                        gy[n, o, k, i, j] * w[r(k, i, j), o, c - group's first, a, p, q]
//
// A CTA covers PIXELS neighbouring input columns of one input row (z, y) (a warp each), BATCH
// samples and CHANNELS input channels of one group; each warp accumulates its pixel's (samples x
// channels) block. The reduction walks the kernel rows (a, p) that reach row (z, y) (one output
// row (k, i) each) and the group's output channels in chunks of 16; per ((a, p), chunk) the CTA
// stages
//   - grad_output for the locations of row (k, i) that the segment's pixels read from, samples
//     innermost, so that ldmatrix.trans gives A fragments (samples x output channels);
//   - the filter taps (a, p, q) its pixels meet, from each location's region, transposed to
//     (input channel, output channel) with
//     output channels innermost, so that ldmatrix gives B fragments (output x input channels).
//     The weight's tap is its innermost dimension, so the loads run along q (contiguous in
//     global memory) and each lands at the pixel that tap reaches.
// Each gradient element is summed by one thread in a fixed order: no atomics, bitwise-identical
// results from run to run.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/conv_shape.cuh"
#include "cuda/tensor_core.cuh"

namespace lc_cuda {
namespace kernels {

// element_t: uint16_t for float16/bfloat16 (m16n8k16), float for float32 on TF32 (m16n8k8).
template <typename element_t_>
struct TensorCoreGradInputTilesOf {
  using element_t = element_t_;
  static constexpr int PIXELS = 8;  // neighbouring input columns per CTA, one warp each
  static constexpr int THREADS = 32 * PIXELS;
  static constexpr int BATCH = 64;                // samples per CTA
  static constexpr int BATCH_TILES = BATCH / 16;  // 16-row MMA tiles per warp
  static constexpr int CHANNELS = 16;             // input channels per CTA: two 8-wide tiles
  static constexpr int OUT_CHANNELS = 16;         // output channels per stage: the MMA's k
  // Staged rows are padded by 8 elements so that the eight 16-byte rows one ldmatrix phase
  // reads fall in distinct bank groups: grad_output rows (an output channel's samples) are then
  // 144 bytes apart, filter rows (an input channel's output channels) 48 bytes apart.
  static constexpr int GRAD_ROW = BATCH + 8;
  static constexpr int FILTER_ROW = OUT_CHANNELS + 8;
  // One location's grad_output block, OUT_CHANNELS rows, plus 8 elements: the stagers write
  // neighbouring locations from neighbouring lanes, 4 banks apart instead of in one bank.
  static constexpr int SLOT = OUT_CHANNELS * GRAD_ROW + 8;
  // One (pixel, tap) block of filters, CHANNELS rows, plus 8 elements: consecutive taps, which
  // the stagers write from neighbouring lanes, then start 4 banks apart instead of in one bank.
  static constexpr int TAP = CHANNELS * FILTER_ROW + 8;
};
using TensorCoreGradInputTiles = TensorCoreGradInputTilesOf<uint16_t>;
using TensorCoreTF32GradInputTiles = TensorCoreGradInputTilesOf<float>;

// Locations of one output row that PIXELS neighbouring input columns can read from, at most.
template <typename T, typename index_t>
__host__ __device__ inline index_t tensor_core_grad_input_slots(const ConvShape<index_t>& s) {
  return ((T::PIXELS - 1) + (s.kernel_w - 1) * s.dilation_w) / s.stride_w + 1;
}

// Staged grad_output, then staged filters.
template <typename T, typename index_t>
int64_t tensor_core_grad_input_shared_bytes(const ConvShape<index_t>& s) {
  return (int64_t(tensor_core_grad_input_slots<T>(s)) * T::SLOT +
          int64_t(T::PIXELS) * s.kernel_w * T::TAP) *
         int64_t(sizeof(typename T::element_t));
}

// Grid: x = batch tiles (fastest: the CTAs reading the same filters run together), y = (input
// row (z, y), group of PIXELS columns), z = input-channel tiles of each group.
template <typename T, typename index_t>
dim3 tensor_core_grad_input_grid(const ConvShape<index_t>& s) {
  return dim3{grid_blocks(s.batch, T::BATCH),
              row_segment_blocks<T::PIXELS>(s.in_d * s.in_h, s.in_w),
              channel_tile_blocks(s.groups, s.group_in_channels, T::CHANNELS)};
}

// Division rounding towards minus infinity, for a possibly negative numerator.
template <typename index_t>
__device__ inline index_t floor_div(index_t a, index_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// ---------------------------------------------------------------------------------------------
// The kernel. grad_output has any strides (s.grad_stride_*); weight and grad_input are
// contiguous.
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool BFLOAT16, typename index_t, typename T>
__global__ void __launch_bounds__(T::THREADS)
    grad_input_tensor_core_kernel(const scalar_t* __restrict__ grad_output,
                                  const scalar_t* __restrict__ weight,
                                  scalar_t* __restrict__ grad_input, ConvShape<index_t> s) {
  using element_t = typename T::element_t;
  constexpr bool kTF32 = std::is_same_v<scalar_t, float>;
  static_assert(sizeof(scalar_t) == sizeof(element_t), "staged elements hold scalar_t");
  const element_t* grads_in = reinterpret_cast<const element_t*>(grad_output);
  const element_t* filters_in = reinterpret_cast<const element_t*>(weight);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const RowSegment<index_t> segment = row_segment<T::PIXELS>(s.in_w);
  const index_t z = segment.row / s.in_h, y = segment.row - z * s.in_h;
  const index_t first_x = segment.first_column;
  const index_t x = first_x + warp;
  const index_t n_base = static_cast<index_t>(blockIdx.x) * T::BATCH;
  const ChannelTile<index_t> inputs =
      channel_tile<T::CHANNELS>(static_cast<index_t>(blockIdx.z), s.group_in_channels);
  // The tile's first input channel within its group, and the group's output channels.
  const index_t group_channel = inputs.first - inputs.group * s.group_in_channels;
  const index_t o_first = inputs.group * s.group_out_channels;
  const index_t o_end = o_first + s.group_out_channels;
  const index_t taps = s.taps();

  // The output columns the segment reads from: j*stride_w - pad_w + q*dilation_w lands in
  // [first_x, first_x + PIXELS) for some tap q.
  const index_t first_j_unclamped =
      -floor_div(-(first_x + s.pad_w - (s.kernel_w - 1) * s.dilation_w), s.stride_w);
  const index_t first_j = first_j_unclamped > 0 ? first_j_unclamped : 0;
  const index_t last_j_unclamped = floor_div(first_x + T::PIXELS - 1 + s.pad_w, s.stride_w);
  const index_t last_j = last_j_unclamped < s.out_w ? last_j_unclamped : s.out_w - 1;
  const index_t slots = last_j - first_j + 1;
  // The region column of output column first_j, and where first_j lies in it (its phase): the
  // filter stagers walk the slots' columns and advance both without dividing.
  const index_t first_region_column = s.region_along(first_j, s.share_w);
  const index_t first_phase =
      s.share_tile ? first_region_column : first_j - first_region_column * s.share_w;

  element_t* const grads = reinterpret_cast<element_t*>(dynamic_shared_memory());
  element_t* const filters = grads + tensor_core_grad_input_slots<T>(s) * T::SLOT;

  // This lane's ldmatrix rows. A (samples x output channels), transposed from rows of one
  // output channel's samples: matrix lane / 8 is (channels 0-7 or 8-15) x (samples 0-7 or
  // 8-15). B (output x input channels) from rows of one input channel's output channels:
  // matrix lane / 8 is (input channels 0-7, outputs 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15).
  const int a_channel = (lane & 7) + ((lane >> 4) << 3);
  const int a_samples = ((lane >> 3) & 1) * 8;
  const int b_channel = (lane & 7) + ((lane >> 4) << 3);
  const int b_outputs = ((lane >> 3) & 1) * 8;

  // The grad_output stagers walk elements e = row * slots + slot, row = (n, o), from e = thread
  // in steps of THREADS, advancing (row, slot) without dividing.
  const int walk_slots = slots > 0 ? static_cast<int>(slots) : 1;
  const int grad_row_step = T::THREADS / walk_slots;
  const int grad_slot_step = T::THREADS - grad_row_step * walk_slots;
  const int grad_first_row = static_cast<int>(threadIdx.x) / walk_slots;
  const int grad_first_slot = static_cast<int>(threadIdx.x) - grad_first_row * walk_slots;
  // The filter stagers: thread = (row, q) with q fixed per thread, rows = (o, c) of one slot.
  const int filter_rows_per_pass = T::THREADS / static_cast<int>(s.kernel_w);
  const int my_q = static_cast<int>(threadIdx.x % s.kernel_w);
  const int my_first_row = static_cast<int>(threadIdx.x / s.kernel_w);

  float acc[T::BATCH_TILES][2][4];
#pragma unroll
  for (int m = 0; m < T::BATCH_TILES; ++m)
#pragma unroll
    for (int tile = 0; tile < 2; ++tile)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[m][tile][i] = 0.f;

  for (index_t a = 0; a < s.kernel_d && slots > 0; ++a) {
    const index_t plane_numerator = z + s.pad_d - a * s.dilation_d;
    if (plane_numerator < 0 || plane_numerator % s.stride_d != 0) continue;
    const index_t out_z = plane_numerator / s.stride_d;
    if (out_z >= s.out_d) continue;
    for (index_t p = 0; p < s.kernel_h; ++p) {
      const index_t row_numerator = y + s.pad_h - p * s.dilation_h;
      if (row_numerator < 0 || row_numerator % s.stride_h != 0) continue;
      const index_t out_i = row_numerator / s.stride_h;
      if (out_i >= s.out_h) continue;
      // The flat region of (out_z, out_i, column region 0).
      const index_t region_row =
          (s.region_along(out_z, s.share_d) * s.regions_h + s.region_along(out_i, s.share_h)) *
          s.regions_w;
      const index_t kernel_row = a * s.kernel_h + p;
      for (index_t o_base = o_first; o_base < o_end; o_base += T::OUT_CHANNELS) {
        // grads[slot][o][n] = gy[n_base + n, o_base + o, out_z, out_i, first_j + slot];
        // neighbouring threads take neighbouring locations (contiguous in an NCDHW grad_output).
        {
          int row = grad_first_row, slot = grad_first_slot;
          while (row < T::OUT_CHANNELS * T::BATCH) {
            const int o = row % T::OUT_CHANNELS, n = row / T::OUT_CHANNELS;
            const bool valid = n_base + n < s.batch && o_base + o < o_end;
            grads[slot * T::SLOT + o * T::GRAD_ROW + n] =
                valid ? grads_in[grad_output_offset(s, n_base + n, o_base + o, out_z, out_i,
                                                    first_j + slot)]
                      : element_t(0);
            slot += grad_slot_step, row += grad_row_step;
            if (slot >= walk_slots) slot -= walk_slots, ++row;
          }
        }
        // filters[pixel][q][c][o] = w[r(out_z, out_i, j), o_base + o, group_channel + c, a, p, q]
        // for the pixel first_x + pixel that tap q of location j reads; pairs that reach no pixel
        // of the segment are skipped (and never read).
        if (my_first_row < filter_rows_per_pass) {
          index_t region_column = first_region_column, phase = first_phase;
          for (index_t slot = 0; slot < slots; ++slot) {
            const index_t j = first_j + slot;
            const index_t pixel = j * s.stride_w - s.pad_w + my_q * s.dilation_w - first_x;
            if (pixel >= 0 && pixel < T::PIXELS) {
              const element_t* tap_filters =
                  filters_in +
                  (((region_row + region_column) * s.out_channels + o_base) *
                       s.group_in_channels +
                   group_channel) *
                      taps +
                  kernel_row * s.kernel_w + my_q;
              element_t* tap_block = filters + (pixel * s.kernel_w + my_q) * T::TAP;
              for (int row = my_first_row; row < T::OUT_CHANNELS * T::CHANNELS;
                   row += filter_rows_per_pass) {
                const int c = row % T::CHANNELS, o = row / T::CHANNELS;
                const bool valid = o_base + o < o_end && inputs.first + c < inputs.end;
                tap_block[c * T::FILTER_ROW + o] =
                    valid ? tap_filters[(o * s.group_in_channels + c) * taps] : element_t(0);
              }
            }
            // Column j + 1's region: a period's next, or the block's, the next block at its end.
            if (++phase == s.share_w) phase = 0, region_column += s.share_tile ? 0 : 1;
            if (s.share_tile) region_column = phase;
          }
        }
        __syncthreads();

        if (x < s.in_w) {
          for (index_t q = 0; q < s.kernel_w; ++q) {
            const index_t column_numerator = x + s.pad_w - q * s.dilation_w;
            if (column_numerator < 0) break;  // it only decreases with q
            if (column_numerator % s.stride_w != 0) continue;
            const index_t j = column_numerator / s.stride_w;
            if (j >= s.out_w) continue;
            const element_t* grad_rows = grads + (j - first_j) * T::SLOT;
            const element_t* filter_block = filters + (warp * s.kernel_w + q) * T::TAP;
            if constexpr (kTF32) {
              // Two k8 steps over the chunk's 16 output channels. A = (A[g][t], A[g+8][t],
              // A[g][t+4], A[g+8][t+4]) of (samples x output channels), B = (B[t][g], B[t+4][g])
              // of (output x input channels), read as single floats and rounded to TF32.
              const int g = lane / 4, t = lane % 4;
#pragma unroll
              for (int k8 = 0; k8 < T::OUT_CHANNELS / 8; ++k8) {
                uint32_t b[2][2];
#pragma unroll
                for (int tile = 0; tile < 2; ++tile)
#pragma unroll
                  for (int half = 0; half < 2; ++half)
                    b[tile][half] = to_tf32(
                        filter_block[(tile * 8 + g) * T::FILTER_ROW + k8 * 8 + t + half * 4]);
#pragma unroll
                for (int m = 0; m < T::BATCH_TILES; ++m) {
                  uint32_t a[4];
#pragma unroll
                  for (int i = 0; i < 4; ++i)
                    a[i] = to_tf32(grad_rows[(k8 * 8 + t + (i >> 1) * 4) * T::GRAD_ROW + m * 16 +
                                             g + (i & 1) * 8]);
                  mma_16x8x8_tf32(acc[m][0], a, b[0]);
                  mma_16x8x8_tf32(acc[m][1], a, b[1]);
                }
              }
            } else {
              uint32_t b[4];
              load_matrix_x4<false>(b, filter_block + b_channel * T::FILTER_ROW + b_outputs);
              const uint32_t first_tile[2] = {b[0], b[1]}, second_tile[2] = {b[2], b[3]};
#pragma unroll
              for (int m = 0; m < T::BATCH_TILES; ++m) {
                uint32_t a[4];
                load_matrix_x4<true>(a, grad_rows + a_channel * T::GRAD_ROW + m * 16 + a_samples);
                mma_16x8x16<BFLOAT16>(acc[m][0], a, first_tile);
                mma_16x8x16<BFLOAT16>(acc[m][1], a, second_tile);
              }
            }
          }
        }
        __syncthreads();
      }
    }
  }

  if (x >= s.in_w) return;
  // acc[m][tile][i]: sample m*16 + g (+8 for i >= 2), input channel tile*8 + 2t + (i % 2).
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int m = 0; m < T::BATCH_TILES; ++m)
#pragma unroll
    for (int tile = 0; tile < 2; ++tile)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const index_t n = n_base + m * 16 + g + (i / 2) * 8;
        const index_t c = inputs.first + tile * 8 + 2 * t + (i % 2);
        if (n >= s.batch || c >= inputs.end) continue;
        grad_input[(((n * s.in_channels + c) * s.in_d + z) * s.in_h + y) * s.in_w + x] =
            static_cast<scalar_t>(acc[m][tile][i]);
      }
}

}  // namespace kernels
}  // namespace lc_cuda
