// The choice of the CPU kernels' products. Each level needs the instructions its kernels are
// compiled for (the target attributes of avx2_vectors.h, avx512_vectors.h and
// avx512_bf16_kernels.cpp), so that forcing one on a CPU without them is an error, never an
// illegal instruction.
#include "product_isa.h"

#include <c10/util/Exception.h>

#include <array>
#include <cstdlib>
#include <string>

namespace lc_cuda {
namespace cpu {
namespace {

constexpr std::array<ProductIsa, 4> kLevels{ProductIsa::blas, ProductIsa::avx2,
                                            ProductIsa::avx512, ProductIsa::avx512_bf16};

// What each level needs, as the CPU names it (GCC's __builtin_cpu_supports checks the operating
// system's support of the registers too).
bool cpu_runs(ProductIsa isa) {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  switch (isa) {
    case ProductIsa::blas:
      return true;
    case ProductIsa::avx2:
      return avx2;
    case ProductIsa::avx512:
      return avx512;
    case ProductIsa::avx512_bf16:
      return avx512 && __builtin_cpu_supports("avx512bf16");
  }
  return false;
}

const char* requirement(ProductIsa isa) {
  switch (isa) {
    case ProductIsa::blas:
      return "nothing";
    case ProductIsa::avx2:
      return "AVX2, FMA and F16C";
    case ProductIsa::avx512:
      return "AVX-512F, AVX-512BW, AVX-512VL, AVX2, FMA and F16C";
    case ProductIsa::avx512_bf16:
      return "AVX512-BF16 besides AVX-512F, AVX-512BW, AVX-512VL, AVX2, FMA and F16C";
  }
  return "";
}

}  // namespace

const char* product_isa_name(ProductIsa isa) {
  switch (isa) {
    case ProductIsa::blas:
      return "blas";
    case ProductIsa::avx2:
      return "avx2";
    case ProductIsa::avx512:
      return "avx512";
    case ProductIsa::avx512_bf16:
      return "avx512_bf16";
  }
  return "";
}

ProductIsa best_product_isa() {
  static const ProductIsa best = [] {
    ProductIsa found = ProductIsa::blas;
    for (ProductIsa isa : kLevels)
      if (cpu_runs(isa)) found = isa;
    return found;
  }();
  return best;
}

ProductIsa product_isa(Backend chosen) {
  if (chosen == Backend::ffma) return ProductIsa::blas;
  const char* value = std::getenv("LC_CUDA_CPU_ISA");
  const std::string name = value == nullptr ? "" : value;
  if (name.empty() || name == "auto") return best_product_isa();
  for (ProductIsa isa : kLevels) {
    if (name != product_isa_name(isa)) continue;
    TORCH_CHECK(isa <= best_product_isa(), "LC_CUDA_CPU_ISA=", name, " needs a CPU with ",
                requirement(isa), "; this CPU runs at most '",
                product_isa_name(best_product_isa()), "'");
    return isa;
  }
  TORCH_CHECK(false,
              "LC_CUDA_CPU_ISA must be 'auto', 'avx512_bf16', 'avx512', 'avx2' or 'blas' (or "
              "unset), got '",
              name, "'");
}

}  // namespace cpu
}  // namespace lc_cuda
