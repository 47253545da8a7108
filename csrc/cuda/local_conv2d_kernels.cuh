// lc_cuda's FFMA kernels: forward, grad_input and grad_weight of the locally-connected
// convolution, computed straight from the input (nothing is unfolded in global memory), for
// every dtype. The tensor-core kernels (float16 and bfloat16 on sm_80+, and the float32 forward
// under TF32) are in forward_tensor_core.cuh, grad_input_tensor_core.cuh and
// grad_weight_tensor_core.cuh; this header also holds what they share with these (ConvShape,
// grid_blocks).
//
// The header includes no torch or Python header, so a standalone harness can build it. A kernel
// takes plain pointers and a ConvShape; scalar_t must convert to and from its accumulation
// type with static_cast (float, double, and c10's Half and BFloat16 do).
//
// All three are tiled GEMMs that stage both operands in shared memory, with register tiles of
// THREAD_M x THREAD_N per thread (ThreadTile). They differ in what the GEMM is:
//   forward      per output location l:  out[n, o]   = sum_k  patch_l[n, k] * w_l[o, k]
//   grad_input   per input pixel:        gin[n, c]   = sum over the (location, tap) pairs that
//                                                       read the pixel, and o, of gy[n, o] * w[o, c]
//   grad_weight  per output location l:  gw_l[o, k]  = sum_n  gy[n, o] * patch_l[n, k]
// Each output element is produced by exactly one thread, with a fixed summation order: no
// atomics, and bitwise-identical results from run to run.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace lc_cuda {
namespace kernels {

// Sizes in the kernel's index type: int32_t where every tensor's offsets fit (faster index
// arithmetic), int64_t otherwise.
template <typename index_t>
struct ConvShape {
  index_t batch, in_channels, in_h, in_w;
  index_t out_channels, out_h, out_w, kernel_h, kernel_w;
  index_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  // Element strides of the input and of grad_output, which may have any layout (channels_last,
  // expanded, sliced): autograd often hands over an expanded grad_output, and copying it would
  // cost a tensor of the output's size. weight and every output are contiguous.
  index_t input_stride_n, input_stride_c, input_stride_h, input_stride_w;
  index_t grad_stride_n, grad_stride_c, grad_stride_h, grad_stride_w;
};

template <typename index_t>
__device__ index_t grad_output_offset(const ConvShape<index_t>& s, index_t n, index_t o,
                                      index_t out_i, index_t out_j) {
  return n * s.grad_stride_n + o * s.grad_stride_c + out_i * s.grad_stride_h +
         out_j * s.grad_stride_w;
}

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

// Where patch column k of a location reads: channel offset and kernel tap (dy, dx). Columns past
// the patch end get dy = -1, which every bounds check rejects.
template <typename index_t>
struct PatchColumn {
  index_t channel_offset;
  int dy, dx;
};

template <typename index_t>
__device__ PatchColumn<index_t> patch_column(index_t k, index_t patch_size,
                                             const ConvShape<index_t>& s) {
  if (k >= patch_size) return {0, -1, 0};
  const index_t taps = s.kernel_h * s.kernel_w;
  const index_t channel = k / taps;
  const index_t tap = k - channel * taps;
  const index_t p = tap / s.kernel_w;
  const index_t q = tap - p * s.kernel_w;
  return {channel * s.input_stride_c, static_cast<int>(p * s.dilation_h),
          static_cast<int>(q * s.dilation_w)};
}

// Output location `location`: its row and column, and the padded-input position (top, left)
// of its window's first tap. The forward and grad_weight must agree on it exactly.
template <typename index_t>
struct Window {
  index_t out_i, out_j, top, left;
};

template <typename index_t>
__device__ Window<index_t> window_at(index_t location, const ConvShape<index_t>& s) {
  const index_t out_i = location / s.out_w, out_j = location - out_i * s.out_w;
  return {out_i, out_j, out_i * s.stride_h - s.pad_h, out_j * s.stride_w - s.pad_w};
}

// The input element patch column `column` of `window` reads for sample n,
// or 0 in the padding.
template <typename scalar_t, typename acc_t, typename index_t>
__device__ acc_t load_patch(const scalar_t* __restrict__ input, const ConvShape<index_t>& s,
                            index_t n, const Window<index_t>& window,
                            const PatchColumn<index_t>& column) {
  const index_t h = window.top + column.dy;
  const index_t w = window.left + column.dx;
  if (column.dy < 0 || n >= s.batch || h < 0 || h >= s.in_h || w < 0 || w >= s.in_w)
    return acc_t(0);
  return static_cast<acc_t>(input[n * s.input_stride_n + column.channel_offset +
                                  h * s.input_stride_h + w * s.input_stride_w]);
}

// ---------------------------------------------------------------------------------------------
// Forward. Grid: x = output location, y = batch tiles (grid-stride), z = C_out tiles.
// GEMM rows are samples (M = batch), columns are output channels (N = C_out).
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
  const index_t locations = s.out_h * s.out_w;
  const index_t patch_size = s.in_channels * s.kernel_h * s.kernel_w;
  const Window<index_t> window = window_at(location, s);
  const index_t o_base = static_cast<index_t>(blockIdx.z) * T::BLOCK_N;
  const scalar_t* location_filters = weight + location * s.out_channels * patch_size;

