// lc_cuda's FFMA kernels: forward, grad_input and grad_weight of the whole operator family (1 to 3
// spatial dimensions, channel groups, filter banks per location or shared by regions), computed
// straight from the input (nothing is unfolded in global memory), for every dtype. The
// tensor-core kernels (float16 and bfloat16 on sm_80+, and float32 under TF32) are in
// forward_tensor_core.cuh, grad_input_tensor_core.cuh and grad_weight_tensor_core.cuh; what every
// kernel shares (ConvShape, regions, channel tiles, grids) is in conv_shape.cuh.
//
// The header includes no torch or Python header, so a standalone harness can build it. A kernel
// takes plain pointers and a ConvShape; scalar_t must convert to and from its accumulation
// type with static_cast (float, double, and c10's Half and BFloat16 do).
//
// All three are tiled GEMMs that stage both operands in shared memory, with register tiles of
// THREAD_M x THREAD_N per thread (ThreadTile). They differ in what the GEMM is:
//   forward      per output location l:  out[n, o]   = sum_k  patch_l[n, k] * w_r(l)[o, k]
//   grad_input   per input pixel:        gin[n, c]   = sum over the (location, tap) pairs that
//                                                       read the pixel, and o of c's group,
//                                                       of gy[n, o] * w_r(l)[o, c, tap]
//   grad_weight  per weight region r:    gw_r[o, k]  = sum over r's locations l, and n, of
//                                                       gy[n, o, l] * patch_l[n, k]
// with r(l) the region of location l and k running over the group's input channels. Each output
// element is produced by exactly one thread, with a fixed summation order: no atomics, and
// bitwise-identical results from run to run.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/conv_shape.cuh"

namespace lc_cuda {
namespace kernels {

// Reduced-precision types accumulate in float; double stays double.
template <typename scalar_t>
struct Accumulate {
  using type = float;
};
template <>
struct Accumulate<double> {
  using type = double;
};

// Tile sizes of one kernel instance: a BLOCK_M x BLOCK_N output tile per CTA, reduced in
// chunks of BLOCK_K, THREAD_M x THREAD_N outputs per thread.
template <int BLOCK_M_, int BLOCK_N_, int BLOCK_K_, int THREAD_M_, int THREAD_N_>
struct Tiles {
  static constexpr int BLOCK_M = BLOCK_M_, BLOCK_N = BLOCK_N_, BLOCK_K = BLOCK_K_;
  static constexpr int THREAD_M = THREAD_M_, THREAD_N = THREAD_N_;
  static constexpr int THREADS_M = BLOCK_M / THREAD_M, THREADS_N = BLOCK_N / THREAD_N;
  static constexpr int THREADS = THREADS_M * THREADS_N;
  // Shared-memory rows are 4 elements longer than the tile: the loaders write down a column
  // (16 neighbouring threads, 16 rows), and unpadded rows of 16, 32 or 64 elements would put
  // all 16 writes in one or two banks. Padded, they spread over 8; 4 keeps rows 16-byte aligned.
  static constexpr int ROW_M = BLOCK_M + 4, ROW_N = BLOCK_N + 4;
  static_assert(BLOCK_M % THREAD_M == 0 && BLOCK_N % THREAD_N == 0, "tiles must divide");
  static_assert(THREADS >= BLOCK_K && THREADS >= BLOCK_N, "tables are filled one per thread");
};

// THREAD consecutive elements of a shared-memory row, read as one vector: LDS.128 for four
// floats (two for four doubles) instead of four scalar loads.
template <typename acc_t, int THREAD>
struct alignas(16) Fragment {
  acc_t value[THREAD];
};

// A thread's share of a tile: THREAD_M consecutive rows from thread_m * THREAD_M, and THREAD_N
// consecutive columns from thread_n * THREAD_N. Each operand read is then one vector load, and
// neighbouring threads read neighbouring 16-byte pieces, which a warp serves at full rate.
template <typename T, typename acc_t>
struct ThreadTile {
  int thread_m, thread_n;
  acc_t acc[T::THREAD_M][T::THREAD_N];

