// Where the CPU kernels' outputs live: on transparent huge pages, the largest in blocks that are
// kept when their tensors are freed and handed to the next output of the same size.
#pragma once

#include <ATen/core/Tensor.h>

namespace lc_cuda {
namespace cpu {

// A contiguous tensor for a kernel to write in full, with a request (madvise MADV_HUGEPAGE,
// Linux only) that the kernel back its whole 2 MiB pages with huge pages when first touched.
// Below 1 MiB it is at::empty's. From there, glibc may hand out fresh memory each call, a page
// fault per page first touched: above 32 MiB always (medvol_32cube_c2's 56 MiB grad_weight took
// 15 ms on 4 KiB pages and 5-65 ms on huge pages, the slow calls waiting on the hypervisor for
// never-touched memory, against a kernel of 4 ms), below it whenever freeing the block gave the
// heap's top back (genomics_1d_50k's 6.4 MB grad_input). So such a block is kept when its tensor
// is freed, up to LC_CUDA_CPU_KEEP_MB of kept blocks in all (default 1024, 0 keeps none; the
// oldest go first), for the next output of exactly its size (benchmarks/NOTES.md). The contents
// are left as they were: the kernels write every element.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Bytes of freed outputs kept now (lc_cuda._C.kept_output_bytes, for tests).
int64_t kept_output_bytes();

}  // namespace cpu
}  // namespace lc_cuda
