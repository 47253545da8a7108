// Which hand-written products a CPU call runs (ProductIsa): decided here alone, from what the CPU
// has and LC_CUDA_CPU_ISA.
#pragma once

#include "local_conv.h"

namespace lc_cuda {
namespace cpu {

// The best products this CPU (and its operating system) runs, detected once.
ProductIsa best_product_isa();

// The products of one call: the BLAS under LC_CUDA_BACKEND=ffma (chosen == Backend::ffma);
// otherwise LC_CUDA_CPU_ISA, read at every call: unset or 'auto', best_product_isa(); 'avx2',
// 'avx512', 'avx512_bf16' or 'blas', that one, an error where the CPU lacks it.
ProductIsa product_isa(Backend chosen);

// The variable's spelling of an ISA ("avx512_bf16").
const char* product_isa_name(ProductIsa isa);

}  // namespace cpu
}  // namespace lc_cuda
