// The one GEMM the CPU kernels call: column-major C = op(A) op(B) (+ C), in the accumulation type
// (float for float16 and bfloat16 inputs).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace lc_cuda {
namespace cpu {

// Inside a parallel loop each thread's GEMMs must run on that thread alone: MKL would otherwise
// open a nested OpenMP team per call, whose threads spin against the loop's own (measured: 10x
// slower on 2 threads). Holds MKL to one thread on the calling thread for its lifetime.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas();
  ~SingleThreadedBlas();
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int previous_;
};

// op(A) is m x k, op(B) k x n, C m x n; leading dimensions as BLAS takes them.
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const double* a,
          int64_t lda, const double* b, int64_t ldb, bool accumulate, double* c, int64_t ldc);
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const float* a,
          int64_t lda, const float* b, int64_t ldb, bool accumulate, float* c, int64_t ldc);
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k,
          const c10::BFloat16* a, int64_t lda, const c10::BFloat16* b, int64_t ldb,
          bool accumulate, float* c, int64_t ldc);
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const c10::Half* a,
          int64_t lda, const c10::Half* b, int64_t ldb, bool accumulate, float* c, int64_t ldc);

}  // namespace cpu
}  // namespace lc_cuda
