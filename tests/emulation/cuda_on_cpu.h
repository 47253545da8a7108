// Just enough of CUDA to run lc_cuda's kernels on the CPU, for testing their index arithmetic
// and tiling without a GPU. A CTA's threads meet at a barrier in __syncthreads; CTAs run one
// after another, so __shared__ can be a function-static array. On x86-64 a CTA's threads are
// fibers on the launching thread, each run up to its next barrier in turn (threads 0, 1, 2,
// ...): hundreds of std::threads on two cores had spent most of the emulation's time in the
// kernel, sleeping and waking at every barrier (CI's cases, one completion mode, on a 2-core
// Zen 3: 40 s with threads, 54 s of system time over the 2 cores against 22 of user; 7.3 s as
// fibers). Elsewhere they are std::threads. With fibers, a kernel whose threads wait at barriers
// that can never all be reached fails there, rather than hanging. In turn, a race between two
// threads that no barrier orders shows in the results only where the later thread in that order
// writes what the earlier one reads; finding races is ThreadSanitizer's, which is told of every
// switch and sees each fiber as a thread of its own (tsan_switch_to).
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
#include <sanitizer/common_interface_defs.h>  // ASan's fiber switch annotations
#include <sys/mman.h>

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

#if defined(__SANITIZE_THREAD__)  // GCC's
#define LC_EMULATION_TSAN 1
#elif defined(__has_feature)  // clang's
#if __has_feature(thread_sanitizer)
#define LC_EMULATION_TSAN 1
#endif
#endif
#if defined(LC_EMULATION_TSAN)
#include <sanitizer/tsan_interface.h>  // its fibers, and happens-before between them
#endif
// Fibers need the x86-64 (LP64) stack switch below.
#if !defined(__x86_64__) || !defined(__LP64__)
#define LC_EMULATION_FIBERS 0
#define LC_EMULATION_THREAD_LOCAL thread_local
#else
#define LC_EMULATION_FIBERS 1
// One launching thread runs every fiber: blockIdx is the CTA's, and the scheduler points
// running_thread at each fiber's own variables before it switches to it.
#define LC_EMULATION_THREAD_LOCAL
#endif

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

inline void fail(const char* what) {
  std::fprintf(stderr, "emulated CUDA fault: %s\n", what);
  std::abort();
}

#if LC_EMULATION_FIBERS
// Arrivals at any barrier, so far: the scheduler's measure of progress (run_ctas). Fibers and
// scheduler share it unordered, as relaxed atomics (ThreadSanitizer checks no atomic for races).
inline std::atomic<unsigned long> barrier_arrivals{0};
// The running fiber gives the launching thread back to the scheduler (defined below).
inline void yield_to_scheduler();
#endif

// A barrier for a fixed number of threads: the last to arrive starts a new generation, which
// lets the others go on. Its acquire-release atomics give ThreadSanitizer the happens-before a
// __syncthreads gives. Until the generation changes, a waiting fiber hands the launching thread
// on; a waiting thread sleeps in the kernel (std::atomic::wait, a futex on Linux) rather than
// spin.
class Barrier {
 public:
  explicit Barrier(unsigned int count) : count_(count) {}

  void arrive_and_wait() {
    const unsigned int generation = generation_.load(std::memory_order_relaxed);
#if LC_EMULATION_FIBERS
    barrier_arrivals.fetch_add(1, std::memory_order_relaxed);
#endif
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(generation + 1, std::memory_order_release);
#if !LC_EMULATION_FIBERS
      generation_.notify_all();
#endif
      return;
    }
    while (generation_.load(std::memory_order_acquire) == generation) {
#if LC_EMULATION_FIBERS
      yield_to_scheduler();
#else
      generation_.wait(generation, std::memory_order_acquire);
#endif
    }
  }

 private:
  const unsigned int count_;
  std::atomic<unsigned int> arrived_{0}, generation_{0};
};

inline dim3 gridDim;
inline LC_EMULATION_THREAD_LOCAL dim3 blockIdx;
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

// What each emulated thread has of its own.
struct ThreadOwn {
  dim3 index;
  // The warp-level instructions it has run; every lane of a warp runs the same ones.
  unsigned long warp_instructions = 0;
  // Its copies in flight, late mode: those not yet committed, then the committed groups, oldest
  // first.
  std::vector<CopyInFlight> uncommitted_copies;
  std::deque<std::vector<CopyInFlight>> committed_copy_groups;

