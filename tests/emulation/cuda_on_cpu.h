// Just enough of CUDA to run lc_cuda's kernels on the CPU, for testing their index arithmetic
// and tiling without a GPU. A CTA's threads are std::threads that meet at a barrier in
// __syncthreads; CTAs run one after another, so __shared__ can be a function-static array.
//
// As strict as the hardware where kernels go wrong (tests/test_kernel_emulation.py runs each):
//   - cp.async completes as early (at the copy) or as late (at the cp.async.wait_group that
//     covers it) as PTX allows, chosen per run (copy_completion);
//   - under AddressSanitizer, dynamic shared memory past what the launch asked for is poisoned
//     (and static __shared__ arrays have redzones where the includer gives the kernels internal
//     linkage, as run_kernels.cpp does);
//   - under ThreadSanitizer, shared-memory accesses of a CTA's threads that no __syncthreads
//     orders are reported. One leniency stays: an emulated warp-level instruction is a barrier
//     for its warp, which the hardware's are not, so a race between two lanes of one warp
//     across such an instruction goes unseen.
//
// The warp-level instructions of the tensor-core kernels (csrc/cuda/tensor_core.cuh) are
// emulated from the PTX ISA's descriptions: a warp's 32 threads publish their operands in a
// per-warp exchange area, meet at a per-warp barrier, and each computes its own share of the
// result from the fragment-layout tables. Alignment rules the GPU would fault on are checked.
#pragma once

#define LC_CUDA_EMULATION 1

#include <sanitizer/asan_interface.h>  // ASAN_(UN)POISON_MEMORY_REGION: no-ops without ASan

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
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

// A barrier for a fixed number of threads: the last to arrive starts a new generation and wakes
// the others. Its acquire-release atomics give ThreadSanitizer the happens-before a __syncthreads
// gives (and nothing more). Waiters sleep in the kernel (std::atomic::wait, a futex on Linux)
// rather than spin: the emulation runs hundreds of threads on a few cores.
class Barrier {
 public:
  explicit Barrier(unsigned int count) : count_(count) {}

  void arrive_and_wait() {
    const unsigned int generation = generation_.load(std::memory_order_relaxed);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(generation + 1, std::memory_order_release);
      generation_.notify_all();
    } else {
      while (generation_.load(std::memory_order_acquire) == generation)
        generation_.wait(generation, std::memory_order_acquire);
    }
  }

 private:
  const unsigned int count_;
  std::atomic<unsigned int> arrived_{0}, generation_{0};
};

inline dim3 gridDim;
inline thread_local dim3 blockIdx, threadIdx;
inline Barrier* cta_barrier = nullptr;

inline void __syncthreads() { cta_barrier->arrive_and_wait(); }

// What the warp-level emulations exchange: per warp, one slot per lane, in two sets that the
// warp's instructions use by turns. One barrier per instruction then suffices: a lane writes a
// set again two instructions later, past the barrier of the one between, at which every lane
// has arrived after reading the set.
struct WarpSlots {
  const void* rows[32];
  uint32_t a[32][4], b[32][2];
};
struct WarpExchange {
  std::unique_ptr<Barrier> barrier;
  WarpSlots turns[2];
};
inline std::vector<WarpExchange> warps;
// The warp-level instructions this thread has run; every lane of a warp runs the same ones.
inline thread_local unsigned long warp_instructions = 0;

inline void fail(const char* what) {
  std::fprintf(stderr, "emulated CUDA fault: %s\n", what);
  std::abort();
}

// Dynamic shared memory: the most an sm_90 CTA may have. The bytes a launch asks for are set to
// 0xFF (float16, bfloat16 and float NaNs) before every CTA, so that a kernel that reads shared
// memory it did not write shows NaNs in its results; under ASan the bytes past them are poisoned,
// so that an access there aborts.
alignas(128) inline unsigned char dynamic_shared_bytes[227 * 1024];

// When a cp.async's 16 bytes land in shared memory. PTX guarantees only that they have landed
// once the thread's cp.async.wait_group (or wait_all) covering the copy's commit group returns;
// a __syncthreads alone does not wait for them. immediate: at the copy, the earliest. late: the
// destination reads as 0xFF from the copy on, and the bytes land at the covering wait_group, the
// latest; what a CTA leaves in flight at its exit never lands.
enum class CopyCompletion { immediate, late };
inline CopyCompletion copy_completion = CopyCompletion::immediate;

