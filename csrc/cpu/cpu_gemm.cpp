// The CPU kernels' GEMM. ATen's own BLAS entry points (at::native::cpublas::gemm and its stubs)
// are not exported from libtorch, so each call goes to the BLAS that torch links where libtorch
// exports it (MKL in the x86 wheels: sgemm_, dgemm_, cblas_gemm_bf16bf16f32,
// cblas_gemm_f16f16f32), found through weak symbols, and to at::mm on views otherwise.
#include "cpu_gemm.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>

#include <limits>
#include <vector>

extern "C" {
// The LP64 BLAS and MKL CBLAS interfaces; weak, so that a torch without them still loads us.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                            const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                            float* c, int ldc) __attribute__((weak));
void cblas_gemm_f16f16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                          const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                          float* c, int ldc) __attribute__((weak));
// MKL's per-thread thread count (its C interface; the lower-case symbol is the Fortran one):
// returns the previous count, 0 meaning the global setting.
int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));
}

namespace lc_cuda {
namespace cpu {
namespace {

constexpr int cblas_column_major = 102, cblas_no_trans = 111, cblas_trans = 112;

int as_int(int64_t value) {
  TORCH_INTERNAL_ASSERT(value <= std::numeric_limits<int>::max(), "GEMM size ", value,
                        " exceeds the BLAS's 32-bit range");
  return static_cast<int>(value);
}

template <typename blas_t, typename scalar_t, typename out_t>
void blas_gemm(blas_t* function, bool transpose_a, bool transpose_b, int64_t m, int64_t n,
               int64_t k, const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb,
               bool accumulate, out_t* c, int64_t ldc) {
  const char ta = transpose_a ? 'T' : 'N', tb = transpose_b ? 'T' : 'N';
  const int im = as_int(m), in = as_int(n), ik = as_int(k);
  const int ilda = as_int(lda), ildb = as_int(ldb), ildc = as_int(ldc);
  const out_t alpha = 1, beta = accumulate ? 1 : 0;
  function(&ta, &tb, &im, &in, &ik, &alpha, a, &ilda, b, &ildb, &beta, c, &ildc);
}

template <typename cblas_t, typename scalar_t>
void cblas_mixed_gemm(cblas_t* function, bool transpose_a, bool transpose_b, int64_t m, int64_t n,
                      int64_t k, const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb,
                      bool accumulate, float* c, int64_t ldc) {
  function(cblas_column_major, transpose_a ? cblas_trans : cblas_no_trans,
           transpose_b ? cblas_trans : cblas_no_trans, as_int(m), as_int(n), as_int(k), 1.0f,
           reinterpret_cast<const uint16_t*>(a), as_int(lda),
           reinterpret_cast<const uint16_t*>(b), as_int(ldb), accumulate ? 1.0f : 0.0f, c,
           as_int(ldc));
}

// The portable path: the same product by at::mm on views of the operands (in the output's type),
// for a torch whose BLAS is not exported. Slower (a dispatch per call), never wrong.
template <typename scalar_t, typename out_t>
void aten_gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k,
               const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb, bool accumulate,
               out_t* c, int64_t ldc) {
  const auto in_type = at::dtype(c10::CppTypeToScalarType<scalar_t>::value);
  const auto out_type = at::dtype(c10::CppTypeToScalarType<out_t>::value);
  const auto column_major = [](bool transposed, int64_t ld) {
    return transposed ? std::vector<int64_t>{ld, 1} : std::vector<int64_t>{1, ld};
  };
  const at::Tensor op_a =
      at::from_blob(const_cast<scalar_t*>(a), {m, k}, column_major(transpose_a, lda), in_type);
  const at::Tensor op_b =
      at::from_blob(const_cast<scalar_t*>(b), {k, n}, column_major(transpose_b, ldb), in_type);
  at::Tensor product = at::mm(op_a.to(out_type.dtype()), op_b.to(out_type.dtype()));
  at::Tensor target = at::from_blob(c, {m, n}, column_major(false, ldc), out_type);
  if (accumulate)
    target.add_(product);
  else
    target.copy_(product);
}

}  // namespace

SingleThreadedBlas::SingleThreadedBlas()
    : previous_(MKL_Set_Num_Threads_Local != nullptr ? MKL_Set_Num_Threads_Local(1) : 0) {}

SingleThreadedBlas::~SingleThreadedBlas() {
  if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous_);
}

void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const double* a,
          int64_t lda, const double* b, int64_t ldb, bool accumulate, double* c, int64_t ldc) {
  if (dgemm_ != nullptr)
    return blas_gemm(dgemm_, transpose_a, transpose_b, m, n, k, a, lda, b, ldb, accumulate, c,
                     ldc);
  aten_gemm(transpose_a, transpose_b, m, n, k, a, lda, b, ldb, accumulate, c, ldc);
}

void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const float* a,
          int64_t lda, const float* b, int64_t ldb, bool accumulate, float* c, int64_t ldc) {
  if (sgemm_ != nullptr)
    return blas_gemm(sgemm_, transpose_a, transpose_b, m, n, k, a, lda, b, ldb, accumulate, c,
                     ldc);
  aten_gemm(transpose_a, transpose_b, m, n, k, a, lda, b, ldb, accumulate, c, ldc);
}

void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k,
          const c10::BFloat16* a, int64_t lda, const c10::BFloat16* b, int64_t ldb,
          bool accumulate, float* c, int64_t ldc) {
  if (cblas_gemm_bf16bf16f32 != nullptr)
    return cblas_mixed_gemm(cblas_gemm_bf16bf16f32, transpose_a, transpose_b, m, n, k, a, lda, b,
                            ldb, accumulate, c, ldc);
  aten_gemm(transpose_a, transpose_b, m, n, k, a, lda, b, ldb, accumulate, c, ldc);
}

void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const c10::Half* a,
          int64_t lda, const c10::Half* b, int64_t ldb, bool accumulate, float* c, int64_t ldc) {
  if (cblas_gemm_f16f16f32 != nullptr)
    return cblas_mixed_gemm(cblas_gemm_f16f16f32, transpose_a, transpose_b, m, n, k, a, lda, b,
                            ldb, accumulate, c, ldc);
  aten_gemm(transpose_a, transpose_b, m, n, k, a, lda, b, ldb, accumulate, c, ldc);
}

}  // namespace cpu
}  // namespace lc_cuda