  // As thread `t` of a new CTA: what the last one left in flight never lands.
  void start_cta(unsigned int t) {
    index = {t, 0, 0};
    warp_instructions = 0;
    uncommitted_copies.clear();
    committed_copy_groups.clear();
  }
};
// The running thread's. A fiber reads it while the scheduler writes it between fibers: a relaxed
// atomic, so that ThreadSanitizer does not take that for a race.
inline LC_EMULATION_THREAD_LOCAL std::atomic<ThreadOwn*> running_thread{nullptr};
inline ThreadOwn& this_cuda_thread() { return *running_thread.load(std::memory_order_relaxed); }
#define threadIdx (this_cuda_thread().index)

inline void check_aligned(const void* pointer, std::uintptr_t bytes, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(pointer) % bytes != 0) fail(what);
}

inline WarpExchange& this_warp() { return warps[threadIdx.x / 32]; }
inline int lane_id() { return static_cast<int>(threadIdx.x % 32); }
inline void sync_warp() { this_warp().barrier->arrive_and_wait(); }
// The slots of this warp-level instruction.
inline WarpSlots& next_warp_slots() {
  return this_warp().turns[this_cuda_thread().warp_instructions++ % 2];
}

#if LC_EMULATION_FIBERS
// switch_stack(&from, to): pushes the callee-saved registers on this stack, saves its pointer
// in `from`, takes `to` as the stack and pops what a switch away from it pushed. Not
// swapcontext: that saves the signal mask, a system call at every switch (8.5 s of the CI
// cases' 21.6). Weak: every binary that includes this header defines it. (A ret onto another
// stack: a process that turns on CET shadow stacks could not run it.)
extern "C" void lc_emulation_switch_stack(void** from, void* to);
asm(R"(
  .pushsection .text, "ax", @progbits
  .p2align 4
  .weak lc_emulation_switch_stack
  .type lc_emulation_switch_stack, @function
lc_emulation_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size lc_emulation_switch_stack, .-lc_emulation_switch_stack
  .popsection
)");

// A CTA thread as a fiber: its saved stack pointer and stack, and its own variables.
struct FiberLane {
  void* stack_pointer = nullptr;
  unsigned char* stack = nullptr;
  ThreadOwn own;
  void* fake_stack = nullptr;  // ASan's, while the fiber is switched out
  void* tsan_fiber = nullptr;  // ThreadSanitizer's
  std::atomic<bool> done{false};  // set by the fiber, read by the scheduler (see running_thread)
};

// A fiber's stack: four times what the kernels' frames take under ASan (every case ran in 64 KB),
// with a guard page below it, so that an overflow faults. Not more: under ASan each CTA clears
// its fibers' stacks (fresh_fiber_stack), and at 1 MB that took a fifth of the time.
constexpr size_t kFiberStackBytes = size_t(1) << 18;
constexpr size_t kGuardBytes = 4096;

// The lanes, kept from launch to launch (a deque grows without moving them). Stacks mapped and
// unmapped at every launch, and ThreadSanitizer's fibers made and destroyed, had taken more than
// a third of ThreadSanitizer's time (CI's cases 25 -> 16 s, 9 s of them system time): each
// unmapping clears the stack's shadow, which the next launch's fibers fault back in.
inline std::deque<FiberLane> fiber_lanes;

inline void make_lanes(unsigned int threads) {
  while (fiber_lanes.size() < threads) {
    FiberLane& lane = fiber_lanes.emplace_back();
    void* mapped = mmap(nullptr, kGuardBytes + kFiberStackBytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mapped == MAP_FAILED) fail("no memory for a fiber's stack");
    if (mprotect(mapped, kGuardBytes, PROT_NONE) != 0)
      fail("cannot protect a fiber stack's guard page");
    lane.stack = static_cast<unsigned char*>(mapped) + kGuardBytes;
#if defined(LC_EMULATION_TSAN)
    lane.tsan_fiber = __tsan_create_fiber(0);
#endif
  }
}

inline void* scheduler_stack_pointer = nullptr;
inline std::atomic<FiberLane*> running_lane{nullptr};  // as running_thread
inline void (*fiber_body)(void*) = nullptr;
inline void* fiber_argument = nullptr;
// The launching thread's stack, for ASan's annotations of switches back to it.
inline const void* scheduler_stack = nullptr;
inline size_t scheduler_stack_bytes = 0;
inline void* scheduler_fake_stack = nullptr;
inline void* scheduler_tsan_fiber = nullptr;  // the launching thread, to ThreadSanitizer