  for (index_t n_base = static_cast<index_t>(blockIdx.y) * T::BLOCK_M; n_base < s.batch;
       n_base += static_cast<index_t>(gridDim.y) * T::BLOCK_M) {
    ThreadTile<T, acc_t> tile(thread);
    for (index_t k_base = 0; k_base < patch_size; k_base += T::BLOCK_K) {
      if (thread < T::BLOCK_K) columns[thread] = patch_column<index_t>(k_base + thread, patch_size, s);
      __syncthreads();
      // k fastest: neighbouring threads read neighbouring taps, contiguous in w where dx = 1.
      for (int e = thread; e < T::BLOCK_K * T::BLOCK_M; e += T::THREADS) {
        const int kk = e % T::BLOCK_K, nn = e / T::BLOCK_K;
        patches[kk][nn] = load_patch<scalar_t, acc_t, index_t>(input, s, n_base + nn, window,
                                                              columns[kk]);
      }
      for (int e = thread; e < T::BLOCK_K * T::BLOCK_N; e += T::THREADS) {
        const int kk = e % T::BLOCK_K, oo = e / T::BLOCK_K;
        const index_t k = k_base + kk, o = o_base + oo;
        filters[kk][oo] = (k < patch_size && o < s.out_channels)
                              ? static_cast<acc_t>(location_filters[o * patch_size + k])
                              : acc_t(0);
      }
      tile.multiply_staged(patches, filters);
    }
    tile.store(n_base, s.batch, o_base, s.out_channels, [&](index_t n, index_t o, acc_t value) {
      if (bias != nullptr)
        value += static_cast<acc_t>(bias[shared_bias ? o : o * locations + location]);
      output[(n * s.out_channels + o) * locations + location] = static_cast<scalar_t>(value);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// grad_input, as a gather. Grid: x = input pixel (h, w), y = batch tiles (grid-stride),
// z = C_in tiles. The reduction runs over the kernel taps (p, q) whose window position
// (i, j) = ((h + pad_h - p*dilation_h) / stride_h, ...) is a whole output location, and over
// C_out in chunks. Taps depend only on the pixel, so a CTA's threads never diverge on them.
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
  const index_t h = pixel / s.in_w, w = pixel - h * s.in_w;
  const index_t taps = s.kernel_h * s.kernel_w;
  const index_t c_base = static_cast<index_t>(blockIdx.z) * T::BLOCK_N;

  for (index_t n_base = static_cast<index_t>(blockIdx.y) * T::BLOCK_M; n_base < s.batch;
       n_base += static_cast<index_t>(gridDim.y) * T::BLOCK_M) {
    ThreadTile<T, acc_t> tile(thread);
    for (index_t p = 0; p < s.kernel_h; ++p) {
      const index_t row = h + s.pad_h - p * s.dilation_h;
      if (row < 0 || row % s.stride_h != 0 || row / s.stride_h >= s.out_h) continue;
      for (index_t q = 0; q < s.kernel_w; ++q) {
        const index_t col = w + s.pad_w - q * s.dilation_w;
        if (col < 0 || col % s.stride_w != 0 || col / s.stride_w >= s.out_w) continue;
        const index_t out_i = row / s.stride_h, out_j = col / s.stride_w;
        const index_t location = out_i * s.out_w + out_j;
        // weight[location, o, c, p, q]
        const scalar_t* tap_filters =
            weight + location * s.out_channels * s.in_channels * taps + p * s.kernel_w + q;
        for (index_t o_base = 0; o_base < s.out_channels; o_base += T::BLOCK_K) {
          for (int e = thread; e < T::BLOCK_K * T::BLOCK_M; e += T::THREADS) {
            const int oo = e % T::BLOCK_K, nn = e / T::BLOCK_K;
            const index_t n = n_base + nn, o = o_base + oo;
            grads[oo][nn] = (n < s.batch && o < s.out_channels)
                                ? static_cast<acc_t>(
                                      grad_output[grad_output_offset(s, n, o, out_i, out_j)])
                                : acc_t(0);
          }
          for (int e = thread; e < T::BLOCK_K * T::BLOCK_N; e += T::THREADS) {
            const int oo = e / T::BLOCK_N, cc = e % T::BLOCK_N;
            const index_t o = o_base + oo, c = c_base + cc;
            filters[oo][cc] = (o < s.out_channels && c < s.in_channels)
                                  ? static_cast<acc_t>(tap_filters[(o * s.in_channels + c) * taps])
                                  : acc_t(0);
          }
          tile.multiply_staged(grads, filters);
        }
      }
    }
    tile.store(n_base, s.batch, c_base, s.in_channels, [&](index_t n, index_t c, acc_t value) {
      grad_input[((n * s.in_channels + c) * s.in_h + h) * s.in_w + w] =
          static_cast<scalar_t>(value);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// grad_weight, reducing over the batch inside the CTA. Grid: x = output location,
// y = C_out tiles, z = patch-column tiles. GEMM rows are output channels, columns are patch
// columns; the patch-column table of the CTA's tile is computed once.
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
  const index_t location = blockIdx.x;
  const index_t patch_size = s.in_channels * s.kernel_h * s.kernel_w;
  const Window<index_t> window = window_at(location, s);
  const index_t o_base = static_cast<index_t>(blockIdx.y) * T::BLOCK_M;
  const index_t k_base = static_cast<index_t>(blockIdx.z) * T::BLOCK_N;

  if (thread < T::BLOCK_N) columns[thread] = patch_column<index_t>(k_base + thread, patch_size, s);
  __syncthreads();
  ThreadTile<T, acc_t> tile(thread);
  for (index_t n_base = 0; n_base < s.batch; n_base += T::BLOCK_K) {
    for (int e = thread; e < T::BLOCK_K * T::BLOCK_M; e += T::THREADS) {
      const int nn = e / T::BLOCK_M, oo = e % T::BLOCK_M;
      const index_t n = n_base + nn, o = o_base + oo;
      grads[nn][oo] = (n < s.batch && o < s.out_channels)
                          ? static_cast<acc_t>(grad_output[grad_output_offset(
                                s, n, o, window.out_i, window.out_j)])
                          : acc_t(0);
    }
    for (int e = thread; e < T::BLOCK_K * T::BLOCK_N; e += T::THREADS) {
      const int nn = e / T::BLOCK_N, kk = e % T::BLOCK_N;
      patches[nn][kk] =
          load_patch<scalar_t, acc_t, index_t>(input, s, n_base + nn, window, columns[kk]);
    }
    tile.multiply_staged(grads, patches);
  }
  scalar_t* location_grads = grad_weight + location * s.out_channels * patch_size;
  tile.store(o_base, s.out_channels, k_base, patch_size, [&](index_t o, index_t k, acc_t value) {
    location_grads[o * patch_size + k] = static_cast<scalar_t>(value);
  });
}

// ---------------------------------------------------------------------------------------------
// Launch configurations, shared by the extension's launchers, the CPU emulation test and any
// standalone harness.
// ---------------------------------------------------------------------------------------------

// Calls body(std::integral_constant<int, W>{}) with the narrowest tile width W in {16, 32, 64}
// that covers `channels`, so that layers with 16 channels do not compute 48 empty columns.
template <typename Body>
void with_channel_tile(int64_t channels, Body&& body) {
  if (channels <= 16) return body(std::integral_constant<int, 16>{});
  if (channels <= 32) return body(std::integral_constant<int, 32>{});
  body(std::integral_constant<int, 64>{});
}

template <int WIDTH>
using ForwardTiles = Tiles<64, WIDTH, 16, 4, 4>;  // batch x C_out; WIDTH from C_out
template <int WIDTH>
using GradInputTiles = Tiles<64, WIDTH, 16, 4, 4>;  // batch x C_in; WIDTH from C_in
template <int WIDTH>
using GradWeightTiles = Tiles<WIDTH, 64, 16, 4, 4>;  // C_out x patch columns; WIDTH from C_out

// Grid y and z hold at most this many blocks. The batch is walked by a grid-stride loop, so its
// block count is capped; the launcher checks the others.
constexpr int64_t kMaxGridYZ = 65535;

inline unsigned int grid_blocks(int64_t count, int64_t tile, bool capped = false) {
  const int64_t blocks = (count + tile - 1) / tile;
  return static_cast<unsigned int>(capped ? std::min(blocks, kMaxGridYZ) : blocks);
}

// Grid y of the tensor-core kernels: one block per (row, group of WIDTH neighbouring columns),
// row-major. row_segment_blocks sizes it; row_segment decodes a block's position, so that the
// two cannot disagree.
template <int WIDTH>
unsigned int row_segment_blocks(int64_t rows, int64_t columns) {
  return static_cast<unsigned int>(rows * grid_blocks(columns, WIDTH));
}

template <typename index_t>
struct RowSegment {
  index_t row, first_column;
};

template <int WIDTH, typename index_t>
__device__ inline RowSegment<index_t> row_segment(index_t columns) {
  const index_t groups = (columns + WIDTH - 1) / WIDTH;
  const index_t row = blockIdx.y / groups;
  return {row, (blockIdx.y - row * groups) * WIDTH};
}

template <typename T, typename index_t>
dim3 forward_grid(const ConvShape<index_t>& s) {
  return dim3{static_cast<unsigned int>(s.out_h * s.out_w),
              grid_blocks(s.batch, T::BLOCK_M, /*capped=*/true),
              grid_blocks(s.out_channels, T::BLOCK_N)};
}

template <typename T, typename index_t>
dim3 grad_input_grid(const ConvShape<index_t>& s) {
  return dim3{static_cast<unsigned int>(s.in_h * s.in_w),
              grid_blocks(s.batch, T::BLOCK_M, /*capped=*/true),
              grid_blocks(s.in_channels, T::BLOCK_N)};
}

template <typename T, typename index_t>
dim3 grad_weight_grid(const ConvShape<index_t>& s) {
  return dim3{static_cast<unsigned int>(s.out_h * s.out_w),
              grid_blocks(s.out_channels, T::BLOCK_M),
              grid_blocks(s.in_channels * s.kernel_h * s.kernel_w, T::BLOCK_N)};
}

}  // namespace kernels
}  // namespace lc_cuda
