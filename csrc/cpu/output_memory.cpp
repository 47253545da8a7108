// Huge-page blocks for the CPU kernels' large outputs, kept for reuse when their tensors are freed.
#include "output_memory.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu_blocking.h"

namespace lc_cuda {
namespace cpu {

namespace {

constexpr size_t kHugePage = size_t(2) << 20;

// glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): below it glibc comes to
// reuse freed blocks of a size by itself; above it every block is a fresh mapping. Kept blocks
// below it were slower (genomics_1d_50k's 6.4 MB outputs: forward+backward 1.10x).
constexpr int64_t kKeptAbove = int64_t(32) << 20;

struct Block {
  void* data;
  size_t bytes;
};

// A c10 allocator whose deleter keeps the freed block (the tensors it makes are ordinary
// resizable CPU tensors). Never destroyed: a tensor may outlive static destruction.
class KeptBlocks final : public c10::Allocator {
 public:
  static KeptBlocks& instance() {
    static KeptBlocks* blocks = new KeptBlocks();
    return *blocks;
  }

  // Read at every output, where an error can be raised (a deleter must not throw).
  void set_limit(size_t bytes) { limit_.store(bytes, std::memory_order_relaxed); }

  c10::DataPtr allocate(size_t bytes) override {
    void* data = take(bytes);
    if (data == nullptr) data = fresh(bytes);
    return {data, new Block{data, bytes}, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  // The newest kept block of exactly `bytes`, or null.
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t b = kept_.size(); b-- > 0;) {
      if (kept_[b].bytes != bytes) continue;
      void* data = kept_[b].data;
      kept_bytes_ -= bytes;
      kept_.erase(kept_.begin() + static_cast<std::ptrdiff_t>(b));
      return data;
    }
    return nullptr;
  }

  static void* fresh(size_t bytes) {
    void* data = nullptr;
    TORCH_CHECK(posix_memalign(&data, kHugePage, bytes) == 0,
                "lc_cuda CPU kernels: could not allocate an output of ", bytes, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // Only a hint: where transparent huge pages are off, nothing changes but speed.
    const size_t whole_pages = bytes / kHugePage * kHugePage;
    if (whole_pages > 0) madvise(data, whole_pages, MADV_HUGEPAGE);
#endif
    return data;
  }

  static void give_back(void* context) {
    std::unique_ptr<Block> block(static_cast<Block*>(context));
    KeptBlocks& self = instance();
    const size_t limit = self.limit_.load(std::memory_order_relaxed);
    std::vector<void*> dropped;
    {
      std::lock_guard<std::mutex> lock(self.mutex_);
      if (block->bytes <= limit) {
        size_t oldest = 0;
        while (self.kept_bytes_ + block->bytes > limit) {
          dropped.push_back(self.kept_[oldest].data);
          self.kept_bytes_ -= self.kept_[oldest].bytes;
          ++oldest;
        }
        self.kept_.erase(self.kept_.begin(),
                         self.kept_.begin() + static_cast<std::ptrdiff_t>(oldest));
        self.kept_.push_back(*block);
        self.kept_bytes_ += block->bytes;
      } else {
        dropped.push_back(block->data);
      }
    }
    for (void* data : dropped) std::free(data);  // outside the lock
  }

  std::mutex mutex_;
  std::vector<Block> kept_;  // oldest first
  size_t kept_bytes_ = 0;
  std::atomic<size_t> limit_{0};
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const auto dtype = c10::typeMetaToScalarType(options.dtype());
  int64_t bytes = static_cast<int64_t>(c10::elementSize(dtype));
  for (const int64_t size : sizes) bytes *= size;
  KeptBlocks& blocks = KeptBlocks::instance();
  blocks.set_limit(static_cast<size_t>(megabytes_setting("LC_CUDA_CPU_KEEP_MB", 1024, true)));
  if (bytes > kKeptAbove) {
    return at::detail::empty_generic(sizes, &blocks, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     dtype, std::nullopt);
  }
  at::Tensor tensor = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // The advice covers only the whole huge pages inside the tensor, never memory it does not own.
  const auto start = reinterpret_cast<uintptr_t>(tensor.data_ptr());
  const uintptr_t first = (start + kHugePage - 1) / kHugePage * kHugePage;
  const uintptr_t last = (start + tensor.nbytes()) / kHugePage * kHugePage;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return tensor;
}

}  // namespace cpu
}  // namespace lc_cuda
