// Outputs large enough that first touching their pages costs more than computing into them.
#pragma once

#include <ATen/core/Tensor.h>

namespace lc_cuda {
namespace cpu {

// at::empty, and where the tensor spans whole 2 MiB huge pages, a request (madvise
// MADV_HUGEPAGE, Linux only) that the kernel back those with huge pages when they are first
// touched. A fresh multi-hundred-MB output (grad_weight is the size of the weight) otherwise takes
// one page fault per 4 KiB: on DeepFace L4 (N=8) grad_weight took 164 ms on 4 KiB pages and 50 ms
// on huge pages (benchmarks/NOTES.md). Only a hint: where transparent huge pages are off, or the
// memory was touched before, nothing changes.
at::Tensor empty_on_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace cpu
}  // namespace lc_cuda
