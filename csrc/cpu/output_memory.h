// Where the CPU kernels' outputs live: large ones on transparent huge pages, in blocks that are
// kept when their tensors are freed and handed to the next output of the same size.
#pragma once

#include <ATen/core/Tensor.h>

namespace lc_cuda {
namespace cpu {

// A contiguous tensor for a kernel to write in full. Below 2 MiB it is at::empty's. From 2 MiB
// on it is a block aligned to 2 MiB pages with a request (madvise MADV_HUGEPAGE, Linux only)
// that the kernel back them with huge pages, and when the tensor is freed the block is kept, up
// to LC_CUDA_CPU_KEEP_MB of kept blocks in all (default 1024, 0 keeps none; the oldest go first),
// for the next output of exactly its size. A fresh block costs a page fault per page first
// touched: above glibc's largest mmap threshold (32 MiB) every block is fresh, so that
// medvol_32cube_c2's 56 MiB grad_weight took 15 ms on 4 KiB pages and 5-65 ms on huge pages
// (the slow calls waiting on the hypervisor for never-touched memory) against 4 ms in a kept
// block (benchmarks/NOTES.md). The contents are left as they were: the kernels write every
// element.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace cpu
}  // namespace lc_cuda
