// The vector kernels (vector_kernels.h, vector_kernels_impl.h) on AVX2 + FMA: 8 float lanes,
// 16 registers.
#include "avx2_vectors.h"

#define LC_VECTOR_TARGET LC_AVX2
#define LC_VECTOR_TRAITS Avx2
#define LC_VECTOR_NAMESPACE avx2
#include "vector_kernels_impl.h"