// ASan keeps a shadow of each stack: every switch between stacks is announced before and
// confirmed after, or it would see the fibers' frames as overflows of the launching thread's.
inline void starting_switch(void** fake_stack, const void* stack, size_t bytes) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(fake_stack, stack, bytes);
#else
  (void)fake_stack, (void)stack, (void)bytes;
#endif
}
inline void finished_switch(void* fake_stack, const void** from, size_t* from_bytes) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake_stack, from, from_bytes);
#else
  (void)fake_stack, (void)from, (void)from_bytes;
#endif
}

// ThreadSanitizer is told of each switch just before it, and sees each fiber as a thread. A
// switch into a fiber orders what the scheduler did before it (a CTA's shared memory set to
// 0xFF, the lanes reset) before what the fiber does next. A switch back orders nothing, so that
// the fibers are ordered among themselves by the barriers' atomics alone, as a GPU's threads
// are by __syncthreads: two threads' accesses between the same two barriers stay unordered,
// whichever ran first here. What a fiber did reaches the scheduler when its CTA ends (run_ctas).
// Always inlined: the frame that calls it must be the one that switches stacks, or its return
// would pop an entry from the other fiber's shadow call stack.
__attribute__((always_inline)) inline void tsan_switch_to(void* fiber, bool ordering) {
#if defined(LC_EMULATION_TSAN)
  __tsan_switch_to_fiber(fiber, ordering ? 0 : __tsan_switch_to_fiber_no_sync);
#else
  (void)fiber, (void)ordering;
#endif
}

inline void yield_to_scheduler() {
  FiberLane& lane = *running_lane.load(std::memory_order_relaxed);
  tsan_switch_to(scheduler_tsan_fiber, false);
  starting_switch(&lane.fake_stack, scheduler_stack, scheduler_stack_bytes);
  lc_emulation_switch_stack(&lane.stack_pointer, scheduler_stack_pointer);
  finished_switch(lane.fake_stack, &scheduler_stack, &scheduler_stack_bytes);
}

inline void switch_to_fiber(FiberLane& lane) {
  running_lane.store(&lane, std::memory_order_relaxed);
  running_thread.store(&lane.own, std::memory_order_relaxed);
  tsan_switch_to(lane.tsan_fiber, true);
  starting_switch(&scheduler_fake_stack, lane.stack, kFiberStackBytes);
  lc_emulation_switch_stack(&scheduler_stack_pointer, lane.stack_pointer);
  finished_switch(scheduler_fake_stack, nullptr, nullptr);
}

// Where a fiber starts (the first switch to it "returns" here); it never returns, and once its
// thread has ended it is never switched to again. Not instrumented by ThreadSanitizer: each CTA
// would leave one more entry of it on the fiber's shadow call stack.
[[noreturn]] __attribute__((no_sanitize("thread"))) inline void fiber_start() {
  finished_switch(nullptr, &scheduler_stack, &scheduler_stack_bytes);
  fiber_body(fiber_argument);
  FiberLane& lane = *running_lane.load(std::memory_order_relaxed);
  lane.done.store(true, std::memory_order_relaxed);
#if defined(LC_EMULATION_TSAN)
  __tsan_release(&lane);  // what this thread did, for the scheduler at the CTA's end
#endif
  tsan_switch_to(scheduler_tsan_fiber, false);
  starting_switch(nullptr, scheduler_stack, scheduler_stack_bytes);  // this fiber's end
  void* ended;
  lc_emulation_switch_stack(&ended, scheduler_stack_pointer);
  __builtin_unreachable();
}

// A fresh fiber's stack as a switch away from it would have left it: six registers' slots,
// then fiber_start as the return address, 16-byte aligned as at a call's entry. Under ASan the
// redzones of the frames a thread of the last CTA left there (a fiber's frames never return)
// are cleared first.
inline void* fresh_fiber_stack(unsigned char* stack) {
  ASAN_UNPOISON_MEMORY_REGION(stack, kFiberStackBytes);
  auto** top = reinterpret_cast<void**>(stack + kFiberStackBytes);
  *--top = nullptr;  // fiber_start's own return address: it never returns
  *--top = reinterpret_cast<void*>(&fiber_start);
  for (int r = 0; r < 6; ++r) *--top = nullptr;
  return top;
}

