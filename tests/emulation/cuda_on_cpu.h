// Just enough of CUDA to run lc_cuda's kernels on the CPU, for testing their index arithmetic
// and tiling without a GPU. A CTA's threads are std::threads that meet at a std::barrier in
// __syncthreads; CTAs run one after another, so __shared__ can be a function-static array.
//
// The warp-level instructions of the tensor-core kernels (csrc/cuda/tensor_core.cuh) are
// emulated from the PTX ISA's descriptions: a warp's 32 threads publish their operands in a
// per-warp exchange area, meet at a per-warp barrier, and each computes its own share of the
// result from the fragment-layout tables. Alignment rules the GPU would fault on are checked.
#pragma once

#define LC_CUDA_EMULATION 1

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

struct uint4 {
  unsigned int x, y, z, w;
};

inline dim3 gridDim;
inline thread_local dim3 blockIdx, threadIdx;
inline std::barrier<>* cta_barrier = nullptr;

inline void __syncthreads() { cta_barrier->arrive_and_wait(); }

// What the warp-level emulations exchange: per warp, one slot per lane.
struct WarpExchange {
  std::unique_ptr<std::barrier<>> barrier;
  const void* rows[32];
  uint32_t a[32][4], b[32][2];
};
inline std::vector<WarpExchange> warps;

inline void fail(const char* what) {
  std::fprintf(stderr, "emulated CUDA fault: %s\n", what);
  std::abort();
}

// Dynamic shared memory: the most an sm_90 CTA may have. The bytes a launch asks for are set to
// 0xFF (float16 and bfloat16 NaNs) before every CTA, so that a kernel that reads shared memory it
// did not write shows NaNs in its results.
alignas(128) inline unsigned char dynamic_shared_bytes[227 * 1024];

inline void check_aligned(const void* pointer, std::uintptr_t bytes, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(pointer) % bytes != 0) fail(what);
}

inline WarpExchange& this_warp() { return warps[threadIdx.x / 32]; }
inline int lane_id() { return static_cast<int>(threadIdx.x % 32); }
inline void sync_warp() { this_warp().barrier->arrive_and_wait(); }

// The same `threads` threads run every CTA in turn, meeting at the barrier after each, so that
// no thread starts the next CTA (and reuses the static shared memory) before all are done.
// shared_bytes: the dynamic shared memory the launch asks for, as in <<<grid, threads, bytes>>>.
template <typename Kernel, typename... Args>
void launch_on_cpu(dim3 grid, unsigned int threads, size_t shared_bytes, Kernel kernel,
                   Args... args) {
  if (shared_bytes > sizeof dynamic_shared_bytes) fail("more dynamic shared memory than sm_90 has");
  if (threads % 32 != 0) fail("the emulation runs whole warps only");
  gridDim = grid;
  std::barrier<> barrier(threads);
  cta_barrier = &barrier;
  warps = std::vector<WarpExchange>(threads / 32);
  for (auto& warp : warps) warp.barrier = std::make_unique<std::barrier<>>(32);
  std::vector<std::thread> cta;
  for (unsigned int t = 0; t < threads; ++t)
    cta.emplace_back([&, t] {
      threadIdx = {t, 0, 0};
      for (unsigned int z = 0; z < grid.z; ++z)
        for (unsigned int y = 0; y < grid.y; ++y)
          for (unsigned int x = 0; x < grid.x; ++x) {
            blockIdx = {x, y, z};
            if (shared_bytes > 0) {
              if (t == 0) std::memset(dynamic_shared_bytes, 0xFF, shared_bytes);
              barrier.arrive_and_wait();
            }
            kernel(args...);
            barrier.arrive_and_wait();
          }
    });
  for (auto& thread : cta) thread.join();
}

