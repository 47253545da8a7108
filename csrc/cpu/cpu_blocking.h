// How the CPU kernels cut one call into blocks that fit the scratch budget, and each thread's
// slice of that scratch.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <functional>

#include "local_conv.h"

namespace lc_cuda {
namespace cpu {

// The environment variable `name` as a number of megabytes (2^20 bytes, fractions allowed), in
// bytes: default_megabytes when unset or empty; an error naming it where it is not a number, or
// not positive (zero allowed where zero_allowed).
int64_t megabytes_setting(const char* name, double default_megabytes, bool zero_allowed);

// The scratch budget in bytes, for all threads of one call together: LC_CUDA_CPU_SCRATCH_MB
// (megabytes, 2^20 bytes, fractions allowed), 256 when unset. Read at every call.
int64_t scratch_budget_bytes();

// A pass works on `samples` samples at a time and stages `tile` neighbouring output locations of
// one output row at a time.
struct Blocking {
  int64_t samples;
  int64_t tile;
};

// A pass's blocking and its scratch, allocated once: `thread_bytes` for each of
// at::get_num_threads() threads, then `shared_bytes` that all threads write in disjoint parts.
struct PassScratch {
  Blocking block;
  int64_t thread_bytes, shared_bytes;
  at::Tensor scratch;

  char* shared() const {
    return static_cast<char*>(scratch.data_ptr()) + scratch.nbytes() - shared_bytes;
  }
};

// The most locations of one output row a pass's tile holds.
constexpr int64_t kMaxTile = 16;

// The largest sample block (at most the batch) whose scratch fits the budget, with tiles of up to
// kMaxTile locations, or of `least_tile` (at most the row) where even one sample does not fit
// them, and that scratch. Per thread the pass takes per_thread(samples, tile) bytes, and
// shared(samples) bytes once (none where shared is empty); both must grow with their arguments.
// At least one sample and one tile: where even that exceeds the budget, the pass runs at that
// size (the README states the bound). least_tile divides kMaxTile.
PassScratch plan_pass(const Geometry& g,
                      const std::function<int64_t(int64_t samples, int64_t tile)>& per_thread,
                      const std::function<int64_t(int64_t samples)>& shared = {},
                      int64_t least_tile = 1);

// Tiles of an output row: ceil(out_w / tile).
inline int64_t tiles_per_row(const Geometry& g, int64_t tile) { return ceil_div(g.out_w, tile); }

// The blocks of output rows that threads take where the rows' patch gradients overlap: along the
// output's depth where it has one (whole planes), else along its height, each block just short
// enough that blocks b and b + 2 read disjoint input planes (rows): the kernel's span fits in
// (length + 1) strides. Taken in two phases, even blocks and then odd ones, no two threads
// write the same element, without atomics; and every element sums its terms in the phases'
// order whatever the thread count.
class RowBlocks {
 public:
  explicit RowBlocks(const Geometry& g)
      : by_planes_(g.out_d > 1), out_h_(g.out_h), axis_out_(by_planes_ ? g.out_d : g.out_h) {
    const int64_t stride = by_planes_ ? g.stride_d : g.stride_h;
    const int64_t span = by_planes_ ? g.dilation_d * (g.kernel_d - 1) + 1
                                    : g.dilation_h * (g.kernel_h - 1) + 1;
    length_ = std::max<int64_t>(1, ceil_div(span, stride) - 1);
    count_ = ceil_div(axis_out_, length_);
  }
  int64_t count() const { return count_; }
  // The blocks of phase 0 or 1: index, index + 2, ... from index = phase.
  int64_t in_phase(int64_t phase) const { return (count_ - phase + 1) / 2; }
  // Block `index`'s output rows (z, i), flattened over depth and height: [begin, end).
  int64_t begin(int64_t index) const { return rows(index * length_); }
  int64_t end(int64_t index) const { return rows(std::min((index + 1) * length_, axis_out_)); }

 private:
  int64_t rows(int64_t along_axis) const { return by_planes_ ? along_axis * out_h_ : along_axis; }
  bool by_planes_;
  int64_t out_h_, axis_out_, length_, count_;
};

// Bytes of `count` elements of `element_size`, rounded up to whole 64-byte cache lines, so
// that every array carved from a scratch slice starts on its own line.
inline int64_t line_bytes(int64_t count, int64_t element_size) {
  return (count * element_size + 63) / 64 * 64;
}

// One byte tensor holds the scratch of all threads of a pass (PassScratch); a thread carves its
// arrays from its own slice (by at::get_thread_num()), so that nothing is allocated inside the
// parallel loop.
class ScratchSlice {
 public:
  // The scratch was sized for at::get_num_threads() threads; a thread beyond them (an OpenMP
  // team larger than torch's setting, as with a second OpenMP runtime in the process) is an
  // error, never a write past the end.
  explicit ScratchSlice(const PassScratch& pass)
      : next_(static_cast<char*>(pass.scratch.data_ptr()) +
              at::get_thread_num() * pass.thread_bytes) {
    const int64_t slices_bytes = pass.scratch.nbytes() - pass.shared_bytes;
    TORCH_CHECK((at::get_thread_num() + 1) * pass.thread_bytes <= slices_bytes,
                "lc_cuda CPU kernels: thread ", at::get_thread_num(), " has no scratch slice (",
                slices_bytes, " bytes for ", pass.thread_bytes,
                " per thread); torch and the extension disagree on the OpenMP thread count");
  }
  template <typename T>
  T* take(int64_t count) {
    T* array = reinterpret_cast<T*>(next_);
    next_ += line_bytes(count, sizeof(T));
    return array;
  }

 private:
  char* next_;
};

}  // namespace cpu
}  // namespace lc_cuda
