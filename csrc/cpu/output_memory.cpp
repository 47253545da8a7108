// Huge-page blocks for the CPU kernels' large outputs, kept for reuse when their tensors are freed.
#include "output_memory.h"

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__unix__)
#include <pthread.h>
#endif

#include "cpu_blocking.h"

namespace lc_cuda {
namespace cpu {

namespace {

constexpr size_t kHugePage = size_t(2) << 20;

// A request (Linux only) that the whole huge pages inside [start, start + bytes) be backed by
// huge pages when first touched; never memory outside the range. Only a hint: where transparent
// huge pages are off, nothing changes but speed.
void advise_huge_pages(const void* start, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto begin = reinterpret_cast<uintptr_t>(start);
  const uintptr_t first = (begin + kHugePage - 1) / kHugePage * kHugePage;
  const uintptr_t last = (begin + bytes) / kHugePage * kHugePage;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)start;
  (void)bytes;
#endif
}

// The smallest output kept. Above glibc's largest mmap threshold (32 MiB on 64-bit) every block
// is a fresh mapping; below it glibc may reuse a freed block, or may give the top of its heap
// back to the system when the block is freed, and the next call faults its pages in afresh
// (genomics_1d_50k's 6.4 MB grad_input, zeroed: 750 page faults a call). Whole processes,
// forward+backward, kept from 1 MiB against from 32 MiB: genomics 0.53-0.96, cunn232_c1
// 0.61-0.91 (its 16.8 MB output), the other cases 0.83-1.05.
constexpr int64_t kKeptFrom = int64_t(1) << 20;

// A kept or handed-out block. The node travels with its block (it is the DataPtr's context), so
// that keeping a block allocates nothing.
struct Block {
  void* data;
  size_t bytes;
  Block* older = nullptr;
  Block* newer = nullptr;
};

// A c10 allocator whose deleter keeps the freed block (the tensors it makes are ordinary
// resizable CPU tensors; a storage resized below kKeptFrom goes to the CPU allocator). Never
// destroyed: a tensor may outlive static destruction.
class KeptBlocks final : public c10::Allocator {
 public:
  static KeptBlocks& instance() {
    static KeptBlocks* blocks = [] {
      auto* created = new KeptBlocks();
#if defined(__unix__)
      // A child forked while another thread held the lock would wait on it forever.
      pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                     [] { instance().mutex_.unlock(); });
#endif
      return created;
    }();
    return *blocks;
  }

  // Read at every output, where an error can be raised (a deleter must not throw); blocks kept
  // beyond a lowered limit are freed now.
  void set_limit(size_t bytes) {
    limit_.store(bytes, std::memory_order_relaxed);
    trim(bytes);
  }

  c10::DataPtr allocate(size_t bytes) override {
    if (bytes < static_cast<size_t>(kKeptFrom)) {
      return c10::GetCPUAllocator()->allocate(bytes);
    }
    Block* block = take(bytes);
    if (block == nullptr) block = new Block{fresh(bytes), bytes};
    return {block->data, block, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  size_t kept_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return kept_bytes_;
  }

 private:
  // The newest kept block of exactly `bytes`, unlinked, or null.
  Block* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Block* block = newest_; block != nullptr; block = block->older) {
      if (block->bytes != bytes) continue;
      unlink_locked(block);
      return block;
    }
    return nullptr;
  }

  // A fresh block; where memory runs out, once more after freeing every kept block.
  void* fresh(size_t bytes) {
    void* data = nullptr;
    // A block of a huge page or more starts on one, so that all its pages can be huge.
    const size_t alignment = bytes >= kHugePage ? kHugePage : 64;
    if (posix_memalign(&data, alignment, bytes) != 0) {
      trim(0);
      TORCH_CHECK(posix_memalign(&data, alignment, bytes) == 0,
                  "lc_cuda CPU kernels: could not allocate an output of ", bytes, " bytes");
    }
    advise_huge_pages(data, bytes);
    return data;
  }

  // The deleter: nothing here allocates or throws.
  static void give_back(void* context) noexcept {
    auto* block = static_cast<Block*>(context);
    KeptBlocks& self = instance();
    const size_t limit = self.limit_.load(std::memory_order_relaxed);
    Block* dropped = nullptr;
    if (block->bytes > limit) {
      block->older = nullptr;
      dropped = block;
    } else {
      std::lock_guard<std::mutex> lock(self.mutex_);
      block->older = self.newest_;
      block->newer = nullptr;
      (self.newest_ != nullptr ? self.newest_->newer : self.oldest_) = block;
      self.newest_ = block;
      self.kept_bytes_ += block->bytes;
      dropped = self.trim_locked(limit);
    }
    free_chain(dropped);  // outside the lock
  }

  void unlink_locked(Block* block) {
    (block->older != nullptr ? block->older->newer : oldest_) = block->newer;
    (block->newer != nullptr ? block->newer->older : newest_) = block->older;
    kept_bytes_ -= block->bytes;
    block->older = block->newer = nullptr;
  }

  // Frees the oldest kept blocks until at most `limit` bytes are kept (outside the lock).
  void trim(size_t limit) {
    std::unique_lock<std::mutex> lock(mutex_);
    Block* dropped = trim_locked(limit);
    lock.unlock();
    free_chain(dropped);
  }

  // Unlinks the oldest blocks until at most `limit` bytes are kept; returns them chained
  // through `older`.
  Block* trim_locked(size_t limit) {
    Block* dropped = nullptr;
    while (kept_bytes_ > limit) {
      Block* oldest = oldest_;
      unlink_locked(oldest);
      oldest->older = dropped;
      dropped = oldest;
    }
    return dropped;
  }

  static void free_chain(Block* block) noexcept {
    while (block != nullptr) {
      Block* next = block->older;
      std::free(block->data);
      delete block;
      block = next;
    }
  }

  std::mutex mutex_;
  Block* oldest_ = nullptr;
  Block* newest_ = nullptr;
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
  if (bytes >= kKeptFrom) {
    return at::detail::empty_generic(sizes, &blocks, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     dtype, std::nullopt);
  }
  at::Tensor tensor = at::empty(sizes, options);
  advise_huge_pages(tensor.data_ptr(), tensor.nbytes());
  return tensor;
}

int64_t kept_output_bytes() { return static_cast<int64_t>(KeptBlocks::instance().kept_bytes()); }

}  // namespace cpu
}  // namespace lc_cuda
