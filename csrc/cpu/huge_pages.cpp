// Asking for transparent huge pages under the CPU kernels' large outputs.
#include "huge_pages.h"

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace lc_cuda {
namespace cpu {

at::Tensor empty_on_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor tensor = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t huge_page = uintptr_t(2) << 20;
  const auto start = reinterpret_cast<uintptr_t>(tensor.data_ptr());
  const uintptr_t end = start + tensor.nbytes();
  const uintptr_t first = (start + huge_page - 1) / huge_page * huge_page;
  const uintptr_t last = end / huge_page * huge_page;
  // The advice covers only the whole huge pages inside the tensor, never memory it does not own.
  // Its failure (a kernel without transparent huge pages) changes nothing but speed.
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return tensor;
}

}  // namespace cpu
}  // namespace lc_cuda