// The CTAs one after another; within one, each thread runs as a fiber until it waits at a
// barrier (or ends), threads 0, 1, 2, ... in turn, round after round until all have ended. A
// round in which no thread arrives at a barrier or ends can only repeat: the threads wait at
// barriers that not all of them reach.
template <typename Kernel, typename... Args>
void run_ctas(dim3 grid, unsigned int threads, size_t shared_bytes, Kernel kernel,
              Args... args) {
  make_lanes(threads);
#if defined(LC_EMULATION_TSAN)
  scheduler_tsan_fiber = __tsan_get_current_fiber();
#endif
  auto body = [&] { kernel(args...); };
  fiber_body = [](void* run) { (*static_cast<decltype(body)*>(run))(); };
  fiber_argument = &body;
  for (unsigned int z = 0; z < grid.z; ++z)
    for (unsigned int y = 0; y < grid.y; ++y)
      for (unsigned int x = 0; x < grid.x; ++x) {
        blockIdx = {x, y, z};
        if (shared_bytes > 0) std::memset(dynamic_shared_bytes, 0xFF, shared_bytes);
        for (unsigned int t = 0; t < threads; ++t) {
          FiberLane& lane = fiber_lanes[t];
          lane.own.start_cta(t);
          lane.done.store(false, std::memory_order_relaxed);
          lane.stack_pointer = fresh_fiber_stack(lane.stack);
        }
        for (unsigned int live = threads; live > 0;) {
          const unsigned long arrivals = barrier_arrivals.load(std::memory_order_relaxed);
          const unsigned int live_before = live;
          for (unsigned int t = 0; t < threads; ++t) {
            FiberLane& lane = fiber_lanes[t];
            if (lane.done.load(std::memory_order_relaxed)) continue;
            switch_to_fiber(lane);
            live -= lane.done.load(std::memory_order_relaxed);
          }
          if (live > 0 && live == live_before &&
              barrier_arrivals.load(std::memory_order_relaxed) == arrivals)
            fail("deadlock: the CTA's threads wait at barriers that not all of them reach");
        }
#if defined(LC_EMULATION_TSAN)
        for (unsigned int t = 0; t < threads; ++t)
          __tsan_acquire(&fiber_lanes[t]);  // the CTA's end (fiber_start)
#endif
      }
  running_lane.store(nullptr, std::memory_order_relaxed);
  running_thread.store(nullptr, std::memory_order_relaxed);
}
#else
// The same `threads` threads run every CTA in turn, meeting at the CTA's barrier after each, so
// that no thread starts the next CTA (and reuses the static shared memory) before all are done.
template <typename Kernel, typename... Args>
void run_ctas(dim3 grid, unsigned int threads, size_t shared_bytes, Kernel kernel,
              Args... args) {
  Barrier& barrier = *cta_barrier;
  std::vector<std::thread> cta;
  for (unsigned int t = 0; t < threads; ++t)
    cta.emplace_back([&, t] {
      ThreadOwn own;
      running_thread.store(&own, std::memory_order_relaxed);
      for (unsigned int z = 0; z < grid.z; ++z)
        for (unsigned int y = 0; y < grid.y; ++y)
          for (unsigned int x = 0; x < grid.x; ++x) {
            blockIdx = {x, y, z};
            own.start_cta(t);
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
#endif

// A launch: <<<grid, threads, shared_bytes>>>, the dynamic shared memory the launch asks for
// set up as the hardware would check it, then the CTAs in turn (run_ctas).
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
  run_ctas(grid, threads, shared_bytes, kernel, args...);
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
    this_cuda_thread().uncommitted_copies.push_back(copy);
  }
}

inline void commit_async_copies() {
  if (copy_completion == CopyCompletion::immediate) return;
  ThreadOwn& own = this_cuda_thread();
  own.committed_copy_groups.push_back(std::move(own.uncommitted_copies));
  own.uncommitted_copies.clear();
}

// cp.async.wait_group PENDING: lands all but the PENDING most recent committed groups.
template <int PENDING>
void wait_async_copies() {
  auto& groups = this_cuda_thread().committed_copy_groups;
  while (groups.size() > PENDING) {
    for (const CopyInFlight& copy : groups.front()) std::memcpy(copy.shared, copy.bytes, 16);
    groups.pop_front();
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