  __device__ explicit ThreadTile(int thread) : thread_m(thread % T::THREADS_M),
                                               thread_n(thread / T::THREADS_M) {
#pragma unroll
    for (int i = 0; i < T::THREAD_M; ++i)
#pragma unroll
      for (int j = 0; j < T::THREAD_N; ++j) acc[i][j] = acc_t(0);
  }

  __device__ int row(int i) const { return thread_m * T::THREAD_M + i; }
  __device__ int col(int j) const { return thread_n * T::THREAD_N + j; }

  // acc += a^T b over one chunk, a: [BLOCK_K][ROW_M], b: [BLOCK_K][ROW_N] in shared memory,
  // once every thread has staged its part of them; and, before returning, waits until every
  // thread is done reading them, so that the next chunk may overwrite them.
  __device__ void multiply_staged(const acc_t (*a)[T::ROW_M], const acc_t (*b)[T::ROW_N]) {
    using FragmentM = Fragment<acc_t, T::THREAD_M>;
    using FragmentN = Fragment<acc_t, T::THREAD_N>;
    __syncthreads();
#pragma unroll
    for (int k = 0; k < T::BLOCK_K; ++k) {
      const FragmentM a_k = *reinterpret_cast<const FragmentM*>(&a[k][row(0)]);
      const FragmentN b_k = *reinterpret_cast<const FragmentN*>(&b[k][col(0)]);
#pragma unroll
      for (int i = 0; i < T::THREAD_M; ++i)
#pragma unroll
        for (int j = 0; j < T::THREAD_N; ++j) acc[i][j] += a_k.value[i] * b_k.value[j];
    }
    __syncthreads();
  }