struct CopyInFlight {
  void* shared;
  unsigned char bytes[16];
};
// This thread's copies in flight, late mode: those not yet committed, then the committed groups,
// oldest first.
inline thread_local std::vector<CopyInFlight> uncommitted_copies;
inline thread_local std::deque<std::vector<CopyInFlight>> committed_copy_groups;

inline void check_aligned(const void* pointer, std::uintptr_t bytes, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(pointer) % bytes != 0) fail(what);
}

inline WarpExchange& this_warp() { return warps[threadIdx.x / 32]; }
inline int lane_id() { return static_cast<int>(threadIdx.x % 32); }
inline void sync_warp() { this_warp().barrier->arrive_and_wait(); }
// The slots of this warp-level instruction.
inline WarpSlots& next_warp_slots() { return this_warp().turns[warp_instructions++ % 2]; }

// The same `threads` threads run every CTA in turn, meeting at the barrier after each, so that
// no thread starts the next CTA (and reuses the static shared memory) before all are done.
// shared_bytes: the dynamic shared memory the launch asks for, as in <<<grid, threads, bytes>>>.
template <typename Kernel, typename... Args>
void launch_on_cpu(dim3 grid, unsigned int threads, size_t shared_bytes, Kernel kernel,
                   Args... args) {
  if (shared_bytes > sizeof dynamic_shared_bytes) fail("more dynamic shared memory than sm_90 has");
  if (threads % 32 != 0) fail("the emulation runs whole warps only");
  ASAN_UNPOISON_MEMORY_REGION(dynamic_shared_bytes, shared_bytes);
  ASAN_POISON_MEMORY_REGION(dynamic_shared_bytes + shared_bytes,
                            sizeof dynamic_shared_bytes - shared_bytes);
  gridDim = grid;
  Barrier barrier(threads);
  cta_barrier = &barrier;
  warps = std::vector<WarpExchange>(threads / 32);
  for (auto& warp : warps) warp.barrier = std::make_unique<Barrier>(32);
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
            uncommitted_copies.clear();
            committed_copy_groups.clear();
            barrier.arrive_and_wait();
          }
    });
  for (auto& thread : cta) thread.join();
}

namespace lc_cuda {
namespace kernels {

inline unsigned char* dynamic_shared_memory() { return dynamic_shared_bytes; }

// The source is read at the copy (global memory does not change during a kernel); see
// CopyCompletion for when the destination is written.
inline void copy_16_bytes_async(void* shared, const void* global, bool valid) {
  check_aligned(shared, 16, "cp.async destination not 16-byte aligned");
  check_aligned(global, 16, "cp.async source not 16-byte aligned");
  CopyInFlight copy{shared, {}};
  if (valid) std::memcpy(copy.bytes, global, 16);
  if (copy_completion == CopyCompletion::immediate) {
    std::memcpy(shared, copy.bytes, 16);
  } else {
    std::memset(shared, 0xFF, 16);
    uncommitted_copies.push_back(copy);
  }
}

inline void commit_async_copies() {
  if (copy_completion == CopyCompletion::immediate) return;
  committed_copy_groups.push_back(std::move(uncommitted_copies));
  uncommitted_copies.clear();
}

// cp.async.wait_group PENDING: lands all but the PENDING most recent committed groups.
template <int PENDING>
void wait_async_copies() {
  while (committed_copy_groups.size() > PENDING) {
    for (const CopyInFlight& copy : committed_copy_groups.front())
      std::memcpy(copy.shared, copy.bytes, 16);
    committed_copy_groups.pop_front();
  }
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8j..8j+7 address the rows of matrix
// j; lane (g = lane/4, t = lane%4) receives elements [g][2t] and [g][2t+1] of each matrix, or
// with .trans (TRANSPOSED) [2t][g] and [2t+1][g], the first in the low half.
template <bool TRANSPOSED>
void load_matrix_x4(uint32_t (&fragment)[4], const void* row) {
  check_aligned(row, 16, "ldmatrix row address not 16-byte aligned");
  WarpSlots& warp = next_warp_slots();
  const int lane = lane_id(), g = lane / 4, t = lane % 4;
  warp.rows[lane] = row;
  sync_warp();
  auto element = [&](int matrix, int r, int c) {
    return uint32_t(static_cast<const uint16_t*>(warp.rows[8 * matrix + r])[c]);
  };
  for (int j = 0; j < 4; ++j)
    fragment[j] = TRANSPOSED ? element(j, 2 * t, g) | (element(j, 2 * t + 1, g) << 16)
                             : element(j, g, 2 * t) | (element(j, g, 2 * t + 1) << 16);
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
  WarpSlots& warp = next_warp_slots();
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
  WarpSlots& warp = next_warp_slots();
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
