// The warp-level instructions lc_cuda's tensor-core kernels use, as small inline-PTX functions:
// asynchronous 16-byte copies into shared memory, ldmatrix and mma.sync (m16n8k16, float
// accumulation). Torch-free, like the kernel headers.
//
// tests/emulation/cuda_on_cpu.h defines LC_CUDA_EMULATION and its own versions of these
// functions, written from the PTX ISA's fragment-layout tables, so that the kernels' source runs
// on the CPU. The definitions here are the ones a GPU runs.
#pragma once

#include <cstdint>

#ifndef LC_CUDA_EMULATION

#include <cuda_runtime.h>

// cp.async, ldmatrix and bf16 mma need sm_80. A build for older GPUs compiles these to traps,
// and the launcher never picks the tensor-core kernels there.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define LC_CUDA_HAS_TENSOR_CORE_PTX 1
#else
#define LC_CUDA_HAS_TENSOR_CORE_PTX 0
#endif

namespace lc_cuda {
namespace kernels {

__device__ inline unsigned char* dynamic_shared_memory() {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  return shared_bytes;
}

__device__ inline uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// Copies 16 bytes from global to shared memory without holding registers, or writes 16 zero
// bytes when `valid` is false (the source is then not read, but must still be a valid pointer).
// The "memory" clobbers here and in wait_async_copies keep the compiler from moving memory
// accesses across the copy or the wait: a thread that reads its own copies right after the wait,
// with no __syncthreads (itself a compiler fence) in between, then reads what landed. CUTLASS
// omits them; the kernels here have the barrier.
__device__ inline void copy_16_bytes_async(void* shared, const void* global, bool valid) {
#if LC_CUDA_HAS_TENSOR_CORE_PTX
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(shared)),
               "l"(global), "r"(valid ? 16 : 0)
               : "memory");
#else
  __trap();
#endif
}

__device__ inline void commit_async_copies() {
#if LC_CUDA_HAS_TENSOR_CORE_PTX
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most PENDING of this thread's committed copy groups are still in flight.
template <int PENDING>
__device__ inline void wait_async_copies() {
#if LC_CUDA_HAS_TENSOR_CORE_PTX
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
#endif
}

// ldmatrix.x4: lanes 8j..8j+7 give the addresses of the eight 16-byte rows of matrix j; each
// lane receives, in fragment[j], elements (g, 2t) and (g, 2t+1) of matrix j (row, column;
// g = lane / 4, t = lane % 4), the low half holding the first. TRANSPOSED (.trans): elements
// (2t, g) and (2t+1, g) instead.
template <bool TRANSPOSED>
__device__ inline void load_matrix_x4(uint32_t (&fragment)[4], const void* row) {
#if LC_CUDA_HAS_TENSOR_CORE_PTX
  if constexpr (TRANSPOSED) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(fragment[0]), "=r"(fragment[1]), "=r"(fragment[2]), "=r"(fragment[3])
                 : "r"(shared_address(row)));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(fragment[0]), "=r"(fragment[1]), "=r"(fragment[2]), "=r"(fragment[3])
                 : "r"(shared_address(row)));
  }
#else
  __trap();
#endif
}

// acc += a * b for a 16x16 (row-major) by 16x8 (column-major) product of float16 or bfloat16,
// in float; the fragment layouts are PTX's for mma.m16n8k16.
template <bool BFLOAT16>
__device__ inline void mma_16x8x16(float (&acc)[4], const uint32_t (&a)[4],
                                   const uint32_t (&b)[2]) {
#if LC_CUDA_HAS_TENSOR_CORE_PTX
  if constexpr (BFLOAT16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  __trap();
#endif
}

// A float rounded to TF32 (10 mantissa bits, to nearest, ties away from zero), as mma's .tf32
// operands take it: the same bits with the low 13 of the mantissa cleared.
__device__ inline uint32_t to_tf32(float value) {
#if LC_CUDA_HAS_TENSOR_CORE_PTX
  uint32_t rounded;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(rounded) : "f"(value));
  return rounded;
#else
  __trap();
  return 0;
#endif
}

// acc += a * b for a 16x8 (row-major) by 8x8 (column-major) product of TF32 values, in float;
// PTX's fragment layouts for mma.m16n8k8 .tf32: a = (A[g][t], A[g+8][t], A[g][t+4],
// A[g+8][t+4]), b = (B[t][g], B[t+4][g]).
__device__ inline void mma_16x8x8_tf32(float (&acc)[4], const uint32_t (&a)[4],
                                       const uint32_t (&b)[2]) {
#if LC_CUDA_HAS_TENSOR_CORE_PTX
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}

// Two neighbouring 16-bit elements of read-only global memory, 4-byte aligned, the first in the
// low half.
__device__ inline uint32_t load_pair(const void* global) {
  return __ldg(static_cast<const unsigned int*>(global));
}

// Stores two neighbouring 16-bit elements, 4-byte aligned, as one 32-bit store.
__device__ inline void store_pair(void* global, uint32_t pair) {
  *static_cast<uint32_t*>(global) = pair;
}

}  // namespace kernels
}  // namespace lc_cuda

#endif  // LC_CUDA_EMULATION
