// The vector kernels (vector_kernels.h, vector_kernels_impl.h) on AVX-512: 16 float lanes,
// 32 registers.
#include "avx512_vectors.h"

#define LC_VECTOR_TARGET LC_AVX512
#define LC_VECTOR_TRAITS Avx512
#define LC_VECTOR_NAMESPACE avx512
// bfloat16's forward row tiles by vdpbf16ps (avx512_bf16's blocks) run this ISA's driver.
#define LC_VECTOR_PAIR_ROW_TILES
#include "vector_kernels_impl.h"