namespace lc_cuda {
namespace kernels {

inline unsigned char* dynamic_shared_memory() { return dynamic_shared_bytes; }

inline void copy_16_bytes_async(void* shared, const void* global, bool valid) {
  check_aligned(shared, 16, "cp.async destination not 16-byte aligned");
  check_aligned(global, 16, "cp.async source not 16-byte aligned");
  if (valid)
    std::memcpy(shared, global, 16);
  else
    std::memset(shared, 0, 16);
}
inline void commit_async_copies() {}
template <int PENDING>
void wait_async_copies() {}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8j..8j+7 address the rows of matrix
// j; lane (g = lane/4, t = lane%4) receives elements [g][2t] and [g][2t+1] of each matrix, or
// with .trans (TRANSPOSED) [2t][g] and [2t+1][g], the first in the low half.
template <bool TRANSPOSED>
void load_matrix_x4(uint32_t (&fragment)[4], const void* row) {
  check_aligned(row, 16, "ldmatrix row address not 16-byte aligned");
  WarpExchange& warp = this_warp();
  const int lane = lane_id(), g = lane / 4, t = lane % 4;
  warp.rows[lane] = row;
  sync_warp();
  auto element = [&](int matrix, int r, int c) {
    return uint32_t(static_cast<const uint16_t*>(warp.rows[8 * matrix + r])[c]);
  };
  for (int j = 0; j < 4; ++j)
    fragment[j] = TRANSPOSED ? element(j, 2 * t, g) | (element(j, 2 * t + 1, g) << 16)
                             : element(j, g, 2 * t) | (element(j, g, 2 * t + 1) << 16);
  sync_warp();
}

inline float bfloat16_bits_to_float(uint16_t bits) {
  const uint32_t word = uint32_t(bits) << 16;
  float value;
  std::memcpy(&value, &word, 4);
  return value;
}

inline float float16_bits_to_float(uint16_t bits) {
  const int sign = bits >> 15, exponent = (bits >> 10) & 0x1F, mantissa = bits & 0x3FF;
  float magnitude;
  if (exponent == 0)
    magnitude = std::ldexp(float(mantissa), -24);
  else if (exponent == 31)
    magnitude = mantissa == 0 ? INFINITY : NAN;
  else
    magnitude = std::ldexp(float(mantissa | 0x400), exponent - 25);
  return sign ? -magnitude : magnitude;
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: with g = lane/4, t = lane%4,
//   A (16x16): a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]
//   B (16x8):  b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]
//   C (16x8):  acc[0..1] = C[g][2t..2t+1], acc[2..3] = C[g+8][2t..2t+1]
// (low half of each register first).
template <bool BFLOAT16>
void mma_16x8x16(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  WarpExchange& warp = this_warp();
  const int lane = lane_id();
  std::memcpy(warp.a[lane], a, sizeof a);
  std::memcpy(warp.b[lane], b, sizeof b);
  sync_warp();
  auto value = [](uint32_t word, int half) {
    const uint16_t bits = static_cast<uint16_t>(half ? word >> 16 : word & 0xFFFF);
    return BFLOAT16 ? bfloat16_bits_to_float(bits) : float16_bits_to_float(bits);
  };
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int half = 0; half < 2; ++half) {
      A[g][2 * t + half] = value(warp.a[l][0], half);
      A[g + 8][2 * t + half] = value(warp.a[l][1], half);
      A[g][2 * t + 8 + half] = value(warp.a[l][2], half);
      A[g + 8][2 * t + 8 + half] = value(warp.a[l][3], half);
      B[2 * t + half][g] = value(warp.b[l][0], half);
      B[2 * t + 8 + half][g] = value(warp.b[l][1], half);
    }
  }
  sync_warp();
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i / 2) * 8, column = 2 * t + i % 2;
    float sum = 0;
    for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][column];
    acc[i] += sum;
  }
}

// cvt.rna.tf32.f32: round the mantissa to 10 bits, to nearest with ties away from zero (add half
// of the dropped range to the magnitude, then clear the 13 low bits); NaN and infinity kept.
inline uint32_t to_tf32(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if ((bits & 0x7F800000u) == 0x7F800000u) return bits;
  return (bits + 0x1000u) & 0xFFFFE000u;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: with g = lane/4, t = lane%4,
//   A (16x8): a = (A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4])
//   B (8x8):  b = (B[t][g], B[t+4][g])
//   C (16x8): acc[0..1] = C[g][2t..2t+1], acc[2..3] = C[g+8][2t..2t+1]
inline void mma_16x8x8_tf32(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  WarpExchange& warp = this_warp();
  const int lane = lane_id();
  std::memcpy(warp.a[lane], a, sizeof a);
  std::memcpy(warp.b[lane], b, sizeof b);
  sync_warp();
  auto value = [](uint32_t word) {
    word &= 0xFFFFE000u;  // the hardware reads only the TF32 bits
    float f;
    std::memcpy(&f, &word, 4);
    return f;
  };
  float A[16][8], B[8][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    A[g][t] = value(warp.a[l][0]);
    A[g + 8][t] = value(warp.a[l][1]);
    A[g][t + 4] = value(warp.a[l][2]);
    A[g + 8][t + 4] = value(warp.a[l][3]);
    B[t][g] = value(warp.b[l][0]);
    B[t + 4][g] = value(warp.b[l][1]);
  }
  sync_warp();
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i / 2) * 8, column = 2 * t + i % 2;
    float sum = 0;
    for (int k = 0; k < 8; ++k) sum += A[row][k] * B[k][column];
    acc[i] += sum;
  }
}

template <typename T>
T __ldg(const T* pointer) {
  return *pointer;
}

inline uint32_t load_pair(const void* global) {
  check_aligned(global, 4, "32-bit load not 4-byte aligned");
  uint32_t word;
  std::memcpy(&word, global, 4);
  return word;
}

inline void store_pair(void* global, uint32_t pair) {
  check_aligned(global, 4, "32-bit store not 4-byte aligned");
  std::memcpy(global, &pair, 4);
}

}  // namespace kernels
}  // namespace lc_cuda