  // write(row, col, value) for each of the thread's results, at its tile position offset by
  // row_base and col_base, that lies inside rows x cols.
  template <typename index_t, typename Write>
  __device__ void store(index_t row_base, index_t rows, index_t col_base, index_t cols,
                        Write write) const {
#pragma unroll
    for (int i = 0; i < T::THREAD_M; ++i) {
      const index_t r = row_base + row(i);
#pragma unroll
      for (int j = 0; j < T::THREAD_N; ++j) {
        const index_t c = col_base + col(j);
        if (r < rows && c < cols) write(r, c, acc[i][j]);
      }
    }
  }
};

// Where patch column k of a window reads: the offset of its (channel, depth) plane in the input,
// and its tap's (dy, dx) within the plane. Columns past the patch end, and columns whose depth
// tap falls in the padding, get dy = -1, which every bounds check rejects; so the depth costs
// the column table a division, not every element load a bounds check.
template <typename index_t>
struct PatchColumn {
  index_t plane_offset;
  int dy, dx;
};

// Output location (out_z, out_i, out_j), and the padded-input position (front, top, left) of
// its window's first tap. The forward and grad_weight must agree on it exactly.
template <typename index_t>
struct Window {
  index_t out_z, out_i, out_j, front, top, left;
};

template <typename index_t>
__device__ Window<index_t> window_of(index_t out_z, index_t out_i, index_t out_j,
                                     const ConvShape<index_t>& s) {
  return {out_z, out_i, out_j, out_z * s.stride_d - s.pad_d, out_i * s.stride_h - s.pad_h,
          out_j * s.stride_w - s.pad_w};
}

// The window of flat location (out_z * out_h + out_i) * out_w + out_j.
template <typename index_t>
__device__ Window<index_t> window_at(index_t location, const ConvShape<index_t>& s) {
  const index_t row = location / s.out_w, out_j = location - row * s.out_w;
  const index_t out_z = row / s.out_h, out_i = row - out_z * s.out_h;
  return window_of(out_z, out_i, out_j, s);
}

template <typename index_t>
__device__ PatchColumn<index_t> patch_column(index_t k, index_t patch_size,
                                             const ConvShape<index_t>& s,
                                             const Window<index_t>& window) {
  if (k >= patch_size) return {0, -1, 0};
  const index_t plane_taps = s.kernel_h * s.kernel_w;
  const index_t taps = s.kernel_d * plane_taps;
  const index_t channel = k / taps;
  const index_t tap = k - channel * taps;
  const index_t a = tap / plane_taps;
  const index_t plane_tap = tap - a * plane_taps;
  const index_t p = plane_tap / s.kernel_w;
  const index_t q = plane_tap - p * s.kernel_w;
  const index_t z = window.front + a * s.dilation_d;
  if (z < 0 || z >= s.in_d) return {0, -1, 0};
  return {channel * s.input_stride_c + z * s.input_stride_d, static_cast<int>(p * s.dilation_h),
          static_cast<int>(q * s.dilation_w)};
}

// The input element patch column `column` of `window` reads for sample n, or 0 in the padding.
// input points at the first channel of the window's group.
template <typename scalar_t, typename acc_t, typename index_t>
__device__ acc_t load_patch(const scalar_t* __restrict__ input, const ConvShape<index_t>& s,
                            index_t n, const Window<index_t>& window,
                            const PatchColumn<index_t>& column) {
  const index_t h = window.top + column.dy;
  const index_t w = window.left + column.dx;
  if (column.dy < 0 || n >= s.batch || h < 0 || h >= s.in_h || w < 0 || w >= s.in_w)
    return acc_t(0);
  return static_cast<acc_t>(input[n * s.input_stride_n + column.plane_offset +
                                  h * s.input_stride_h + w * s.input_stride_w]);
}

// ---------------------------------------------------------------------------------------------
// Forward. Grid: x = output location, y = batch tiles (grid-stride), z = C_out tiles of each
// group. GEMM rows are samples (M = batch), columns are the tile's output channels; the
// location's region gives the filters.
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, typename index_t, typename T>
__global__ void __launch_bounds__(T::THREADS)
    forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                   const scalar_t* __restrict__ bias, bool shared_bias,
                   scalar_t* __restrict__ output, ConvShape<index_t> s) {
  using acc_t = typename Accumulate<scalar_t>::type;
  alignas(16) __shared__ acc_t patches[T::BLOCK_K][T::ROW_M];
  alignas(16) __shared__ acc_t filters[T::BLOCK_K][T::ROW_N];
  __shared__ PatchColumn<index_t> columns[T::BLOCK_K];

  const int thread = threadIdx.x;
  const index_t location = blockIdx.x;
  const index_t locations = s.locations();
  const index_t patch_size = s.patch_size();
  const Window<index_t> window = window_at(location, s);
  const ChannelTile<index_t> outputs =
      channel_tile<T::BLOCK_N>(static_cast<index_t>(blockIdx.z), s.group_out_channels);
  const index_t region = s.region_of(window.out_z, window.out_i, window.out_j);
  const scalar_t* region_filters = weight + region * s.out_channels * patch_size;
  const scalar_t* group_input = input + outputs.group * s.group_in_channels * s.input_stride_c;

  for (index_t n_base = static_cast<index_t>(blockIdx.y) * T::BLOCK_M; n_base < s.batch;
       n_base += static_cast<index_t>(gridDim.y) * T::BLOCK_M) {
    ThreadTile<T, acc_t> tile(thread);
    for (index_t k_base = 0; k_base < patch_size; k_base += T::BLOCK_K) {
      if (thread < T::BLOCK_K)
        columns[thread] = patch_column<index_t>(k_base + thread, patch_size, s, window);
      __syncthreads();
      // k fastest: neighbouring threads read neighbouring taps, contiguous in w where dx = 1.
      for (int e = thread; e < T::BLOCK_K * T::BLOCK_M; e += T::THREADS) {
        const int kk = e % T::BLOCK_K, nn = e / T::BLOCK_K;
        patches[kk][nn] = load_patch<scalar_t, acc_t, index_t>(group_input, s, n_base + nn,
                                                              window, columns[kk]);
      }
      for (int e = thread; e < T::BLOCK_K * T::BLOCK_N; e += T::THREADS) {
        const int kk = e % T::BLOCK_K, oo = e / T::BLOCK_K;
        const index_t k = k_base + kk, o = outputs.first + oo;
        filters[kk][oo] = (k < patch_size && o < outputs.end)
                              ? static_cast<acc_t>(region_filters[o * patch_size + k])
                              : acc_t(0);
      }
      tile.multiply_staged(patches, filters);
    }
    tile.store(n_base, s.batch, outputs.first, outputs.end, [&](index_t n, index_t o, acc_t value) {
      if (bias != nullptr)
        value += static_cast<acc_t>(bias[shared_bias ? o : o * s.regions() + region]);
      output[(n * s.out_channels + o) * locations + location] = static_cast<scalar_t>(value);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// grad_input, as a gather. Grid: x = input pixel (d, h, w), y = batch tiles (grid-stride),
// z = C_in tiles of each group. The reduction runs over the kernel taps (a, p, q) whose window
// position ((d + pad_d - a*dilation_d) / stride_d, ...) is a whole output location, and over the
// group's output channels in chunks. Taps depend only on the pixel, so a CTA's threads never
// diverge on them.
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, typename index_t, typename T>
__global__ void __launch_bounds__(T::THREADS)
    grad_input_kernel(const scalar_t* __restrict__ grad_output,
                      const scalar_t* __restrict__ weight, scalar_t* __restrict__ grad_input,
                      ConvShape<index_t> s) {
  using acc_t = typename Accumulate<scalar_t>::type;
  alignas(16) __shared__ acc_t grads[T::BLOCK_K][T::ROW_M];
  alignas(16) __shared__ acc_t filters[T::BLOCK_K][T::ROW_N];

  const int thread = threadIdx.x;
  const index_t pixel = blockIdx.x;
  const index_t plane_pixel = pixel / s.in_w, w = pixel - plane_pixel * s.in_w;
  const index_t d = plane_pixel / s.in_h, h = plane_pixel - d * s.in_h;
  const index_t taps = s.taps();
  const index_t patch_size = s.patch_size();
  const ChannelTile<index_t> inputs =
      channel_tile<T::BLOCK_N>(static_cast<index_t>(blockIdx.z), s.group_in_channels);
  // The tile's first input channel within its group, and the group's output channels.
  const index_t group_channel = inputs.first - inputs.group * s.group_in_channels;
  const index_t o_first = inputs.group * s.group_out_channels;
  const index_t o_end = o_first + s.group_out_channels;

  for (index_t n_base = static_cast<index_t>(blockIdx.y) * T::BLOCK_M; n_base < s.batch;
       n_base += static_cast<index_t>(gridDim.y) * T::BLOCK_M) {
    ThreadTile<T, acc_t> tile(thread);
    for (index_t a = 0; a < s.kernel_d; ++a) {
      const index_t plane = d + s.pad_d - a * s.dilation_d;
      if (plane < 0 || plane % s.stride_d != 0 || plane / s.stride_d >= s.out_d) continue;
      const index_t out_z = plane / s.stride_d;
      for (index_t p = 0; p < s.kernel_h; ++p) {
        const index_t row = h + s.pad_h - p * s.dilation_h;
        if (row < 0 || row % s.stride_h != 0 || row / s.stride_h >= s.out_h) continue;
        const index_t out_i = row / s.stride_h;
        const index_t region_row =
            (s.region_along(out_z, s.share_d) * s.regions_h + s.region_along(out_i, s.share_h)) *
            s.regions_w;
        for (index_t q = 0; q < s.kernel_w; ++q) {
          const index_t col = w + s.pad_w - q * s.dilation_w;
          if (col < 0 || col % s.stride_w != 0 || col / s.stride_w >= s.out_w) continue;
          const index_t out_j = col / s.stride_w;
          const index_t region = region_row + s.region_along(out_j, s.share_w);
          // weight[region, o, c - group's first channel, a, p, q]
          const scalar_t* tap_filters = weight + region * s.out_channels * patch_size +
                                        group_channel * taps + (a * s.kernel_h + p) * s.kernel_w +
                                        q;
          for (index_t o_base = o_first; o_base < o_end; o_base += T::BLOCK_K) {
            for (int e = thread; e < T::BLOCK_K * T::BLOCK_M; e += T::THREADS) {
              const int oo = e % T::BLOCK_K, nn = e / T::BLOCK_K;
              const index_t n = n_base + nn, o = o_base + oo;
              grads[oo][nn] =
                  (n < s.batch && o < o_end)
                      ? static_cast<acc_t>(
                            grad_output[grad_output_offset(s, n, o, out_z, out_i, out_j)])
                      : acc_t(0);
            }
            for (int e = thread; e < T::BLOCK_K * T::BLOCK_N; e += T::THREADS) {
              const int oo = e / T::BLOCK_N, cc = e % T::BLOCK_N;
              const index_t o = o_base + oo;
              filters[oo][cc] =
                  (o < o_end && inputs.first + cc < inputs.end)
                      ? static_cast<acc_t>(tap_filters[(o * s.group_in_channels + cc) * taps])
                      : acc_t(0);
            }
            tile.multiply_staged(grads, filters);
          }
        }
      }
    }
    tile.store(n_base, s.batch, inputs.first, inputs.end, [&](index_t n, index_t c, acc_t value) {
      grad_input[(((n * s.in_channels + c) * s.in_d + d) * s.in_h + h) * s.in_w + w] =
          static_cast<scalar_t>(value);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// grad_weight, reducing over the batch and the region's locations inside the CTA. Grid:
// x = weight region, y = C_out tiles of each group, z = patch-column tiles. GEMM rows are output
// channels, columns are patch columns; the CTA walks the region's locations in a fixed order
// (one, without sharing), with the patch-column table of its tile recomputed per location.
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, typename index_t, typename T>
__global__ void __launch_bounds__(T::THREADS)
    grad_weight_kernel(const scalar_t* __restrict__ grad_output,
                       const scalar_t* __restrict__ input, scalar_t* __restrict__ grad_weight,
                       ConvShape<index_t> s) {
  using acc_t = typename Accumulate<scalar_t>::type;
  alignas(16) __shared__ acc_t grads[T::BLOCK_K][T::ROW_M];
  alignas(16) __shared__ acc_t patches[T::BLOCK_K][T::ROW_N];
  __shared__ PatchColumn<index_t> columns[T::BLOCK_N];

  const int thread = threadIdx.x;
  const index_t region = blockIdx.x;
  const index_t region_row = region / s.regions_w, region_x = region - region_row * s.regions_w;
  const index_t region_z = region_row / s.regions_h, region_y = region_row - region_z * s.regions_h;
  const RegionMembers<index_t> along_d = region_members(s, region_z, s.share_d, s.out_d);
  const RegionMembers<index_t> along_h = region_members(s, region_y, s.share_h, s.out_h);
  const RegionMembers<index_t> along_w = region_members(s, region_x, s.share_w, s.out_w);
  const index_t patch_size = s.patch_size();
  const ChannelTile<index_t> outputs =
      channel_tile<T::BLOCK_M>(static_cast<index_t>(blockIdx.y), s.group_out_channels);
  const index_t k_base = static_cast<index_t>(blockIdx.z) * T::BLOCK_N;
  const scalar_t* group_input = input + outputs.group * s.group_in_channels * s.input_stride_c;

  ThreadTile<T, acc_t> tile(thread);
  for (index_t out_z = along_d.first; out_z < along_d.end; out_z += along_d.step)
    for (index_t out_i = along_h.first; out_i < along_h.end; out_i += along_h.step)
      for (index_t out_j = along_w.first; out_j < along_w.end; out_j += along_w.step) {
        const Window<index_t> window = window_of(out_z, out_i, out_j, s);
        // The previous location's last multiply_staged ended at a barrier: its table is free.
        if (thread < T::BLOCK_N)
          columns[thread] = patch_column<index_t>(k_base + thread, patch_size, s, window);
        __syncthreads();
        for (index_t n_base = 0; n_base < s.batch; n_base += T::BLOCK_K) {
          for (int e = thread; e < T::BLOCK_K * T::BLOCK_M; e += T::THREADS) {
            const int nn = e / T::BLOCK_M, oo = e % T::BLOCK_M;
            const index_t n = n_base + nn, o = outputs.first + oo;
            grads[nn][oo] = (n < s.batch && o < outputs.end)
                                ? static_cast<acc_t>(grad_output[grad_output_offset(
                                      s, n, o, out_z, out_i, out_j)])
                                : acc_t(0);
          }
          for (int e = thread; e < T::BLOCK_K * T::BLOCK_N; e += T::THREADS) {
            const int nn = e / T::BLOCK_N, kk = e % T::BLOCK_N;
            patches[nn][kk] = load_patch<scalar_t, acc_t, index_t>(group_input, s, n_base + nn,
                                                                  window, columns[kk]);
          }
          tile.multiply_staged(grads, patches);
        }
      }
  scalar_t* region_grads = grad_weight + region * s.out_channels * patch_size;
  tile.store(outputs.first, outputs.end, k_base, patch_size,
             [&](index_t o, index_t k, acc_t value) {
               region_grads[o * patch_size + k] = static_cast<scalar_t>(value);
             });
}

// ---------------------------------------------------------------------------------------------
// Launch configurations, shared by the extension's launchers, the CPU emulation test and any
// standalone harness.
// ---------------------------------------------------------------------------------------------

// Calls body(std::integral_constant<int, W>{}) with the narrowest tile width W in {16, 32, 64}
// that covers `channels` (per group), so that layers with 16 channels do not compute 48 empty
// columns.
template <typename Body>
void with_channel_tile(int64_t channels, Body&& body) {
  if (channels <= 16) return body(std::integral_constant<int, 16>{});
  if (channels <= 32) return body(std::integral_constant<int, 32>{});
  body(std::integral_constant<int, 64>{});
}

template <int WIDTH>
using ForwardTiles = Tiles<64, WIDTH, 16, 4, 4>;  // batch x C_out; WIDTH from C_out per group
template <int WIDTH>
using GradInputTiles = Tiles<64, WIDTH, 16, 4, 4>;  // batch x C_in; WIDTH from C_in per group
template <int WIDTH>
using GradWeightTiles = Tiles<WIDTH, 64, 16, 4, 4>;  // C_out x patch columns; WIDTH from C_out

template <typename T, typename index_t>
dim3 forward_grid(const ConvShape<index_t>& s) {
  return dim3{static_cast<unsigned int>(s.locations()),
              grid_blocks(s.batch, T::BLOCK_M, /*capped=*/true),
              channel_tile_blocks(s.groups, s.group_out_channels, T::BLOCK_N)};
}

template <typename T, typename index_t>
dim3 grad_input_grid(const ConvShape<index_t>& s) {
  return dim3{static_cast<unsigned int>(s.in_d * s.in_h * s.in_w),
              grid_blocks(s.batch, T::BLOCK_M, /*capped=*/true),
              channel_tile_blocks(s.groups, s.group_in_channels, T::BLOCK_N)};
}

template <typename T, typename index_t>
dim3 grad_weight_grid(const ConvShape<index_t>& s) {
  return dim3{static_cast<unsigned int>(s.regions()),
              channel_tile_blocks(s.groups, s.group_out_channels, T::BLOCK_M),
              grid_blocks(s.patch_size(), T::BLOCK_N)};
}

}  // namespace kernels
}  // namespace lc_cuda
